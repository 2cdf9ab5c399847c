//! What the master takes at start besides its sockets: the lockfile (`-f`), the
//! pidfile (`-e`), its process name (`-c`) and the subreaper flag.
//!
//! A master often runs as root, in directories other users can write (`/tmp`,
//! `/run/app`), so neither file is ever opened through a symbolic link: a link
//! planted at the path would make root truncate or write the file it points to.
//! Both are opened with O_NOFOLLOW and refused, with a message, when the path is
//! a link; the pidfile is written to a temp file created exclusively (O_EXCL,
//! O_NOFOLLOW) and renamed into place, and rename(2) replaces the name itself.
//!
//! The lock is the authority on "another master is running": with a lockfile, a
//! pidfile left by a dead master (naming a pid that may be alive again, e.g. 1)
//! never blocks the start. Without one, a pidfile blocks only when its pid is
//! alive and is an einhyrningsins master.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::MasterError;

/// The lockfile and pidfile the master holds; the pidfile is removed on drop
/// if it still names this process.
#[derive(Debug, Default)]
pub(super) struct Files {
    /// Keeps the flock (it belongs to the open file description).
    lock: Option<File>,
    pidfile: Option<PathBuf>,
}

impl Files {
    /// Take the lockfile, if one is configured.
    pub(super) fn lock(path: Option<&Path>) -> Result<Files, MasterError> {
        Ok(Files {
            lock: path.map(take_lock).transpose()?,
            pidfile: None,
        })
    }

    /// The lockfile's fd (kept across a re-exec: the lock belongs to its open
    /// file description) and the pidfile's path.
    pub(super) fn parts(&self) -> (Option<i32>, Option<PathBuf>) {
        use std::os::fd::AsRawFd;
        (
            self.lock.as_ref().map(|f| f.as_raw_fd()),
            self.pidfile.clone(),
        )
    }

    /// What a previous image of this master held (the pidfile already names
    /// this pid: it is not rewritten).
    ///
    /// # Safety
    /// `lock_fd` must be the open lockfile this process owns, taken once.
    pub(super) unsafe fn from_parts(lock_fd: Option<i32>, pidfile: Option<PathBuf>) -> Files {
        use std::os::fd::FromRawFd;
        Files {
            // SAFETY: the caller hands over the fd.
            lock: lock_fd.map(|fd| unsafe { File::from_raw_fd(fd) }),
            pidfile,
        }
    }

