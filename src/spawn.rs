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
//! used for what posix_spawn cannot do: `PR_SET_PDEATHSIG` (`-k`) and the systemd
//! fd moves. On the common path the master marks its fds close-on-exec itself
//! (the sweep the hook does in the child) and clears FD_CLOEXEC on the worker's
//! sockets around the spawn, setting it again right after. Only the master's loop
//! thread spawns, so no other child can inherit them in between.

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
    /// `ack = "notify"`: the master's worker NOTIFY_SOCKET (`crate::systemd::worker_notify`).
    pub notify_socket: Option<&'a str>,
    /// The pool's identity and limits, resolved (src/identity.rs).
    pub identity: Option<&'a crate::identity::Resolved>,
    /// The worker's stdout and stderr (src/master/output.rs).
    pub stdout: ChildOut,
    pub stderr: ChildOut,
}

/// What a worker's stdout or stderr is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildOut {
    /// The master's own.
    Inherit,
    /// /dev/null.
    Null,
    /// The write end of a capture pipe (close-on-exec in the master): std
    /// dup2s a copy onto fd 1 or 2 in the child (a posix_spawn file action, or
    /// dup2 between fork and exec), which is async-signal-safe.
    Pipe(RawFd),
}

impl ChildOut {
    fn stdio(self, pool: &str) -> Result<Option<Stdio>, SpawnError> {
        match self {
            ChildOut::Inherit => Ok(None),
            ChildOut::Null => Ok(Some(Stdio::null())),
            ChildOut::Pipe(fd) => {
                // SAFETY: the caller keeps the pipe open for the spawn.
                let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                let owned = b
                    .try_clone_to_owned()
                    .map_err(|source| SpawnError::Inherit {
                        pool: pool.to_string(),
                        fd,
                        source,
                    })?;
                Ok(Some(Stdio::from(owned)))
            }
        }
    }
}

/// Why a worker could not be started. The messages do not name the pool: the
/// caller says which pool it was about.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("empty command")]
    EmptyCommand { pool: String },
    #[error("command: {message}")]
    Placeholder { pool: String, message: String },
    #[error("could not make fd {fd} inheritable: {source}")]
    Inherit {
        pool: String,
        fd: RawFd,
        source: io::Error,
    },
    #[error("could not start {program:?}: {source}")]
    Exec {
        pool: String,
        program: String,
        source: io::Error,
    },
}

