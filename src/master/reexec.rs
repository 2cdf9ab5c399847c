//! Upgrading the master itself with zero downtime: `reexec` makes the master
//! exec a (new) binary in place, keeping its pid, every socket, its workers and
//! its whole state.
//!
//! What happens, and why each step:
//! 1. **Check.** Unless `upgrade_check = false`, the new binary is first run
//!    as a child in its check mode (`PROGRAM --upgrade-check --state-fd N
//!    ARGS...`): it must parse the master's arguments and config and read the
//!    state this master would hand it (einhorn's upgrade check). A binary that
//!    is missing, not executable, crashes, times out (`upgrade_check_timeout`) or
//!    fails leaves this master running, and the requester and the log say why.
//!    The check runs as a child reaped on the loop: nothing blocks meanwhile.
//! 2. **State.** Everything the master knows is written as one versioned JSON
//!    document ([`MasterState`], [`STATE_FORMAT`]) into a memfd: pools (each
//!    worker's pid, index, version, ack state and deadlines, stop reasons,
//!    backoff, upgrades and canaries), the config as running, the sockets by fd
//!    number, the control connections with their unread and unwritten bytes,
//!    waiting clients, event followers, reload history, release records.
//!    Instants travel as offsets from "now" (src/pool/persist.rs). The new
//!    image finds the memfd's number in [`RESUME_ENV`], which it removes from
//!    its environment first thing: workers never inherit it, and the command
//!    line stays as the operator typed it.
//! 3. **Exec.** The handled signals are blocked (a HUP or TERM during the gap
//!    stays pending instead of killing the process, whose handlers exec resets),
//!    the fds to keep lose FD_CLOEXEC, and `execve` runs. If it fails, every
//!    flag is restored and the master carries on, saying why.
//! 4. **Resume** ([`resume`]): the new image reads the state, adopts the fds,
//!    installs its signal handlers, unblocks the signals (pending ones arrive
//!    then), reaps children that exited in the gap, re-reads the config file
//!    and applies the difference as `reload` does, answers the requester and
//!    carries on. Workers never notice: none is signalled, and the pid they
//!    check (`EINHORN_MASTER_PID`) is still the master's.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::{CString, OsString};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::Instant;

use mio::Poll;
use nix::sys::wait::WaitStatus;
use serde::{Deserialize, Serialize};

use super::{
    events, startup, Deadline, Master, MasterError, PoolEntry, Rejected, ReloadRecord, ReplyTo,
    RuntimeError, Source, Waiters,
};
use crate::bind::{BoundSocket, SocketParts};
use crate::config::Config;
use crate::control::protocol::Reply;
use crate::control::server::{ControlServer, ServerParts};
use crate::pool::{At, Pid, Pool, PoolSnapshot};
use crate::systemd::worker_notify::{NotifyParts, WorkerNotify};

/// Version of the state document. A release must read the format of the one
/// before it (tests/fixtures/reexec-state-v1.json is read by a test).
pub(crate) const STATE_FORMAT: u32 = 1;
/// The variable that makes the binary resume from a state fd. The new image
/// takes it out of its environment before anything else (so no worker ever
/// inherits it); the command line stays exactly as the operator typed it, and
/// `ps`, `pgrep -f` and the service manager see the same master.
pub(crate) const RESUME_ENV: &str = "EINHYRNINGSINS_RESUME_FD";
/// The argument of the check mode.
pub(crate) const CHECK_ARG: &str = "--upgrade-check";
/// The check mode's state fd argument.
pub(crate) const STATE_ARG: &str = "--state-fd";
/// What a passed check prints first on stdout: a program that merely exits 0
/// (not einhyrningsins, or an old one) does not pass.
pub(crate) const CHECK_OK: &str = "einhyrningsins-upgrade-check: ok";

/// How this master was started: what `reexec` runs again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Launch {
    /// The program as found at start (through PATH, not resolved further): a
    /// package that installs a new binary at that path is picked up.
    pub program: PathBuf,
    /// argv\[0\] as given, shown again by the new image.
    #[serde(default)]
    pub argv0: Vec<u8>,
    /// The arguments after argv\[0\], as bytes.
    pub args: Vec<Vec<u8>>,
}

impl Launch {
    /// From this process's argv, with the program made absolute.
    pub fn from_env() -> Launch {
        let mut argv = std::env::args_os();
        let argv0 = argv.next().unwrap_or_default();
        Launch {
            program: find_program(&argv0),
            argv0: argv0.clone().into_vec(),
            args: argv.map(|a| a.into_vec()).collect(),
        }
    }

    fn args_os(&self) -> Vec<OsString> {
        self.args
            .iter()
            .map(|a| OsString::from_vec(a.clone()))
            .collect()
    }
}

