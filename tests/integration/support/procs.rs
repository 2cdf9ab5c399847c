//! Every process the harness starts, and how none of them outlives the test.
//!
//! Each harness instance (a [`Master`](super::Master) or a [`Proc`]) owns a
//! [`Tag`]: a value of [`TAG_VAR`] unique to it, put in the environment of the
//! process it starts. The master passes its environment on to its workers
//! (BRIEF §2), and so does every shell, `unshare` or service tool in between,
//! so the whole tree carries the tag, however it forks or is reparented. When
//! the tag is dropped (also while a failing test unwinds), every live process
//! whose `/proc/PID/environ` holds it gets SIGKILL, again and again until none
//! is left: a process may fork while we kill.

use std::ffi::OsStr;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::Duration;

use super::wait::{poll_until, wait_for};

/// The environment variable that marks a process as started by this harness.
/// `.ci/leftovers` looks for it after `cargo test`.
pub const TAG_VAR: &str = "EINHYRNINGSINS_TEST_TAG";

/// How long the reaper keeps killing before it reports survivors.
const REAP_DEADLINE: Duration = Duration::from_secs(10);

/// A harness instance's tag: `<test process pid>-<counter>`.
pub struct Tag(String);

impl Tag {
    pub fn new() -> Tag {
        static N: AtomicU32 = AtomicU32::new(0);
        static JANITOR: Once = Once::new();
        JANITOR.call_once(reap_orphans);
        Tag(format!(
            "{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ))
    }

    /// Put the tag into `cmd`'s environment (after every other env change).
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env(TAG_VAR, &self.0);
    }

    /// Live (not zombie) processes carrying this tag.
    pub fn processes(&self) -> Vec<i32> {
        tagged()
            .into_iter()
            .filter(|(_, t)| *t == self.0)
            .map(|(pid, _)| pid)
            .collect()
    }

    /// SIGKILL every process carrying the tag until none is left or `timeout`
    /// passes; the survivors.
    pub fn kill_all(&self, timeout: Duration) -> Vec<i32> {
        poll_until(timeout, || {
            let live = self.processes();
            for &pid in &live {
                kill_if_tagged(pid, &self.0);
            }
            live.is_empty().then_some(())
        });
        self.processes()
    }
}

impl Drop for Tag {
    fn drop(&mut self) {
        let left = self.kill_all(REAP_DEADLINE);
        if !left.is_empty() {
            // Not a panic: this may run while a failing test unwinds.
            eprintln!(
                "harness: processes {left:?} tagged {TAG_VAR}={} survived SIGKILL",
                self.0
            );
        }
    }
}

/// Kill tagged processes whose test process is gone (a run that was itself
/// SIGKILLed never ran its drop guards). Runs once per test binary. Tags of a
/// test process that is still alive (another `cargo test` running at the same
/// time) are left alone.
fn reap_orphans() {
    let orphans = || -> Vec<(i32, String)> {
        tagged()
            .into_iter()
            .filter(|(_, tag)| {
                tag.split('-')
                    .next()
                    .and_then(|p| p.parse::<i32>().ok())
                    .is_none_or(|owner| !alive(owner))
            })
            .collect()
    };
    poll_until(REAP_DEADLINE, || {
        let left = orphans();
        for (pid, tag) in &left {
            kill_if_tagged(*pid, tag);
        }
        left.is_empty().then_some(())
    });
}

/// The value of `TAG_VAR` in a process's environment.
fn tag_of(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    raw.split(|b| *b == 0).find_map(|kv| {
        let v = kv.strip_prefix(TAG_VAR.as_bytes())?.strip_prefix(b"=")?;
        Some(String::from_utf8_lossy(v).into_owned())
    })
}

/// Every live (not zombie) process with a tag, and the tag.
fn tagged() -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && alive(pid))
        .filter_map(|pid| Some((pid, tag_of(pid)?)))
        .collect()
}

/// SIGKILL `pid` if it (still) carries `tag`. Through a pidfd where the kernel
/// has them: the tag is re-read after the pidfd pins the process, so a pid
/// reused in between is never signalled.
fn kill_if_tagged(pid: i32, tag: &str) {
    // SAFETY: plain syscalls on integers; the fd is ours and closed below.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        if fd < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS)
                && tag_of(pid).as_deref() == Some(tag)
            {
                libc::kill(pid, libc::SIGKILL);
            }
            return;
        }
        if tag_of(pid).as_deref() == Some(tag) {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
        libc::close(fd);
    }
}

/// Is a process alive (and not a zombie)?
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .map(str::trim_start)
            .is_some_and(|rest| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => false,
    }
}

