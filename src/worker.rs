//! Spawning one worker process: argv, environment (the child API of BRIEF §2),
//! working directory, inherited sockets, process group, parent-death signal.
//!
//! The master is multi-threaded once the file watcher runs, so between fork and
//! exec only async-signal-safe calls are made: `Command` prepares argv, env and cwd
//! before forking, and the `pre_exec` hook only calls `fcntl`, `prctl`, `getppid` and
//! `kill`. Every fd of the master is close-on-exec; a worker's sockets are made
//! inheritable in the child alone (clearing FD_CLOEXEC keeps their numbers, which
//! is what EINHORN_FD_n promises), so no listener, epoll, signal pipe or control
//! connection leaks into a worker, nor into anything else the master runs.

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
    /// `ack = "notify"`: the master's worker NOTIFY_SOCKET (`crate::notify_ack`).
    pub notify_socket: Option<&'a str>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("pool {pool}: empty command")]
    EmptyCommand { pool: String },
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

/// Build the command for one worker (no side effects; exposed for tests).
pub fn command(spec: &PoolConfig, ctx: &SpawnContext<'_>) -> Result<Command, SpawnError> {
    let Some((program, args)) = spec.command.split_first() else {
        return Err(SpawnError::EmptyCommand {
            pool: spec.name.clone(),
        });
    };
    // systemd socket protocol: sockets move to 3.. (planned here, before the fork)
    // and the worker starts through the LISTEN_PID trampoline (src/activation.rs).
    let systemd = spec.socket_protocol.systemd;
    let (plan, socket_fds, control_fd) = if systemd {
        let (plan, s, c) = crate::activation::FdPlan::new(ctx.sockets, ctx.control_fd);
        (Some(plan), s, c)
    } else {
        (None, ctx.sockets.to_vec(), ctx.control_fd)
    };
    let mut cmd = if systemd {
        let mut c = Command::new("/proc/self/exe");
        c.arg(crate::activation::TRAMPOLINE_ARG).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if CHILD_API_VARS.contains(&k.as_ref()) || k.starts_with("EINHORN_FD_") {
            cmd.env_remove(&key);
        }
    }
    // The service manager talks to the master, not to workers (src/sdnotify.rs).
    for var in crate::sdnotify::SYSTEMD_VARS {
        cmd.env_remove(var);
    }
    for var in &spec.drop_env {
        cmd.env_remove(var);
    }
    let fds: Vec<String> = socket_fds.iter().map(|fd| fd.to_string()).collect();
    if spec.socket_protocol.einhorn {
        cmd.env("EINHORN_FD_COUNT", fds.len().to_string());
        for (i, fd) in fds.iter().enumerate() {
            cmd.env(format!("EINHORN_FD_{i}"), fd);
        }
        cmd.env("EINHORN_FDS", fds.join(" "));
    }
    if systemd {
        cmd.env("LISTEN_FDS", fds.len().to_string());
        cmd.env(
            "LISTEN_FDNAMES",
            crate::activation::fd_names(&spec.name, &spec.binds),
        );
    }
    if let Some(path) = ctx
        .notify_socket
        .filter(|_| spec.ack == crate::config::AckMode::Notify)
    {
        cmd.env("NOTIFY_SOCKET", path);
        if let Some(w) = spec.watchdog {
            cmd.env("WATCHDOG_USEC", w.as_micros().to_string());
        }
    }
    cmd.env("EINHORN_SOCK_PATH", ctx.control_path);
    if let Some(fd) = control_fd {
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

    let mut inherit: Vec<RawFd> = ctx.sockets.to_vec();
    inherit.extend(ctx.control_fd);
    let pdeathsig = spec
        .kill_children_on_exit
        .then_some(spec.stop_signal as libc::c_int);
    let master_pid = ctx.master_pid;
    // Fallback bound for kernels without close_range(2): computed before fork.
    let max_fd = max_fd();
    // SAFETY: the closure only makes async-signal-safe libc calls on values
    // captured by copy; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            // fds the master itself inherited without close-on-exec (from a shell,
            // a supervisor, a test runner) must not reach workers either: mark
            // everything above stderr close-on-exec, then open up our sockets.
            if libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                for fd in 3..max_fd {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            if let Some(plan) = &plan {
                plan.apply()?;
            }
            for &fd in inherit.iter().filter(|_| plan.is_none()) {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(sig) = pdeathsig {
                if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                // The master may have died between fork and prctl.
                if libc::getppid() != master_pid {
                    libc::kill(libc::getpid(), sig);
                }
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// One past the highest fd number that may be open (for the close-on-exec sweep
/// when close_range(2) is missing), capped so a huge limit cannot stall a spawn.
fn max_fd() -> libc::c_int {
    // SAFETY: sysconf only reads a system limit.
    let n = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
    if n <= 0 {
        1024
    } else {
        n.min(65_536) as libc::c_int
    }
}

/// Fork and exec one worker. Exec failures (missing binary, permission) are
/// reported here, synchronously: std waits for the exec through a CLOEXEC pipe.
pub fn spawn(spec: &PoolConfig, ctx: &SpawnContext<'_>) -> Result<Pid, SpawnError> {
    let mut cmd = command(spec, ctx)?;
    let child = cmd.spawn().map_err(|source| SpawnError::Exec {
        pool: spec.name.clone(),
        program: spec.command.first().cloned().unwrap_or_default(),
        source,
    })?;
    // The master reaps with waitpid(-1); dropping the handle neither waits nor kills.
    Ok(child.id() as Pid)
}
