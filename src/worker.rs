//! Spawning one worker process: argv, environment (the child API of BRIEF §2),
//! working directory, inherited sockets, process group, parent-death signal.
//!
//! The master is multi-threaded once the file watcher runs, so between fork and
//! exec only async-signal-safe calls are made: `Command` prepares argv, env and cwd
//! before forking, and the `pre_exec` hook only calls `fcntl`, `prctl`, `getppid` and
//! `kill`. Every fd of the master is close-on-exec; a worker's sockets are made
//! inheritable for its spawn alone (clearing FD_CLOEXEC keeps their numbers, which
//! is what EINHORN_FD_n promises), so no listener, epoll, signal pipe or control
//! connection leaks into a worker, nor into anything else the master runs.
//!
//! Why two paths: a `pre_exec` hook makes std fork, which copies the master's page
//! tables and then takes copy-on-write faults in the master; without a hook std
//! uses `posix_spawn` (a vfork-style clone that shares memory until exec), about
//! half the master's CPU per spawn (docs/performance.md). So the hook is only
//! used for `PR_SET_PDEATHSIG` (`-k`), which has no posix_spawn equivalent; on the
//! common path the sockets' FD_CLOEXEC is cleared in the master around the spawn
//! and set again right after. Only the master's loop thread spawns, so no other
//! child can inherit them in between.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::config::PoolConfig;
use crate::pool::Pid;

/// Everything a spawn needs besides the pool spec.
pub struct SpawnContext<'a> {
    /// Listening sockets in bind order (EINHORN_FD_0 ...).
    pub sockets: &'a [RawFd],
    pub control_path: &'a Path,
    pub master_pid: Pid,
    /// Slot index (EINHORN_CHILD_INDEX).
    pub index: u32,
    /// `-g`: the child end of a socketpair connected to the control server.
    pub control_fd: Option<RawFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("pool {pool}: empty command")]
    EmptyCommand { pool: String },
    #[error("pool {pool}: could not make fd {fd} inheritable: {source}")]
    Inherit {
        pool: String,
        fd: RawFd,
        source: io::Error,
    },
    #[error("pool {pool}: could not start {program:?}: {source}")]
    Exec {
        pool: String,
        program: String,
        source: io::Error,
    },
}

/// Variables the master sets; stale ones inherited from our own environment
/// (a master started by another master, say) are removed first.
const CHILD_API_VARS: &[&str] = &[
    "EINHORN_FD_COUNT",
    "EINHORN_FDS",
    "EINHORN_SOCK_PATH",
    "EINHORN_SOCK_FD",
    "EINHORN_MASTER_PID",
    "EINHORN_CHILD_INDEX",
];