impl SpawnError {
    /// The master's own failure (out of fds, processes or memory) rather than
    /// the worker's program or settings.
    pub fn is_master_side(&self) -> bool {
        let scarce = |e: &io::Error| {
            matches!(
                e.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN)
            )
        };
        match self {
            SpawnError::EmptyCommand { .. } | SpawnError::Placeholder { .. } => false,
            SpawnError::Inherit { .. } => true,
            SpawnError::Exec { source, .. } => scarce(source),
        }
    }
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
/// with [`spawn`]: without a hook ([`needs_hook`]) the sockets are made
/// inheritable there, not here.
pub fn command(spec: &PoolConfig, ctx: &SpawnContext<'_>) -> Result<Command, SpawnError> {
    let Some(program) = spec.command.first() else {
        return Err(SpawnError::EmptyCommand {
            pool: spec.name.clone(),
        });
    };
    // systemd socket protocol: sockets move to 3.. (planned here, before the fork)
    // and the worker starts through the LISTEN_PID trampoline (src/activation.rs).
    let systemd = spec.socket_protocol.systemd;
    let (plan, socket_fds, control_fd) = if systemd {
        let (plan, s, c) = crate::systemd::activation::FdPlan::new(ctx.sockets, ctx.control_fd);
        (Some(plan), s, c)
    } else {
        (None, ctx.sockets.to_vec(), ctx.control_fd)
    };
    let mut cmd = if systemd {
        let mut c = Command::new("/proc/self/exe");
        c.arg(crate::systemd::activation::TRAMPOLINE_ARG)
            .arg(program);
        c
    } else {
        Command::new(program)
    };
    // `{fd:N}` in the arguments: the fd numbers this worker gets, as planned.
    let args = crate::config::placeholders::resolve(&spec.command, &spec.binds, |i| {
        socket_fds.get(i).map(|fd| fd.to_string())
    })
    .map_err(|e| SpawnError::Placeholder {
        pool: spec.name.clone(),
        message: e.to_string(),
    })?;
    cmd.args(args);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if CHILD_API_VARS.contains(&k.as_ref()) || k.starts_with("EINHORN_FD_") {
            cmd.env_remove(&key);
        }
    }
    // The service manager talks to the master, not to workers (src/sdnotify.rs).
    for var in crate::systemd::service::SYSTEMD_VARS {
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
            crate::systemd::activation::fd_names(&spec.name, &spec.binds),
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
    // HOME, USER, LOGNAME of the pool's user (the pool's `env` may override).
    if let Some(id) = ctx.identity {
        cmd.envs(id.env.iter().map(|(k, v)| (k, v)));
    }
    cmd.envs(&spec.env);
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    // Own process group: a terminal's Ctrl-C reaches only the master, which then
    // drains workers instead of having them killed mid-request.
    cmd.process_group(0);
    cmd.stdin(Stdio::null());
    if let Some(out) = ctx.stdout.stdio(&spec.name)? {
        cmd.stdout(out);
    }
    if let Some(err) = ctx.stderr.stdio(&spec.name)? {
        cmd.stderr(err);
    }

    let inherit = inherited(ctx);
    let pdeathsig = spec
        .kill_children_on_exit
        .then_some(spec.stop_signal as libc::c_int);
    if !needs_hook(spec, ctx) {
        // No hook: std uses posix_spawn; `spawn` does the fd work in the master.
        return Ok(cmd);
    }
    let master_pid = ctx.master_pid;
    let identity = ctx.identity.filter(|i| !i.is_empty()).map(Prepared::new);
    // Fallback bound for kernels without close_range(2): computed before fork.
    let max_fd = max_fd();
    // SAFETY: the closure only makes async-signal-safe libc calls on values
    // captured by copy; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            // fds the master itself inherited without close-on-exec (from a shell,
            // a supervisor, a test runner) must not reach workers either: mark
            // everything above stderr close-on-exec, then open up our sockets.
            cloexec_above_stderr(max_fd);
            if let Some(plan) = &plan {
                plan.apply()?;
            }
            for &fd in inherit.iter().filter(|_| plan.is_none()) {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Limits, niceness and OOM score while still privileged, then the
            // identity itself (setuid last: after it, nothing more may be
            // raised). The parent-death signal is set after setuid, which
            // clears it.
            if let Some(id) = &identity {
                id.apply()?;
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

/// A `pre_exec` hook (and so a full fork) is needed only for what posix_spawn
/// cannot do: PR_SET_PDEATHSIG (`-k`), the systemd fd moves, and a pool's
/// identity and limits.
fn needs_hook(spec: &PoolConfig, ctx: &SpawnContext<'_>) -> bool {
    spec.kill_children_on_exit
        || spec.socket_protocol.systemd
        || ctx.identity.is_some_and(|i| !i.is_empty())
}

/// A resolved identity as plain values, built before the fork, applied in the
/// child with async-signal-safe calls only (no allocation, no lock).
struct Prepared {
    uid: Option<libc::uid_t>,
    gid: Option<libc::gid_t>,
    groups: Vec<libc::gid_t>,
    umask: Option<libc::mode_t>,
    nice: Option<libc::c_int>,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    /// /proc/self/oom_score_adj and the text to write there.
    oom: Option<(std::ffi::CString, Vec<u8>)>,
}

impl Prepared {
    fn new(r: &crate::identity::Resolved) -> Prepared {
        Prepared {
            uid: r.uid,
            gid: r.gid,
            groups: r.groups.clone(),
            umask: r.umask,
            nice: r.nice,
            rlimits: r
                .rlimits
                .iter()
                .map(|(res, soft, hard)| {
                    (
                        crate::identity::libc_resource(*res),
                        libc::rlimit {
                            rlim_cur: *soft,
                            rlim_max: *hard,
                        },
                    )
                })
                .collect(),
            oom: r.oom_score_adj.map(|o| {
                (
                    c"/proc/self/oom_score_adj".to_owned(),
                    o.to_string().into_bytes(),
                )
            }),
        }
    }

    /// In the child, between fork and exec.
    fn apply(&self) -> io::Result<()> {
        let check = |r: libc::c_int| {
            if r == -1 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: async-signal-safe libc calls on data owned by `self`.
        unsafe {
            for (res, lim) in &self.rlimits {
                check(libc::setrlimit(*res, lim))?;
            }
            if let Some((path, text)) = &self.oom {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                check(fd)?;
                let n = libc::write(fd, text.as_ptr().cast(), text.len());
                let e = io::Error::last_os_error();
                libc::close(fd);
                if n < 0 {
                    return Err(e);
                }
            }
            if let Some(n) = self.nice {
                check(libc::setpriority(libc::PRIO_PROCESS, 0, n))?;
            }
            if let Some(m) = self.umask {
                libc::umask(m);
            }
            if let Some(g) = self.gid {
                check(libc::setgroups(self.groups.len(), self.groups.as_ptr()))?;
                check(libc::setgid(g))?;
            }
            if let Some(u) = self.uid {
                check(libc::setuid(u))?;
            }
        }
        Ok(())
    }
}

/// Mark every fd above stderr close-on-exec (async-signal-safe).
fn cloexec_above_stderr(max_fd: libc::c_int) {
    // SAFETY: close_range and fcntl only change fd flags.
    unsafe {
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
    }
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
    // Without a pre_exec hook the child cannot touch its fds: the master marks
    // every fd close-on-exec (the master's own are already; this catches what it
    // inherited itself, as the hook does) and opens up the worker's for the call.
    let _inheritable = if needs_hook(spec, ctx) {
        None
    } else {
        cloexec_above_stderr(max_fd());
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
        let dir = crate::testutil::TempDir::new("wfds");
        let out = dir.join("fds");
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
            notify_socket: None,
            identity: None,
            stdout: ChildOut::Inherit,
            stderr: ChildOut::Inherit,
        };
        let pid = spawn(&spec, &ctx).map_err(|e| e.to_string())?;
        match waitpid(NixPid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, 0)) => {}
            other => return Err(format!("child ended with {other:?}")),
        }
        let listing = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
        Ok(listing)
    }

    #[test]
    fn fd_placeholders_become_the_fd_numbers_the_worker_gets() -> Result<(), String> {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let fd = l.as_raw_fd();
        let dir = crate::testutil::TempDir::new("wph");
        let out = dir.join("argv");
        let mut spec = PoolConfig::new(
            "t",
            vec![
                "sh".into(),
                "-c".into(),
                format!("echo \"$1 $2\" > {}", out.display()),
                "sh".into(),
                "fd://{fd:web}".into(),
                "{{fd:0}".into(),
            ],
        );
        spec.binds =
            vec![crate::config::BindSpec::parse("127.0.0.1:0,name=web")
                .map_err(|e| e.to_string())?];
        let ctx = SpawnContext {
            sockets: &[fd],
            control_path: Path::new("/nonexistent.sock"),
            master_pid: std::process::id() as Pid,
            index: 0,
            control_fd: None,
            notify_socket: None,
            identity: None,
            stdout: ChildOut::Inherit,
            stderr: ChildOut::Inherit,
        };
        let pid = spawn(&spec, &ctx).map_err(|e| e.to_string())?;
        match waitpid(NixPid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, 0)) => {}
            other => return Err(format!("child ended with {other:?}")),
        }
        let got = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
        assert_eq!(got.trim(), format!("fd://{fd} {{fd:0}}"));
        // A socket the spawn does not have is an error, not a made-up number.
        let ctx = SpawnContext {
            sockets: &[],
            ..ctx
        };
        assert!(matches!(
            command(&spec, &ctx),
            Err(SpawnError::Placeholder { .. })
        ));
        Ok(())
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