fn find_program(argv0: &std::ffi::OsStr) -> PathBuf {
    let p = PathBuf::from(argv0);
    if argv0.as_bytes().contains(&b'/') {
        if p.is_absolute() {
            return p;
        }
        if let Ok(cwd) = std::env::current_dir() {
            return cwd.join(p);
        }
    } else if let Some(found) = crate::watch::resolve_executable(
        &argv0.to_string_lossy(),
        None,
        std::env::var_os("PATH").as_deref(),
    ) {
        return found;
    }
    std::env::current_exe().unwrap_or(p)
}

/// A re-exec waiting for the new binary's check.
pub(super) struct Job {
    check_pid: Pid,
    /// The state the check reads (kept open until it is done).
    _state: File,
    /// The check's stdout (its verdict) and stderr (why it failed).
    verdict: Option<File>,
    said: Option<File>,
    /// When the check is given up (the queue's wake-ups may be stale).
    deadline: Instant,
    requester: Option<ReplyTo>,
    /// `reexec --upgrade`: the new image then rolls every pool.
    upgrade: bool,
    program: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct EntryState {
    name: String,
    pool: PoolSnapshot,
    sockets: Vec<SocketParts>,
    removing: bool,
    last_change: Option<(At, String)>,
    fallback: Option<Vec<SocketParts>>,
}

/// Everything a master knows, as one document (see the module doc).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MasterState {
    format: u32,
    written_by: String,
    launch: Launch,
    config: Config,
    started: At,
    pools: Vec<EntryState>,
    control: ServerParts,
    notify: Option<NotifyParts>,
    lock_fd: Option<RawFd>,
    pidfile: Option<PathBuf>,
    last_reload: Option<(At, String, Result<String, String>)>,
    rejected: (u64, Vec<(At, String, Pid, String)>),
    releases: Vec<(String, u64, super::releases::Release)>,
    events: events::EventLog,
    waiters: Waiters<ReplyTo>,
    sd_ready_sent: bool,
    requester: Option<ReplyTo>,
    /// `reexec --upgrade`: roll every pool once resumed.
    #[serde(default)]
    then_upgrade: bool,
    /// The metrics counters (absent from a format-1 state written before
    /// them: they start at zero).
    #[serde(default)]
    counters: crate::metrics::Counters,
    /// The metrics listener's fd (kept, so a `:0` port stays the same).
    #[serde(default)]
    metrics_fd: Option<RawFd>,
    /// Captured worker output: the pipes (kept open across the exec), the
    /// rings and the `logs -f` followers.
    #[serde(default)]
    output: super::output::CaptureParts,
}