/// Build the command for one worker (no side effects; exposed for tests). Run it
/// with [`spawn`]: without `-k` the sockets are made inheritable there, not here.
pub fn command(spec: &PoolConfig, ctx: &SpawnContext<'_>) -> Result<Command, SpawnError> {
    let Some((program, args)) = spec.command.split_first() else {
        return Err(SpawnError::EmptyCommand {
            pool: spec.name.clone(),
        });
    };
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if CHILD_API_VARS.contains(&k.as_ref()) || k.starts_with("EINHORN_FD_") {
            cmd.env_remove(&key);
        }
    }
    for var in &spec.drop_env {
        cmd.env_remove(var);
    }
    let fds: Vec<String> = ctx.sockets.iter().map(|fd| fd.to_string()).collect();
    cmd.env("EINHORN_FD_COUNT", fds.len().to_string());
    for (i, fd) in fds.iter().enumerate() {
        cmd.env(format!("EINHORN_FD_{i}"), fd);
    }
    cmd.env("EINHORN_FDS", fds.join(" "));
    cmd.env("EINHORN_SOCK_PATH", ctx.control_path);
    if let Some(fd) = ctx.control_fd {
        cmd.env("EINHORN_SOCK_FD", fd.to_string());
    }
    cmd.env("EINHORN_MASTER_PID", ctx.master_pid.to_string());
    cmd.env("EINHORN_CHILD_INDEX", ctx.index.to_string());
    cmd.envs(&spec.env);
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    // Own process group: a terminal's Ctrl-C reaches only the master, which then
    // drains workers instead of having them killed mid-request.
    cmd.process_group(0);
    cmd.stdin(Stdio::null());

    let inherit = inherited(ctx);
    let Some(sig) = spec
        .kill_children_on_exit
        .then_some(spec.stop_signal as libc::c_int)
    else {
        // No hook: std uses posix_spawn; `spawn` makes the sockets inheritable.
        return Ok(cmd);
    };
    let master_pid = ctx.master_pid;
    // SAFETY: the closure only makes async-signal-safe libc calls on values
    // captured by copy; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The master may have died between fork and prctl.
            if libc::getppid() != master_pid {
                libc::kill(libc::getpid(), sig);
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Fork and exec one worker. Exec failures (missing binary, permission) are
/// reported here, synchronously: std waits for the exec through a CLOEXEC pipe.
pub fn spawn(spec: &PoolConfig, ctx: &SpawnContext<'_>) -> Result<Pid, SpawnError> {
    let mut cmd = command(spec, ctx)?;
    // Without a pre_exec hook the child cannot clear FD_CLOEXEC itself.
    let _inheritable = if spec.kill_children_on_exit {
        None
    } else {
        let fds = inherited(ctx);
        Some(
            Inheritable::new(&fds).map_err(|(fd, source)| SpawnError::Inherit {
                pool: spec.name.clone(),
                fd,
                source,
            })?,
        )
    };
    let child = cmd.spawn().map_err(|source| SpawnError::Exec {
        pool: spec.name.clone(),
        program: spec.command.first().cloned().unwrap_or_default(),
        source,
    })?;
    // The master reaps with waitpid(-1); dropping the handle neither waits nor kills.
    Ok(child.id() as Pid)
}

/// The fds a worker inherits: its pool's sockets, then the `-g` control fd.
fn inherited(ctx: &SpawnContext<'_>) -> Vec<RawFd> {
    let mut fds = ctx.sockets.to_vec();
    fds.extend(ctx.control_fd);
    fds
}

/// FD_CLOEXEC cleared on some fds of the master for the life of the guard, set
/// again on drop (also when the spawn fails), so nothing but this one worker
/// inherits them.
struct Inheritable(Vec<RawFd>);

impl Inheritable {
    fn new(fds: &[RawFd]) -> Result<Inheritable, (RawFd, io::Error)> {
        let mut guard = Inheritable(Vec::with_capacity(fds.len()));
        for &fd in fds {
            // SAFETY: fcntl on an fd the master owns; F_SETFD takes an int flag.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
                return Err((fd, io::Error::last_os_error()));
            }
            guard.0.push(fd);
        }
        Ok(guard)
    }
}

impl Drop for Inheritable {
    fn drop(&mut self) {
        for &fd in &self.0 {
            // SAFETY: as above; the fd is still open (the caller holds it).
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;

    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::Pid as NixPid;

    use super::*;

    fn cloexec(fd: RawFd) -> bool {
        // SAFETY: F_GETFD on an fd this test owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        flags != -1 && flags & libc::FD_CLOEXEC != 0
    }

    /// Which of `probe` the child has open, as it sees them, for one spawn path.
    fn child_fds(
        kill_children_on_exit: bool,
        sockets: &[RawFd],
        probe: &[RawFd],
    ) -> Result<String, String> {
        let out = std::env::temp_dir().join(format!(
            "einh-worker-fds-{}-{kill_children_on_exit}",
            std::process::id()
        ));
        let list: Vec<String> = probe.iter().map(|fd| fd.to_string()).collect();
        let script = format!(
            "for fd in {}; do if [ -e /proc/$$/fd/$fd ]; then echo $fd; fi; done > {}",
            list.join(" "),
            out.display()
        );
        let mut spec = PoolConfig::new("t", vec!["sh".into(), "-c".into(), script]);
        spec.kill_children_on_exit = kill_children_on_exit;
        let ctx = SpawnContext {
            sockets,
            control_path: Path::new("/nonexistent.sock"),
            master_pid: std::process::id() as Pid,
            index: 0,
            control_fd: None,
        };
        let pid = spawn(&spec, &ctx).map_err(|e| e.to_string())?;
        match waitpid(NixPid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, 0)) => {}
            other => return Err(format!("child ended with {other:?}")),
        }
        let listing = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&out);
        Ok(listing)
    }

    #[test]
    fn worker_inherits_its_sockets_and_nothing_else_on_both_paths() -> Result<(), String> {
        let ours = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let other = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let (fd, other_fd) = (ours.as_raw_fd(), other.as_raw_fd());
        for hook in [false, true] {
            let listing = child_fds(hook, &[fd], &[fd, other_fd])?;
            let fds: Vec<&str> = listing.lines().collect();
            assert!(
                fds.contains(&fd.to_string().as_str()),
                "hook {hook}: {fds:?}"
            );
            assert!(
                !fds.contains(&other_fd.to_string().as_str()),
                "hook {hook}: {fds:?}"
            );
            // The master's copy is close-on-exec again after the spawn.
            assert!(cloexec(fd) && cloexec(other_fd), "hook {hook}");
        }
        Ok(())
    }
}