    /// Then write the pidfile, if one is configured.
    pub(super) fn with_pidfile(mut self, path: Option<&Path>) -> Result<Files, MasterError> {
        if let Some(p) = path {
            write_pidfile(p, self.lock.is_some())?;
            self.pidfile = Some(p.to_path_buf());
        }
        Ok(self)
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        if let Some(p) = &self.pidfile {
            let ours = read_nofollow(p).is_ok_and(|s| s.trim() == std::process::id().to_string());
            if ours {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn file_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> MasterError + 'a {
    move |source| {
        if source.raw_os_error() == Some(libc::ELOOP) {
            MasterError::Symlink {
                op,
                path: path.to_path_buf(),
            }
        } else {
            MasterError::File {
                op,
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

fn refuse_symlink(op: &'static str, path: &Path) -> Result<(), MasterError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(MasterError::Symlink {
            op,
            path: path.to_path_buf(),
        }),
        _ => Ok(()),
    }
}

fn read_nofollow(path: &Path) -> io::Result<String> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut s = String::new();
    Read::by_ref(&mut f).take(64).read_to_string(&mut s)?;
    Ok(s)
}

fn take_lock(path: &Path) -> Result<File, MasterError> {
    const OP: &str = "open lockfile";
    refuse_symlink(OP, path)?;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        // O_NONBLOCK: a FIFO planted at the path must not hang the start.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(file_err(OP, path))?;
    let is_file = f.metadata().map_err(file_err(OP, path))?.is_file();
    if !is_file {
        return Err(MasterError::File {
            op: OP,
            path: path.to_path_buf(),
            source: io::Error::other("not a regular file"),
        });
    }
    let err = |op| file_err(op, path);
    match nix::fcntl::Flock::lock(
        f.try_clone().map_err(err(OP))?,
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    ) {
        Ok(locked) => {
            // Keep the lock for the master's life: the guard's fd is a dup of the
            // File we keep, and the lock belongs to their shared description.
            std::mem::forget(locked);
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut s = String::new();
            let _ = Read::by_ref(&mut f).take(64).read_to_string(&mut s);
            let holder = s.trim();
            return Err(MasterError::Locked {
                path: path.to_path_buf(),
                holder: if holder.is_empty() {
                    "unknown".into()
                } else {
                    holder.to_string()
                },
            });
        }
        Err((_, e)) => return Err(err("lock")(io::Error::from(e))),
    }
    f.set_len(0).map_err(err("write lockfile"))?;
    f.rewind().map_err(err("write lockfile"))?;
    writeln!(f, "{}", std::process::id()).map_err(err("write lockfile"))?;
    Ok(f)
}

/// Is `pid` an einhyrningsins master (its executable or argv\[0\] says so)?
/// When that cannot be read, assume it is: refusing to start is the safe side.
fn is_a_master(pid: i32) -> bool {
    let name_says = |s: &str| s.contains("einhyrningsins");
    if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
        if name_says(&exe.to_string_lossy()) {
            return true;
        }
        // A readable exe that is something else: check argv[0] too (a master
        // run through a renamed copy or a wrapper).
        return std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .and_then(|c| {
                c.split(|b| *b == 0)
                    .next()
                    .map(|a| name_says(&String::from_utf8_lossy(a)))
            })
            .unwrap_or(false);
    }
    true
}

fn write_pidfile(path: &Path, locked: bool) -> Result<(), MasterError> {
    const OP: &str = "write pidfile";
    refuse_symlink(OP, path)?;
    let me = std::process::id() as i32;
    if let Ok(s) = read_nofollow(path) {
        if let Ok(pid) = s.trim().parse::<i32>() {
            let alive = pid > 0
                && pid != me
                && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
            if alive && !locked && is_a_master(pid) {
                return Err(MasterError::PidfileTaken {
                    path: path.to_path_buf(),
                    pid,
                });
            }
            if alive && pid != me {
                log::info!(
                    "replacing pidfile {}: pid {pid} is {}",
                    path.display(),
                    if locked {
                        "not the lock holder (we hold the lockfile)"
                    } else {
                        "not an einhyrningsins master"
                    }
                );
            } else if pid != me {
                log::info!(
                    "replacing stale pidfile {} (pid {pid} is gone)",
                    path.display()
                );
            }
        }
    }
    let tmp = path.with_extension(format!("tmp.{me}"));
    let write = || -> io::Result<()> {
        // A leftover of a master that died with our pid: unlink the name (never
        // what a link there points to), then create it exclusively.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        writeln!(f, "{me}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        file_err(OP, path)(source)
    })
}

pub(super) fn set_process_name(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated buffer of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
}

/// Raise the soft limit on open files to the hard limit (at most 1 Mi): a
/// master holding many sockets and clients should not hit an arbitrary 1,024.
/// Workers inherit the raised limit (a pool can set its own).
pub(super) fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit fill and read one struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let want = lim.rlim_max.min(1 << 20);
        if lim.rlim_cur < want {
            let old = lim.rlim_cur;
            lim.rlim_cur = want;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                log::debug!("open files limit raised from {old} to {want}");
            }
        }
    }
}

/// `--subreaper`: orphaned descendants of workers are re-parented to us.
pub(super) fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == -1 {
        log::warn!(
            "--subreaper: PR_SET_CHILD_SUBREAPER failed: {}",
            io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn a_symlinked_lockfile_or_pidfile_is_refused_and_its_target_untouched() {
        let d = TempDir::new("links");
        let target = d.join("precious");
        std::fs::write(&target, "keep me\n").expect("write target");
        let link = d.join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(matches!(
            Files::lock(Some(&link)),
            Err(MasterError::Symlink { .. })
        ));
        assert!(matches!(
            Files::default().with_pidfile(Some(&link)),
            Err(MasterError::Symlink { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(&target).expect("read target"),
            "keep me\n"
        );
    }

    #[test]
    fn a_planted_temp_file_link_is_replaced_not_followed() {
        let d = TempDir::new("tmplink");
        let target = d.join("precious");
        std::fs::write(&target, "keep me\n").expect("write target");
        let pidfile = d.join("app.pid");
        let tmp = pidfile.with_extension(format!("tmp.{}", std::process::id()));
        std::os::unix::fs::symlink(&target, &tmp).expect("symlink");
        let files = Files::default()
            .with_pidfile(Some(&pidfile))
            .expect("pidfile");
        assert_eq!(
            std::fs::read_to_string(&pidfile).expect("read").trim(),
            std::process::id().to_string()
        );
        assert_eq!(
            std::fs::read_to_string(&target).expect("read target"),
            "keep me\n"
        );
        drop(files);
        assert!(!pidfile.exists());
    }

    #[test]
    fn a_pidfile_naming_a_live_process_that_is_no_master_does_not_block() {
        let d = TempDir::new("pid1");
        let pidfile = d.join("app.pid");
        // The test binary's parent (cargo or a shell) is alive and is no master.
        let other = nix::unistd::getppid().as_raw();
        std::fs::write(&pidfile, format!("{other}\n")).expect("write");
        assert!(Files::default().with_pidfile(Some(&pidfile)).is_ok());
        // With the lock held, even a pid that looks like a master does not block.
        std::fs::write(&pidfile, format!("{other}\n")).expect("write");
        assert!(write_pidfile(&pidfile, true).is_ok());
    }
}