/// Why a state document cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    #[error("cannot read the state: {0}")]
    Read(#[from] io::Error),
    #[error("the state is not a valid document: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("the state is format {found}; this binary reads formats 1 to {STATE_FORMAT}")]
    Format { found: u32 },
    #[error(transparent)]
    Restore(#[from] crate::pool::RestoreError),
}

impl MasterState {
    /// Read and check a state document (the check mode does only this).
    pub(crate) fn read(mut f: impl Read) -> Result<MasterState, StateError> {
        let mut text = String::new();
        f.read_to_string(&mut text)?;
        // The format first: a newer document is refused as such, not as
        // whatever field this release does not know.
        let doc: serde_json::Value = serde_json::from_str(&text)?;
        let found = doc["format"].as_u64().unwrap_or(0);
        if found == 0 || found > u64::from(STATE_FORMAT) {
            return Err(StateError::Format {
                found: u32::try_from(found).unwrap_or(u32::MAX),
            });
        }
        let state: MasterState = serde_json::from_value(doc)?;
        // Every pool must restore (against a throwaway clock).
        let now = Instant::now();
        for e in &state.pools {
            Pool::restore(e.pool.clone(), now)?;
        }
        Ok(state)
    }

    /// Every worker pid of the state, with its stop signal.
    fn workers(&self) -> Vec<(Pid, nix::sys::signal::Signal)> {
        let now = Instant::now();
        let mut out = Vec::new();
        for e in &self.pools {
            if let Ok((pool, _)) = Pool::restore(e.pool.clone(), now) {
                for w in pool.workers_sorted() {
                    if let Some(pid) = w.pid {
                        out.push((pid, w.spec.stop_signal));
                    }
                }
            }
        }
        out
    }

    pub(crate) fn summary(&self) -> String {
        let workers: usize = self.pools.iter().map(|e| e.pool_workers()).sum();
        format!(
            "state format {} written by einhyrningsins {}: {} pool(s), {} worker(s)",
            self.format,
            self.written_by,
            self.pools.len(),
            workers
        )
    }
}

impl EntryState {
    fn pool_workers(&self) -> usize {
        serde_json::to_value(&self.pool)
            .ok()
            .and_then(|v| v["workers"].as_array().map(Vec::len))
            .unwrap_or(0)
    }
}

/// A pipe end made non-blocking, as a file.
fn nonblocking(fd: std::os::fd::OwnedFd) -> File {
    // SAFETY: F_GETFL/F_SETFL on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
    File::from(fd)
}

/// What a finished check wrote to a pipe (at most 64 KiB; never blocks).
fn drain(mut f: File) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while buf.len() < 65536 {
        match f.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A memfd holding `bytes`, positioned at its start, close-on-exec.
fn memfd(bytes: &[u8]) -> io::Result<File> {
    let name = c"einhyrningsins-state";
    // SAFETY: memfd_create with a valid NUL-terminated name and flags.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(bytes)?;
    f.rewind()?;
    Ok(f)
}

fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only change fd flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let new = if on {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        if libc::fcntl(fd, libc::F_SETFD, new) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The signals the master handles: blocked across the exec.
pub(super) fn handled_mask() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset fill a sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in super::HANDLED_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Block (`true`) or unblock the handled signals in the calling thread.
pub(super) fn block_handled(block: bool) {
    let set = handled_mask();
    let how = if block {
        libc::SIG_BLOCK
    } else {
        libc::SIG_UNBLOCK
    };
    // SAFETY: pthread_sigmask with a valid set.
    unsafe {
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

impl Master {
    /// `reexec` from a client: the final reply comes from the new image, or,
    /// if the re-exec is refused, from this one (with the reason).
    pub(super) fn request_reexec(&mut self, requester: ReplyTo, upgrade: bool) {
        if self.is_shutting_down() {
            self.reexec_failed(Some(requester), "the master is shutting down");
            return;
        }
        if self.reexec.is_some() {
            self.reexec_failed(
                Some(requester),
                "a re-exec is already under way (its new binary is being checked)",
            );
            return;
        }
        self.control.set_busy(requester.conn, true);
        if let Err(e) = self.start_reexec(Some(requester.clone()), upgrade) {
            self.reexec_failed(Some(requester), &e.to_string());
        }
    }

    /// Check the new binary (unless `upgrade_check = false`), then exec it in
    /// place. Returns an error only if nothing was started.
    fn start_reexec(
        &mut self,
        requester: Option<ReplyTo>,
        upgrade: bool,
    ) -> Result<(), RuntimeError> {
        let program = self.reexec_program()?;
        self.master_event(
            "reexec_started",
            serde_json::json!({
                "program": program.join(" "),
                "check": self.config.master.upgrade_check,
                "message": format!("re-exec of {} started", program.join(" ")),
            }),
        );
        if !self.config.master.upgrade_check {
            log::info!(
                "reexec: no upgrade check (upgrade_check = false); exec'ing {}",
                program.join(" ")
            );
            return self.exec_now(program, requester, upgrade);
        }
        let state = serde_json::to_vec(&self.state(requester.clone(), upgrade))
            .map_err(|e| RuntimeError::Reexec(format!("cannot write the state: {e}")))?;
        let file = memfd(&state)
            .map_err(|e| RuntimeError::Reexec(format!("cannot make the state's memfd: {e}")))?;
        let fd = file.as_raw_fd();
        let mut cmd = std::process::Command::new(&program[0]);
        cmd.args(&program[1..])
            .arg(CHECK_ARG)
            .arg(STATE_ARG)
            .arg(fd.to_string())
            .args(self.launch.args_os())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        // Only this thread spawns: the fd is inheritable for this one spawn.
        set_cloexec(fd, false)
            .map_err(|e| RuntimeError::Reexec(format!("cannot pass the state: {e}")))?;
        let child = cmd.spawn();
        let _ = set_cloexec(fd, true);
        let mut child = child.map_err(|e| {
            RuntimeError::Reexec(format!("the new binary {} cannot be run: {e}", program[0]))
        })?;
        let pid = child.id() as Pid;
        let verdict = child.stdout.take().map(|o| nonblocking(o.into()));
        let said = child.stderr.take().map(|e| nonblocking(e.into()));
        log::info!(
            "reexec: checking the new binary {} (pid {pid}, {CHECK_ARG})",
            program.join(" ")
        );
        let deadline = crate::pool::later(Instant::now(), self.config.master.upgrade_check_timeout);
        self.reexec = Some(Job {
            check_pid: pid,
            _state: file,
            verdict,
            said,
            deadline,
            requester,
            upgrade,
            program,
        });
        self.timers.arm(Deadline::ReexecCheck, deadline);
        Ok(())
    }

    /// What `reexec` runs: `reexec_as` (split on whitespace), else the path
    /// this master was started from; the program found in PATH now, as the
    /// check and the exec must run the same file.
    fn reexec_program(&self) -> Result<Vec<String>, RuntimeError> {
        let mut program: Vec<String> = match &self.config.master.reexec_as {
            Some(s) if s.split_whitespace().next().is_some() => {
                s.split_whitespace().map(str::to_string).collect()
            }
            _ => vec![self.launch.program.to_string_lossy().into_owned()],
        };
        let found = crate::watch::resolve_executable(
            &program[0],
            std::env::current_dir().ok().as_deref(),
            std::env::var_os("PATH").as_deref(),
        );
        match found {
            Some(p) => program[0] = p.to_string_lossy().into_owned(),
            None if program[0].contains('/') => {
                // Let the spawn or exec say what is wrong with it.
            }
            None => {
                return Err(RuntimeError::Reexec(format!(
                    "the new binary {:?} is not in PATH",
                    program[0]
                )))
            }
        }
        Ok(program)
    }

    /// A reaped child: is it the re-exec's check? Then act on its verdict.
    pub(super) fn reexec_reaped(&mut self, pid: Pid, status: &WaitStatus) -> bool {
        if self.reexec.as_ref().map(|j| j.check_pid) != Some(pid) {
            return false;
        }
        let Some(job) = self.reexec.take() else {
            return true;
        };
        let verdict = job.verdict.map(drain).unwrap_or_default();
        let said = job.said.map(drain).unwrap_or_default();
        let said = said.trim();
        let passed = matches!(status, WaitStatus::Exited(_, 0));
        let approved = verdict.lines().any(|l| l.starts_with(CHECK_OK));
        if passed && approved {
            log::info!(
                "reexec: the new binary passed its check: {}",
                verdict.trim()
            );
            if let Err(e) = self.exec_now(job.program, job.requester.clone(), job.upgrade) {
                self.reexec_failed(job.requester, &e.to_string());
            }
            return true;
        }
        let how = if passed {
            format!(
                "it exited 0 without saying \"{CHECK_OK}\": is it einhyrningsins? \
                 (`reexec_as` must run einhyrningsins, which must accept {CHECK_ARG})"
            )
        } else {
            super::children::describe(status)
        };
        let mut why = format!(
            "the new binary {} failed its check ({how})",
            job.program.join(" ")
        );
        if !said.is_empty() {
            // What it said, on one line (the last few hundred bytes of it).
            let tail: String = said
                .chars()
                .rev()
                .take(400)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let _ = write!(why, ": {}", tail.replace('\n', " | "));
        }
        self.reexec_failed(job.requester, &why);
        true
    }

    /// The check took too long: kill it, carry on.
    pub(super) fn reexec_check_timeout(&mut self) {
        let now = Instant::now();
        match &self.reexec {
            None => return,
            Some(j) if j.deadline > now => {
                // A wake-up left from an earlier check.
                self.timers.arm(Deadline::ReexecCheck, j.deadline);
                return;
            }
            Some(_) => {}
        }
        let Some(job) = self.reexec.take() else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(job.check_pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        // Its exit is reaped later and then ignored (no job names it).
        self.reexec_failed(
            job.requester,
            &format!(
                "the new binary's check did not finish within {}",
                humantime::format_duration(self.config.master.upgrade_check_timeout)
            ),
        );
    }

    fn reexec_failed(&mut self, requester: Option<ReplyTo>, why: &str) {
        log::error!("reexec refused: {why}; this master carries on");
        self.master_event("reexec_refused", serde_json::json!({"message": why}));
        if let Some(r) = requester {
            let reply = Reply::failure(
                format!("Re-exec refused: {why}; this master carries on"),
                r.request_id.clone(),
            );
            self.answer_requester(r, reply);
        }
    }

    /// The final reply to the client that asked for the re-exec.
    fn answer_requester(&mut self, r: ReplyTo, reply: Reply) {
        if !self.streams_to(r.conn) {
            self.control.set_busy(r.conn, false);
        }
        self.reply(r.conn, &reply, r.encoding);
        // A client that half-closed only waited for this reply.
        if self.control.peer_eof(r.conn) && !self.streams_to(r.conn) {
            self.hang_up(r.conn);
        }
    }

    /// Whether `conn` asked for the re-exec being checked.
    pub(super) fn reexec_requested_by(&self, conn: crate::control::server::ConnId) -> bool {
        self.reexec
            .as_ref()
            .and_then(|j| j.requester.as_ref())
            .is_some_and(|r| r.conn == conn)
    }

    /// Exec the new binary now. Returns only if the exec failed (everything
    /// is then as it was).
    fn exec_now(
        &mut self,
        program: Vec<String>,
        requester: Option<ReplyTo>,
        upgrade: bool,
    ) -> Result<(), RuntimeError> {
        let opened = self.sd_begin_reload();
        let fail = |m: &mut Master, why: String| {
            m.sd_end_reload(opened);
            RuntimeError::Reexec(why)
        };
        let state = match serde_json::to_vec(&self.state(requester, upgrade)) {
            Ok(s) => s,
            Err(e) => return Err(fail(self, format!("cannot write the state: {e}"))),
        };
        let file = match memfd(&state) {
            Ok(f) => f,
            Err(e) => return Err(fail(self, format!("cannot make the state's memfd: {e}"))),
        };
        let keep = self.fds_to_keep();
        let Ok(path) = CString::new(program[0].as_bytes()) else {
            return Err(fail(self, format!("{:?} holds a NUL", program[0])));
        };
        // argv as the operator started the master (its own argv[0] when the
        // program is the one it was started from), then its arguments.
        let mut words: Vec<Vec<u8>> = Vec::new();
        if self.config.master.reexec_as.is_some() {
            words.extend(program.iter().map(|a| a.as_bytes().to_vec()));
        } else if self.launch.argv0.is_empty() {
            words.push(program[0].as_bytes().to_vec());
        } else {
            words.push(self.launch.argv0.clone());
        }
        words.extend(self.launch.args.iter().cloned());
        let mut argv: Vec<CString> = Vec::new();
        for w in words {
            match CString::new(w) {
                Ok(c) => argv.push(c),
                Err(_) => return Err(fail(self, "an argument holds a NUL".into())),
            }
        }
        let mut env: Vec<CString> = std::env::vars_os()
            .filter(|(k, _)| k != RESUME_ENV)
            .filter_map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend(v.into_vec());
                CString::new(kv).ok()
            })
            .collect();
        if let Ok(c) = CString::new(format!("{RESUME_ENV}={}", file.as_raw_fd())) {
            env.push(c);
        }
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|c| c.as_ptr()).collect();
        env_ptrs.push(std::ptr::null());
        log::info!(
            "reexec: exec'ing {} ({} bytes of state, {} fds kept)",
            program.join(" "),
            state.len(),
            keep.len() + 1
        );
        // From here on, a signal must wait for the new image.
        block_handled(true);
        let mut opened_fds = Vec::new();
        for fd in keep.iter().copied().chain([file.as_raw_fd()]) {
            if set_cloexec(fd, false).is_ok() {
                opened_fds.push(fd);
            }
        }
        // SAFETY: execve with NUL-terminated strings and NULL-terminated
        // arrays that outlive the call; it returns only on failure.
        unsafe {
            libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr());
        }
        let err = io::Error::last_os_error();
        for fd in opened_fds {
            let _ = set_cloexec(fd, true);
        }
        block_handled(false);
        Err(fail(self, format!("exec of {} failed: {err}", program[0])))
    }

    /// Every fd the new image takes over.
    fn fds_to_keep(&self) -> Vec<RawFd> {
        let mut fds = self.control.raw_fds();
        for e in self.pools.values() {
            fds.extend(e.sockets.iter().map(|s| s.parts().fd));
            if let Some(fb) = &e.fallback {
                fds.extend(fb.iter().map(|s| s.parts().fd));
            }
        }
        if let Some(n) = &self.notify_ack {
            fds.push(n.parts().fd);
        }
        if let Some(m) = &self.metrics {
            fds.push(m.listener_fd());
        }
        fds.extend(self._files.parts().0);
        fds.extend(self.capture.raw_fds());
        fds
    }

    /// The master as a document.
    fn state(&self, requester: Option<ReplyTo>, then_upgrade: bool) -> MasterState {
        let now = Instant::now();
        let (lock_fd, pidfile) = self._files.parts();
        MasterState {
            format: STATE_FORMAT,
            written_by: env!("CARGO_PKG_VERSION").to_string(),
            launch: self.launch.clone(),
            config: self.config.clone(),
            started: At::of(self.started, now),
            pools: self
                .pools
                .iter()
                .map(|(name, e)| EntryState {
                    name: name.clone(),
                    pool: e.pool.snapshot(now),
                    sockets: e.sockets.iter().map(BoundSocket::parts).collect(),
                    removing: e.removing,
                    last_change: e
                        .last_change
                        .as_ref()
                        .map(|(at, what)| (At::of(*at, now), what.clone())),
                    fallback: e
                        .fallback
                        .as_ref()
                        .map(|f| f.iter().map(BoundSocket::parts).collect()),
                })
                .collect(),
            control: self.control.parts(),
            notify: self.notify_ack.as_ref().map(WorkerNotify::parts),
            lock_fd,
            pidfile,
            last_reload: self
                .last_reload
                .as_ref()
                .map(|r| (At::of(r.at, now), r.trigger.clone(), r.result.clone())),
            rejected: (
                self.rejected.count,
                self.rejected
                    .recent
                    .iter()
                    .map(|(at, what, pid, why)| {
                        (At::of(*at, now), what.to_string(), *pid, why.clone())
                    })
                    .collect(),
            ),
            releases: self.releases.to_list(),
            events: self.events.clone(),
            waiters: self.waiters.clone(),
            sd_ready_sent: self.sd.ready_sent(),
            requester,
            then_upgrade,
            counters: self.counters.clone(),
            metrics_fd: self.metrics.as_ref().map(|m| m.listener_fd()),
            output: self.capture.parts(),
        }
    }
}

/// In a new image: the state fd the previous one named, taken out of the
/// environment. Call first thing in `main`, while the process has one thread.
pub(crate) fn take_resume_fd() -> Option<Result<RawFd, String>> {
    let v = std::env::var_os(RESUME_ENV)?;
    std::env::remove_var(RESUME_ENV);
    Some(
        v.to_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{RESUME_ENV}={v:?} is not an fd number")),
    )
}

/// The new image: read the state at `fd`, take over, and run. Returns the
/// exit status, as `run` does.
pub(crate) fn resume(fd: RawFd) -> Result<i32, MasterError> {
    // SAFETY: the previous image passed this fd for us alone.
    let file = unsafe { File::from_raw_fd(fd) };
    let state = MasterState::read(file).map_err(|e| {
        // No logger yet: the config is in the state.
        eprintln!("einhyrningsins: cannot resume after re-exec: {e}");
        MasterError::Resume(e.to_string())
    })?;
    let name = state
        .config
        .master
        .command_name
        .clone()
        .unwrap_or_else(|| "einhyrningsins".into());
    if let Err(e) = crate::log::init(&state.config.log, &name) {
        eprintln!("einhyrningsins: {e}");
    }
    let then_upgrade = state.then_upgrade;
    let workers = state.workers();
    match Master::from_state(state) {
        Ok(master) => master.resumed(then_upgrade),
        Err(e) => {
            // No image supervises these workers now. Left running, they would
            // hold the listening sockets, and a restarted master could not
            // bind them: they get their stop signal, as at a shutdown.
            log::error!(
                "cannot resume after re-exec ({e}); stopping the {} worker(s) so that a restarted master can bind their sockets",
                workers.len()
            );
            for (pid, sig) in workers {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
            Err(e)
        }
    }
}

impl Master {
    fn from_state(st: MasterState) -> Result<Master, MasterError> {
        let now = Instant::now();
        let poll = Poll::new().map_err(MasterError::Poll)?;
        let mut signals = signal_hook_mio::v1_0::Signals::new(super::HANDLED_SIGNALS)
            .map_err(MasterError::Poll)?;
        poll.registry()
            .register(
                &mut signals,
                Source::Signals.token(),
                mio::Interest::READABLE,
            )
            .map_err(MasterError::Poll)?;
        // SAFETY (for every from_parts below): the previous image kept these fds
        // open for us, and each is named once in the state.
        let control = unsafe {
            ControlServer::from_parts(st.control, poll.registry(), Source::Control.token())
        }
        .map_err(MasterError::Poll)?;
        let mut pools = BTreeMap::new();
        let mut pid_pool = HashMap::new();
        let mut spawn_queue = VecDeque::new();
        for e in st.pools {
            let (pool, pending) =
                Pool::restore(e.pool, now).map_err(|err| MasterError::Resume(err.to_string()))?;
            for w in pool.workers_sorted() {
                if let Some(pid) = w.pid {
                    pid_pool.insert(pid, e.name.clone());
                }
            }
            for a in pending {
                if let crate::pool::Action::Spawn {
                    worker,
                    index,
                    version,
                    spec,
                } = a
                {
                    spawn_queue.push_back(super::PendingSpawn {
                        pool: e.name.clone(),
                        worker,
                        index,
                        version,
                        spec,
                    });
                }
            }
            let sockets = e
                .sockets
                .into_iter()
                .map(|p| unsafe { BoundSocket::from_parts(p) })
                .collect();
            let fallback = e.fallback.map(|f| {
                f.into_iter()
                    .map(|p| unsafe { BoundSocket::from_parts(p) })
                    .collect()
            });
            let mut entry = PoolEntry::new(pool, sockets);
            entry.removing = e.removing;
            entry.last_change = e.last_change.map(|(at, what)| (at.at(now), what));
            entry.fallback = fallback;
            pools.insert(e.name, entry);
        }
        let notify_ack = match st.notify {
            Some(p) => {
                let mut n = unsafe { WorkerNotify::from_parts(p) }.map_err(MasterError::Poll)?;
                n.register(poll.registry(), Source::WorkerNotify.token())
                    .map_err(MasterError::Poll)?;
                Some(n)
            }
            None => None,
        };
        let files = unsafe { startup::Files::from_parts(st.lock_fd, st.pidfile) };
        let capture = unsafe { super::output::Capture::from_parts(st.output, poll.registry()) };
        let (mut sd, sd_link) = crate::systemd::service::from_env();
        sd.resume_ready(st.sd_ready_sent);
        if let Some(name) = &st.config.master.command_name {
            startup::set_process_name(name);
        }
        if st.config.master.subreaper {
            startup::become_subreaper();
        }
        let dirty: HashSet<String> = pools.keys().cloned().collect();
        let mut rejected = Rejected {
            count: st.rejected.0,
            recent: VecDeque::new(),
        };
        for (at, what, pid, why) in st.rejected.1 {
            let name =
                crate::control::protocol::command::lookup(&what).map_or("worker:ack", |c| c.name);
            rejected.recent.push_back((at.at(now), name, pid, why));
        }
        let mut m = Master {
            config: st.config,
            pools,
            pid_pool,
            poll,
            signals,
            control,
            timers: crate::timer::TimerQueue::new(),
            watcher: None,
            debounce: crate::watch::Debouncer::new(crate::config::DEFAULT_DEBOUNCE),
            held: HashMap::new(),
            started: st.started.at(now),
            pid: std::process::id() as Pid,
            phase: super::phase::Phase::default(),
            waiters: st.waiters,
            events: st.events,
            spawn_queue,
            dirty,
            last_reload: st.last_reload.map(|(at, trigger, result)| ReloadRecord {
                at: at.at(now),
                trigger,
                result,
            }),
            rejected,
            releases: super::releases::Releases::from_list(st.releases),
            _files: files,
            sd,
            sd_link,
            sd_warned: false,
            notify_ack,
            // The first image's launch: the next re-exec runs the path it was
            // started from again (where a package installs the new binary).
            launch: st.launch,
            reexec: None,
            resumed_for: st.requester,
            identities: super::identities::Identities::default(),
            counters: st.counters,
            metrics: None,
            capture,
        };
        // The listener was kept (scrapes during the exec wait in its backlog);
        // its connections were not (they see EOF). A state without it (the
        // listener was off) binds what the config asks, if anything.
        let adopted = match (st.metrics_fd, &m.config.metrics.listen) {
            (Some(fd), Some(addr)) => {
                // SAFETY: the previous image kept this fd for us (fds_to_keep).
                let mut l =
                    unsafe { crate::metrics::http::MetricsServer::from_listener_fd(fd, addr) };
                match l.register(m.poll.registry(), Source::Metrics.token()) {
                    Ok(()) => Some(l),
                    Err(e) => {
                        log::error!("after re-exec: metrics listener: {e}");
                        None
                    }
                }
            }
            _ => None,
        };
        match adopted {
            Some(l) => m.metrics = Some(l),
            None => match Master::bind_metrics(&m.config, &m.poll) {
                Ok(l) => m.metrics = l,
                Err(e) => log::error!("after re-exec: {e}; metrics are off until a restart"),
            },
        }
        // Resolved again: the new binary applies them (a user gone since is
        // reported, and its spawns fail with the reason).
        m.identities = super::identities::Identities::load(&m.config).unwrap_or_else(|problems| {
            for p in problems {
                log::error!("after re-exec: {p}");
            }
            super::identities::Identities::default()
        });
        Ok(m)
    }

    /// The new image's first steps, then the loop.
    fn resumed(mut self, then_upgrade: bool) -> Result<i32, MasterError> {
        // Handlers are in place (Signals::new): what arrived during the exec
        // can be delivered now.
        block_handled(false);
        log::info!(
            "einhyrningsins {} (pid {}) resumed after re-exec: {} pool(s), {} worker(s)",
            env!("CARGO_PKG_VERSION"),
            self.pid,
            self.pools.len(),
            self.pid_pool.len()
        );
        // Children that exited while no image was looking.
        self.reap();
        self.start_watcher();
        let reload = if self.config.source.is_some() {
            match self.reload("re-exec") {
                Ok(r) => format!("; {}", r.summary),
                Err(e) => format!("; the config file was not reloaded: {e}"),
            }
        } else {
            String::new()
        };
        let message = format!(
            "Re-exec done: einhyrningsins {} (pid {}) took over {} pool(s) and {} worker(s){reload}",
            env!("CARGO_PKG_VERSION"),
            self.pid,
            self.pools.len(),
            self.pid_pool.len()
        );
        log::info!("{message}");
        self.master_event("reexec_done", serde_json::json!({"message": message}));
        self.sd_end_reload(true);
        let requester = self.resumed_for.take();
        if then_upgrade {
            // einhorn's `upgrade`: the new master, then new workers. The
            // requester's final reply is the upgrade's.
            if let Some(r) = &requester {
                self.reply(
                    r.conn,
                    &Reply::progress(message, r.request_id.clone()),
                    r.encoding,
                );
            }
            let waiter = requester
                .clone()
                .map(|r| (r.conn, r.request_id, r.encoding));
            if let Err(e) = self.start_upgrade(None, None, waiter) {
                log::error!("reexec --upgrade: {e}");
                if let Some(r) = requester {
                    let reply = Reply::failure(
                        format!("Re-exec done, upgrade refused: {e}"),
                        r.request_id.clone(),
                    );
                    self.answer_requester(r, reply);
                }
            }
        } else if let Some(r) = requester {
            let reply = Reply::new(message, r.request_id.clone());
            self.answer_requester(r, reply);
        }
        self.run_loop()
    }
}

/// The check mode: `PROGRAM --upgrade-check --state-fd N ARGS...`. Parses the
/// master's arguments and config as the new image would, reads the state, and
/// says whether both are usable (exit 0 and the [`CHECK_OK`] line) or why not
/// (exit 1). Without `--state-fd` (einhorn's bare `--upgrade-check ARGS`), only
/// the arguments are checked, and no [`CHECK_OK`] line is printed.
pub(crate) fn check_main(args: &[OsString]) -> u8 {
    let (fd, rest) = match args {
        [flag, fd, rest @ ..] if flag == STATE_ARG => match fd.to_string_lossy().parse::<RawFd>() {
            Ok(fd) => (Some(fd), rest),
            Err(_) => {
                eprintln!("einhyrningsins {CHECK_ARG}: {STATE_ARG} needs an fd number");
                return 1;
            }
        },
        // einhorn's form: "could this binary start with these arguments?"
        rest => (None, rest),
    };
    let mut argv = vec![OsString::from("einhyrningsins")];
    argv.extend(rest.iter().cloned());
    match crate::cli::parse_args(argv) {
        Ok(crate::cli::Invocation::Run(_)) => {}
        Ok(_) => {
            eprintln!("einhyrningsins {CHECK_ARG}: the master's arguments do not run a master");
            return 1;
        }
        Err(e) => {
            eprintln!("einhyrningsins {CHECK_ARG}: the master's arguments are refused: {e}");
            return 1;
        }
    }
    let Some(fd) = fd else {
        eprintln!(
            "einhyrningsins {}: the arguments are usable (no state to read: {STATE_ARG} FD checks one)",
            env!("CARGO_PKG_VERSION")
        );
        return 0;
    };
    // SAFETY: the master passed this fd for us alone.
    let file = unsafe { File::from_raw_fd(fd) };
    match MasterState::read(file) {
        Ok(state) => {
            println!(
                "{CHECK_OK}: einhyrningsins {} reads {}",
                env!("CARGO_PKG_VERSION"),
                state.summary()
            );
            0
        }
        Err(e) => {
            eprintln!("einhyrningsins {CHECK_ARG}: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/reexec-state-v1.json"
    );

    /// A state written by a real master of format 1 (two pools, one in the
    /// middle of an upgrade with a client waiting for it, an events follower):
    /// every later release must read it. Regenerate only with a new format
    /// number, and keep the old file.
    #[test]
    fn the_format_1_fixture_stays_readable() {
        let text = std::fs::read_to_string(FIXTURE).expect("fixture");
        let state = MasterState::read(text.as_bytes()).expect("format 1 reads");
        assert_eq!(state.format, 1);
        let names: Vec<&str> = state.pools.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["api", "web"]);
        let now = Instant::now();
        let (api, pending) = Pool::restore(state.pools[0].pool.clone(), now).expect("api");
        // Set to 4 at run time (the file says 2); an upgrade under way.
        assert_eq!(api.count(), 4);
        assert!(api.upgrading().is_some());
        assert!(pending.is_empty());
        assert_eq!(api.len(), 6);
        let (web, _) = Pool::restore(state.pools[1].pool.clone(), now).expect("web");
        assert_eq!(web.acked(), 3);
        assert!(state
            .waiters
            .any(|w| w.request_id == Some(serde_json::json!(1))));
        assert_eq!(state.control.conns.len(), 3);
        assert_eq!(state.workers().len(), 9);
        assert!(state.summary().contains("2 pool(s), 9 worker(s)"));
    }

    #[test]
    fn a_state_from_a_newer_release_or_garbage_is_refused() {
        let text = std::fs::read_to_string(FIXTURE).expect("fixture");
        let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
        v["format"] = serde_json::json!(STATE_FORMAT + 1);
        let newer = serde_json::to_vec(&v).expect("json");
        assert!(matches!(
            MasterState::read(newer.as_slice()),
            Err(StateError::Format { found }) if found == STATE_FORMAT + 1
        ));
        assert!(matches!(
            MasterState::read(&b"{\"format\": 1"[..]),
            Err(StateError::Parse(_))
        ));
        assert!(MasterState::read(&b""[..]).is_err());
    }

    #[test]
    fn what_this_release_writes_it_reads_back_unchanged() {
        let text = std::fs::read_to_string(FIXTURE).expect("fixture");
        let state = MasterState::read(text.as_bytes()).expect("reads");
        let once = serde_json::to_value(&state).expect("writes");
        let again = MasterState::read(serde_json::to_vec(&once).expect("bytes").as_slice())
            .expect("reads back");
        assert_eq!(serde_json::to_value(&again).expect("writes"), once);
    }

    #[test]
    fn the_state_memfd_is_close_on_exec_and_rewound() {
        let mut f = memfd(b"{\"x\":1}").expect("memfd");
        // SAFETY: F_GETFD on an fd we own.
        let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        let mut s = String::new();
        f.read_to_string(&mut s).expect("read");
        assert_eq!(s, "{\"x\":1}");
    }
}