/// Wait until every one of `pids` is gone (exited, or a zombie of someone else).
pub fn wait_all_dead(pids: &[i32], timeout: Duration) {
    wait_for(format!("processes {pids:?} to exit"), timeout, || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
}

/// A process's environment, from /proc (exactly what exec gave it).
pub fn environ(pid: i32) -> std::collections::BTreeMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("read environ");
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Any program the tests run other than the master (the ctl, python3, ruby,
/// sh, systemd's tools, the example workers on their own): a `Command` with a
/// fresh [`Tag`], stdin from /dev/null unless set. Whatever it leaves behind
/// is killed when it is done ([`Proc::output`]) or when the [`Running`] guard
/// from [`Proc::spawn`] is dropped.
pub struct Proc {
    cmd: Command,
    tag: Tag,
}

impl Proc {
    pub fn new(program: impl AsRef<OsStr>) -> Proc {
        let mut cmd = Command::new(program);
        cmd.stdin(Stdio::null());
        Proc {
            cmd,
            tag: Tag::new(),
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Proc {
        self.cmd.arg(a);
        self
    }

    pub fn args<S: AsRef<OsStr>>(mut self, a: impl IntoIterator<Item = S>) -> Proc {
        self.cmd.args(a);
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Proc {
        self.cmd.env(k, v);
        self
    }

    pub fn env_remove(mut self, k: impl AsRef<OsStr>) -> Proc {
        self.cmd.env_remove(k);
        self
    }

    pub fn stdin(mut self, s: impl Into<Stdio>) -> Proc {
        self.cmd.stdin(s);
        self
    }

    pub fn stdout(mut self, s: impl Into<Stdio>) -> Proc {
        self.cmd.stdout(s);
        self
    }

    pub fn stderr(mut self, s: impl Into<Stdio>) -> Proc {
        self.cmd.stderr(s);
        self
    }

    pub fn uid(mut self, id: u32) -> Proc {
        self.cmd.uid(id);
        self
    }

    pub fn gid(mut self, id: u32) -> Proc {
        self.cmd.gid(id);
        self
    }

    /// [`CommandExt::pre_exec`].
    ///
    /// # Safety
    /// As there: `f` runs between fork and exec, where only async-signal-safe
    /// calls are allowed (no allocation, no locks).
    pub unsafe fn pre_exec(
        mut self,
        f: impl FnMut() -> io::Result<()> + Send + Sync + 'static,
    ) -> Proc {
        // SAFETY: the caller's promise, passed on.
        unsafe {
            self.cmd.pre_exec(f);
        }
        self
    }

    /// Run to completion, collecting stdout and stderr; then kill anything it
    /// left running.
    pub fn output(mut self) -> io::Result<Output> {
        self.tag.apply(&mut self.cmd);
        self.cmd.output()
    }

    /// Start it; the guard kills it (and all it started) when dropped.
    pub fn spawn(self) -> io::Result<Running> {
        let Proc { mut cmd, tag } = self;
        tag.apply(&mut cmd);
        let child = cmd.spawn()?;
        // The Command holds copies of the child's stdio fds (pipes, a pty):
        // they must close now, so the parent sees EOF when the child exits.
        drop(cmd);
        Ok(Running { child, _tag: tag })
    }

    /// Run a program expected to exit by itself (e.g. the master on a bad
    /// configuration); panics (after killing it) if it still runs after
    /// `timeout`. The exit status, stdout and stderr.
    pub fn run_to_exit(self, timeout: Duration) -> (ExitStatus, String, String) {
        let what = format!("{:?}", self.cmd);
        let dir = super::TempDir::new("run");
        let (out, err) = (dir.join("stdout"), dir.join("stderr"));
        let mut running = self
            .stdout(std::fs::File::create(&out).expect("create stdout file"))
            .stderr(std::fs::File::create(&err).expect("create stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let status = poll_until(timeout, || running.child.try_wait().expect("try_wait"))
            .unwrap_or_else(|| {
                panic!(
                    "{what} still running after {timeout:?}; stderr:\n{}",
                    std::fs::read_to_string(&err).unwrap_or_default()
                )
            });
        (
            status,
            std::fs::read_to_string(&out).unwrap_or_default(),
            std::fs::read_to_string(&err).unwrap_or_default(),
        )
    }
}

/// [`Proc::run_to_exit`] of `program` with `args`.
pub fn run_to_exit(
    program: impl AsRef<Path>,
    args: &[&str],
    timeout: Duration,
) -> (ExitStatus, String, String) {
    Proc::new(program.as_ref()).args(args).run_to_exit(timeout)
}

/// A process started by [`Proc::spawn`]. Dropping it SIGKILLs and reaps the
/// child, then kills everything else carrying its tag.
pub struct Running {
    pub child: Child,
    _tag: Tag,
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Live processes carrying this process's tag: it and all it started.
    pub fn processes(&self) -> Vec<i32> {
        self._tag.processes()
    }

    /// Wait for it to exit (polling, with a deadline); its status.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll_until(timeout, || self.child.try_wait().ok().flatten())
    }

    /// Everything it wrote to its piped stdout (read to the end).
    pub fn stdout_text(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut out, &mut s);
        }
        s
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Then `_tag` drops: the rest of the tree.
    }
}

/// Whether `program` runs here (`program --version` succeeds): tests that need
/// a third-party tool skip, saying so, when it does not.
pub fn have(program: &str) -> bool {
    Proc::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
