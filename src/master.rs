//! The master process: one single-threaded mio loop that owns the listening
//! sockets and every pool, and turns OS events into pool events.
//!
//! Sources on the loop: the signal pipe (signal-hook-mio), the control listener and
//! its connections, and the deadline queue (the poll timeout). Nothing polls: with
//! no deadline armed the loop sleeps until a signal or a client arrives.
//!
//! Each pool is a pure state machine ([`crate::pool::Pool`]); this module carries
//! out its actions (fork/exec, kill), routes upgrade progress to the clients that
//! asked, and reaps children. All spawning goes through here, and `waitpid(-1)` is
//! looped until nothing is left on every SIGCHLD (signals coalesce). A pid is never
//! signalled after it has been reaped: a pool forgets a worker the moment its exit
//! is seen.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid as NixPid;
use signal_hook::consts::signal as sigs;
use signal_hook_mio::v1_0::Signals;

use crate::bind::{self, BindError, BoundSocket};
use crate::config::{Config, UpgradeStrategy};
use crate::control::codec::{self, Encoding, Reply};
use crate::control::server::{ConnId, ControlError, ControlServer, Input, CONN_BASE};
use crate::pool::{Action, Pid, Pool, Shutdown, UpgradeId};
use crate::timer::TimerQueue;
use crate::watch::{resolve_executable, Debouncer, FileWatcher};
use crate::worker::{self, SpawnContext};

const SIGNALS: Token = Token(0);
const CONTROL: Token = Token(1);
/// The file watcher's thread wakes the loop through a mio Waker on this token.
const WATCH: Token = Token(2);
/// Forks per loop turn: between batches the loop serves acks and clients, so a
/// pool of thousands starts without starving the control socket.
const SPAWN_BATCH: usize = 64;

/// Fatal startup errors, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("{location}: pool {pool}: {source}")]
    Bind {
        pool: String,
        location: String,
        source: BindError,
    },
    #[error("lockfile {path} is held by pid {holder}: another master is running")]
    Locked { path: PathBuf, holder: String },
    #[error("pidfile {path} names pid {pid}, which is alive: another master is running")]
    PidfileTaken { path: PathBuf, pid: i32 },
    #[error("could not {op} {path}: {source}")]
    File {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("event loop: {0}")]
    Poll(io::Error),
}

impl MasterError {
    /// Exit status: 2 for what the operator's configuration asked and cannot be
    /// had (address in use, socket taken), 1 for the rest.
    pub fn exit_code(&self) -> i32 {
        match self {
            MasterError::Bind { .. } | MasterError::Control(_) => 2,
            MasterError::Locked { .. } | MasterError::PidfileTaken { .. } => 2,
            _ => 1,
        }
    }
}

/// Who wanted a watched file: a change rolls that pool, or reloads the config.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum WatchOwner {
    Config,
    Pool(String),
}

/// What a deadline in the loop's queue is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Deadline {
    Pool(String),
    /// The watcher's debounce quiet time.
    Debounce,
    /// systemd notifications (STATUS rate limit, WATCHDOG): handled by
    /// `sd_turn`, which runs every loop turn.
    SdNotify,
}

/// How the master is winding down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Pools are draining; exit when every pool has stopped.
    Draining,
}

pub(crate) struct PoolEntry {
    pub(crate) pool: Pool,
    pub(crate) sockets: Vec<BoundSocket>,
    /// Removed from the config: draining, dropped (sockets closed) once empty.
    pub(crate) removing: bool,
    /// Last roll, reload or scale of this pool: when, and what and why.
    pub(crate) last_change: Option<(Instant, String)>,
}

impl PoolEntry {
    fn new(pool: Pool, sockets: Vec<BoundSocket>) -> PoolEntry {
        PoolEntry {
            pool,
            sockets,
            removing: false,
            last_change: None,
        }
    }
}

/// Outcome of the last reload, for `status`.
pub(crate) struct ReloadRecord {
    pub(crate) at: Instant,
    pub(crate) trigger: String,
    pub(crate) result: Result<String, String>,
}

/// A client waiting for the end of one or more upgrades.
pub(crate) struct Waiter {
    pub(crate) conn: ConnId,
    pub(crate) request_id: Option<serde_json::Value>,
    pub(crate) encoding: Encoding,
    pub(crate) remaining: HashSet<(String, UpgradeId)>,
    pub(crate) failures: Vec<String>,
}

pub struct Master {
    pub(crate) config: Config,
    pub(crate) pools: BTreeMap<String, PoolEntry>,
    pid_pool: HashMap<Pid, String>,
    poll: Poll,
    signals: Signals,
    pub(crate) control: ControlServer,
    timers: TimerQueue<Deadline>,
    watcher: Option<FileWatcher<WatchOwner>>,
    debounce: Debouncer<WatchOwner>,
    pub(crate) started: Instant,
    pub(crate) pid: Pid,
    phase: Phase,
    /// Graceful-shutdown requests so far (a second INT escalates to TERM, a third
    /// to KILL).
    stop_requests: u32,
    pub(crate) waiters: HashMap<u64, Waiter>,
    waiter_of: HashMap<(String, UpgradeId), u64>,
    next_waiter: u64,
    /// Spawns waiting for their fork: (pool, worker id, slot index, spec).
    spawn_queue: std::collections::VecDeque<(
        String,
        crate::pool::WorkerId,
        u32,
        Arc<crate::config::PoolConfig>,
    )>,
    /// Pools whose deadlines may have changed since the last loop turn.
    dirty: HashSet<String>,
    exit_now: bool,
    pub(crate) last_reload: Option<ReloadRecord>,
    _lock: Option<File>,
    pidfile: Option<PathBuf>,
    /// systemd notifications (src/sdnotify.rs).
    sd: crate::sdnotify::Supervisor,
    /// `ack = "notify"`: the workers' NOTIFY_SOCKET, bound on first use (src/notify_ack.rs).
    pub(crate) notify_ack: Option<crate::notify_ack::WorkerNotify>,
}

impl Master {
    /// Take the lockfile, the control socket, every pool's sockets and the
    /// pidfile; register signal handlers. No worker is started yet.
    pub fn new(config: Config) -> Result<Master, MasterError> {
        let lock = match &config.master.lockfile {
            Some(p) => Some(take_lock(p)?),
            None => None,
        };
        let control = ControlServer::bind(&config.control.socket, config.control.mode)?;
        let mut pools = BTreeMap::new();
        // systemd socket activation: inherited fds first (src/activation.rs).
        let mut inherited = crate::activation::Inherited::from_env();
        for (name, spec) in &config.pools {
            let mut sockets = Vec::new();
            for (i, b) in spec.binds.iter().enumerate() {
                let sock = match inherited.take(name, b) {
                    Some(s) => s,
                    None => bind::bind(b, bind::DEFAULT_BACKLOG).map_err(|source| {
                        MasterError::Bind {
                            pool: name.clone(),
                            location: config.locate(&format!("pools.{name}.binds[{i}]")),
                            source,
                        }
                    })?,
                };
                log::info!("pool {name}: listening on {}", sock.local_addr());
                sockets.push(sock);
            }
            pools.insert(
                name.clone(),
                PoolEntry::new(Pool::new(Arc::new(spec.clone())), sockets),
            );
        }
        inherited.finish();
        let pidfile = match &config.master.pidfile {
            Some(p) => {
                write_pidfile(p)?;
                Some(p.clone())
            }
            None => None,
        };
        let poll = Poll::new().map_err(MasterError::Poll)?;
        let mut signals = Signals::new([
            sigs::SIGHUP,
            sigs::SIGINT,
            sigs::SIGTERM,
            sigs::SIGQUIT,
            sigs::SIGUSR2,
            sigs::SIGTTIN,
            sigs::SIGTTOU,
            sigs::SIGCHLD,
        ])
        .map_err(MasterError::Poll)?;
        poll.registry()
            .register(&mut signals, SIGNALS, mio::Interest::READABLE)
            .map_err(MasterError::Poll)?;
        let mut control = control;
        control
            .register(poll.registry(), CONTROL)
            .map_err(MasterError::Poll)?;
        if let Some(name) = &config.master.command_name {
            set_process_name(name);
        }
        if config.master.subreaper {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == -1 {
                log::warn!(
                    "--subreaper: PR_SET_CHILD_SUBREAPER failed: {}",
                    io::Error::last_os_error()
                );
            }
        }
        Ok(Master {
            config,
            pools,
            pid_pool: HashMap::new(),
            poll,
            signals,
            control,
            timers: TimerQueue::new(),
            watcher: None,
            debounce: Debouncer::new(crate::config::DEFAULT_DEBOUNCE),
            started: Instant::now(),
            pid: std::process::id() as Pid,
            phase: Phase::Running,
            stop_requests: 0,
            waiters: HashMap::new(),
            waiter_of: HashMap::new(),
            next_waiter: 1,
            dirty: HashSet::new(),
            spawn_queue: std::collections::VecDeque::new(),
            exit_now: false,
            last_reload: None,
            _lock: lock,
            pidfile,
            sd: crate::sdnotify::Supervisor::from_env(),
            notify_ack: None,
        })
    }

    /// Addresses actually bound, per pool (after port 0 resolution).
    pub fn bound_addresses(&self) -> Vec<(String, String)> {
        self.pools
            .iter()
            .flat_map(|(n, e)| {
                e.sockets
                    .iter()
                    .map(|s| (n.clone(), s.local_addr().to_string()))
            })
            .collect()
    }

    /// Run until every pool has stopped after a shutdown; returns the exit status.
    pub fn run(mut self) -> Result<i32, MasterError> {
        log::info!(
            "einhyrningsins {} (pid {}) starting {} pool(s); control socket {}",
            env!("CARGO_PKG_VERSION"),
            self.pid,
            self.pools.len(),
            self.control.path().display()
        );
        self.start_watcher();
        let now = Instant::now();
        let names: Vec<String> = self.pools.keys().cloned().collect();
        for name in names {
            if let Some(e) = self.pools.get_mut(&name) {
                let actions = e.pool.start(now);
                self.execute(&name, actions);
            }
        }
        let mut events = Events::with_capacity(256);
        loop {
            self.rearm();
            self.sd_turn();
            if self.exit_now || (self.phase == Phase::Draining && self.pools.is_empty()) {
                break;
            }
            let timeout = if self.spawn_queue.is_empty() {
                self.timers.poll_timeout(Instant::now())
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(MasterError::Poll(e));
            }
            for ev in events.iter() {
                match ev.token() {
                    SIGNALS => self.on_signals(),
                    WATCH => self.on_watch_events(),
                    CONTROL => {
                        for id in self.control.accept(self.poll.registry()) {
                            self.on_new_conn(id);
                        }
                    }
                    crate::notify_ack::TOKEN => self.on_worker_notify(),
                    Token(t) if t >= CONN_BASE => {
                        if ev.is_writable() {
                            self.control.flush(self.poll.registry(), t);
                        }
                        if ev.is_readable() || ev.is_read_closed() {
                            self.on_conn_readable(t);
                        }
                    }
                    _ => {}
                }
            }
            let now = Instant::now();
            for due in self.timers.pop_due(now) {
                match due {
                    Deadline::Pool(name) => {
                        if let Some(e) = self.pools.get_mut(&name) {
                            let actions = e.pool.tick(now);
                            self.execute(&name, actions);
                        }
                    }
                    Deadline::Debounce => self.on_debounced(now),
                    Deadline::SdNotify => {}
                }
            }
            self.run_spawns(SPAWN_BATCH);
        }
        log::info!("einhyrningsins (pid {}) exiting", self.pid);
        Ok(0)
    }

    /// systemd: READY/STATUS/WATCHDOG as due (src/sdnotify.rs), woken by the queue.
    fn sd_turn(&mut self) {
        // Not under systemd: nothing to summarise (this runs every loop turn).
        if !self.sd.active() {
            return;
        }
        let snap = crate::sdnotify::Snapshot::of(&self.pools, self.is_shutting_down());
        if let Some(at) = self.sd.turn(Instant::now(), &snap) {
            self.timers.arm(Deadline::SdNotify, at);
        }
    }

    /// Re-arm the loop's wake-up for pools whose deadlines may have moved.
    fn rearm(&mut self) {
        for name in std::mem::take(&mut self.dirty) {
            if let Some(at) = self.pools.get(&name).and_then(|e| e.pool.next_deadline()) {
                self.timers.arm(Deadline::Pool(name), at);
            }
        }
    }

    // ---- file watching ---------------------------------------------------------

    /// Start the watcher thread (if enabled) and watch what the config names.
    fn start_watcher(&mut self) {
        if !self.config.watch.enabled {
            log::info!("file watching is off");
            return;
        }
        let waker = match mio::Waker::new(self.poll.registry(), WATCH) {
            Ok(w) => Arc::new(w),
            Err(e) => {
                log::error!("file watching disabled: could not create a waker: {e}");
                return;
            }
        };
        match FileWatcher::new(waker) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => {
                log::error!("file watching disabled: {e}");
                return;
            }
        }
        self.watch_config();
    }

    /// (Re)compute the watched files: each pool's resolved executable and its
    /// `watch` paths, and the config file.
    fn watch_config(&mut self) {
        self.debounce.set_delay(self.config.watch.debounce);
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        let cwd = std::env::current_dir().unwrap_or_default();
        let mut wanted: BTreeMap<PathBuf, Vec<WatchOwner>> = BTreeMap::new();
        let mut add = |p: PathBuf, o: WatchOwner| wanted.entry(cwd.join(p)).or_default().push(o);
        if let Some(src) = &self.config.source {
            add(src.clone(), WatchOwner::Config);
        }
        for (name, pool) in &self.config.pools {
            let owner = WatchOwner::Pool(name.clone());
            let path_env = match pool.env.get("PATH") {
                Some(p) => Some(std::ffi::OsString::from(p)),
                None if pool.drop_env.iter().any(|v| v == "PATH") => None,
                None => std::env::var_os("PATH"),
            };
            if let Some(cmd0) = pool.command.first() {
                match resolve_executable(cmd0, pool.cwd.as_deref(), path_env.as_deref()) {
                    Some(exe) => add(exe, owner.clone()),
                    None => log::warn!("pool {name}: {cmd0:?} not found in PATH; not watching it"),
                }
            }
            for w in &pool.watch {
                add(w.clone(), owner.clone());
            }
        }
        let n = wanted.len();
        for problem in watcher.set(wanted) {
            log::warn!("watch: {problem}");
        }
        log::debug!("watching {n} file(s) for changes");
    }

    fn on_watch_events(&mut self) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        let report = watcher.take_events();
        for problem in report.problems {
            log::warn!("watch: {problem}");
        }
        let now = Instant::now();
        for change in report.changed {
            for owner in change.owners {
                let what = match &owner {
                    WatchOwner::Config => "the configuration will be reloaded".to_string(),
                    WatchOwner::Pool(p) => format!("pool {p} will roll"),
                };
                // One line per burst; the rest of a burst only at debug.
                if self.debounce.is_pending(&owner) {
                    log::debug!("watch: {} changed again", change.path.display());
                } else {
                    log::info!(
                        "watch: {} changed; {what} after {:?} without further changes",
                        change.path.display(),
                        self.debounce.delay()
                    );
                }
                self.debounce.event(owner, now);
            }
        }
        if let Some(at) = self.debounce.next_deadline() {
            self.timers.arm(Deadline::Debounce, at);
        }
    }

    fn on_debounced(&mut self, now: Instant) {
        let due = self.debounce.due(now);
        // Reload first: it may roll pools itself, which then need no second roll.
        let mut rolled = Vec::new();
        if due.contains(&WatchOwner::Config) {
            if let Ok((_, r)) = self.reload("config file changed") {
                rolled = r;
            }
        }
        for owner in due {
            let WatchOwner::Pool(name) = owner else {
                continue;
            };
            if rolled.contains(&name) || self.pools.get(&name).is_none_or(|e| e.removing) {
                continue;
            }
            match self.start_upgrade(Some(&name), None, None) {
                Ok(_) => self.note_change(&name, "rolled (a watched file changed)".into()),
                Err(e) => log::warn!("watch: pool {name}: {e}"),
            }
        }
        if let Some(at) = self.debounce.next_deadline() {
            self.timers.arm(Deadline::Debounce, at);
        }
    }

    // ---- signals and children ------------------------------------------------

    fn on_signals(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for sig in pending {
            match sig {
                sigs::SIGCHLD => self.reap(),
                sigs::SIGHUP => self.on_hup(),
                sigs::SIGINT | sigs::SIGUSR2 => {
                    self.stop_requests += 1;
                    let how = match self.stop_requests {
                        1 => Shutdown::Graceful,
                        2 => Shutdown::With(Signal::SIGTERM),
                        _ => Shutdown::With(Signal::SIGKILL),
                    };
                    log::info!("{}: shutting down ({how:?})", signal_name(sig));
                    self.shutdown(how);
                }
                sigs::SIGTERM => {
                    log::info!("SIGTERM: shutting down, TERM to every worker");
                    self.shutdown(Shutdown::With(Signal::SIGTERM));
                }
                sigs::SIGQUIT => {
                    log::info!("SIGQUIT: QUIT to every worker, exiting now");
                    self.shutdown(Shutdown::With(Signal::SIGQUIT));
                    self.exit_now = true;
                }
                sigs::SIGTTIN | sigs::SIGTTOU => {
                    let delta: isize = if sig == sigs::SIGTTIN { 1 } else { -1 };
                    if self.pools.len() == 1 {
                        if let Some(name) = self.pools.keys().next().cloned() {
                            let _ = self.change_count(&name, |c| c.saturating_add_signed(delta));
                        }
                    } else {
                        log::warn!(
                            "{} ignored: {} pools; use einhyrningsinsctl with --pool",
                            signal_name(sig),
                            self.pools.len()
                        );
                    }
                }
                _ => {}
            }
        }
    }

    fn reap(&mut self) {
        loop {
            match waitpid(NixPid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    let pid = pid.as_raw();
                    let how = describe(&status);
                    let Some(name) = self.pid_pool.remove(&pid) else {
                        log::debug!("reaped pid {pid} ({how}), not a worker");
                        continue;
                    };
                    let now = Instant::now();
                    if let Some(e) = self.pools.get_mut(&name) {
                        if let Some(actions) = e.pool.exited(pid, &how, now) {
                            self.execute(&name, actions);
                        }
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::ECHILD) => break,
                Err(e) => {
                    log::warn!("waitpid failed: {e}");
                    break;
                }
            }
        }
    }

    // ---- carrying out pool actions -------------------------------------------

    pub(crate) fn execute(&mut self, name: &str, actions: Vec<Action>) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Spawn {
                    worker,
                    index,
                    spec,
                    ..
                } => self
                    .spawn_queue
                    .push_back((name.to_string(), worker, index, spec)),
                Action::Signal { pid, signal } => {
                    // The pid is not reaped yet (the pool forgets workers when
                    // reaped), so it cannot have been reused.
                    if let Err(e) = signal::kill(NixPid::from_raw(pid), signal) {
                        log::debug!("pool {name}: kill({pid}, {signal}) failed: {e}");
                    }
                }
                Action::Progress {
                    upgrade,
                    message,
                    outcome,
                } => self.progress(name, upgrade, message, outcome),
                Action::Stopped => {
                    let removing = self.pools.get(name).is_some_and(|e| e.removing);
                    if self.phase == Phase::Draining || removing {
                        if removing {
                            log::info!("pool {name}: removed; its sockets are closed");
                        }
                        self.pools.remove(name);
                        self.timers_forget(name);
                        return;
                    }
                }
            }
        }
        self.dirty.insert(name.to_string());
    }

    /// Fork up to `budget` queued workers.
    fn run_spawns(&mut self, budget: usize) {
        for _ in 0..budget {
            let Some((name, worker, index, spec)) = self.spawn_queue.pop_front() else {
                return;
            };
            let wanted = self
                .pools
                .get_mut(&name)
                .is_some_and(|e| e.pool.wants_spawn(worker));
            if !wanted {
                if let Some(e) = self.pools.get_mut(&name) {
                    let actions = e.pool.spawn_dropped(Instant::now());
                    self.execute(&name, actions);
                }
                continue;
            }
            let result = self.spawn(&name, index, &spec);
            if let Ok(pid) = result {
                self.pid_pool.insert(pid, name.clone());
            }
            if let Some(e) = self.pools.get_mut(&name) {
                let actions = e.pool.spawned(worker, result, Instant::now());
                self.execute(&name, actions);
            }
        }
    }

    fn spawn(
        &mut self,
        name: &str,
        index: u32,
        spec: &crate::config::PoolConfig,
    ) -> Result<Pid, String> {
        let fds: Vec<RawFd> = self
            .pools
            .get(name)
            .map(|e| e.sockets.iter().map(AsRawFd::as_raw_fd).collect())
            .unwrap_or_default();
        // -g: a socketpair whose master end is a control connection.
        let mut pair = None;
        if spec.command_socket_as_fd {
            match std::os::unix::net::UnixStream::pair() {
                Ok((ours, theirs)) => pair = Some((ours, theirs)),
                Err(e) => return Err(format!("could not create the -g socketpair: {e}")),
            }
        }
        let notify = if spec.ack == crate::config::AckMode::Notify {
            self.worker_notify_address()
        } else {
            None
        };
        let ctx = SpawnContext {
            sockets: &fds,
            control_path: self.control.path(),
            master_pid: self.pid,
            index,
            control_fd: pair.as_ref().map(|(_, t)| t.as_raw_fd()),
            notify_socket: notify.as_deref(),
        };
        let pid = worker::spawn(spec, &ctx).map_err(|e| e.to_string())?;
        if let Some((ours, _theirs)) = pair {
            if ours.set_nonblocking(true).is_ok() {
                let stream = mio::net::UnixStream::from_std(ours);
                match self.control.adopt(self.poll.registry(), stream) {
                    Ok(id) => self.control.set_persistent(id),
                    Err(e) => log::warn!("pool {name}: could not register the -g connection: {e}"),
                }
            }
        }
        Ok(pid)
    }

    fn progress(
        &mut self,
        pool: &str,
        upgrade: UpgradeId,
        message: String,
        outcome: Option<Result<(), String>>,
    ) {
        let key = (pool.to_string(), upgrade);
        let Some(&wid) = self.waiter_of.get(&key) else {
            return;
        };
        let mut finished = false;
        if let Some(w) = self.waiters.get_mut(&wid) {
            let reply = Reply::progress(message, w.request_id.clone());
            let bytes = codec::encode(&reply, w.encoding);
            let conn = w.conn;
            if let Some(result) = outcome {
                if let Err(why) = result {
                    w.failures.push(format!("pool {pool}: {why}"));
                }
                w.remaining.remove(&key);
                finished = w.remaining.is_empty();
            }
            self.control.write(self.poll.registry(), conn, &bytes);
        }
        if finished {
            self.waiter_of.remove(&key);
            if let Some(w) = self.waiters.remove(&wid) {
                let reply = if w.failures.is_empty() {
                    Reply::new("Upgrade done", w.request_id)
                } else {
                    Reply::failure(
                        format!("Upgrade failed: {}", w.failures.join("; ")),
                        w.request_id,
                    )
                };
                let bytes = codec::encode(&reply, w.encoding);
                self.control.write(self.poll.registry(), w.conn, &bytes);
                if self.control.peer_eof(w.conn) {
                    self.control.close_after_flush(self.poll.registry(), w.conn);
                }
            }
        }
    }

    // ---- operations shared by signals and commands -------------------------

    /// Smooth/fleet upgrade of one pool or all; progress goes to `waiter` if any.
    /// Returns the pools upgraded, or an error message.
    pub(crate) fn start_upgrade(
        &mut self,
        pool: Option<&str>,
        strategy: Option<UpgradeStrategy>,
        waiter: Option<(ConnId, Option<serde_json::Value>, Encoding)>,
    ) -> Result<Vec<String>, String> {
        if self.phase != Phase::Running {
            return Err("the master is shutting down".into());
        }
        let names: Vec<String> = match pool {
            Some(p) if self.pools.contains_key(p) => vec![p.to_string()],
            Some(p) => return Err(self.unknown_pool(p)),
            None => self
                .pools
                .iter()
                .filter(|(_, e)| !e.removing)
                .map(|(n, _)| n.clone())
                .collect(),
        };
        let wid = self.next_waiter;
        self.next_waiter += 1;
        if let Some((conn, request_id, encoding)) = &waiter {
            self.waiters.insert(
                wid,
                Waiter {
                    conn: *conn,
                    request_id: request_id.clone(),
                    encoding: *encoding,
                    remaining: HashSet::new(),
                    failures: Vec::new(),
                },
            );
        }
        let now = Instant::now();
        for name in &names {
            let Some(e) = self.pools.get_mut(name) else {
                continue;
            };
            match e.pool.upgrade(strategy, None, now) {
                Ok((id, actions)) => {
                    if waiter.is_some() {
                        self.waiter_of.insert((name.clone(), id), wid);
                        if let Some(w) = self.waiters.get_mut(&wid) {
                            w.remaining.insert((name.clone(), id));
                        }
                    }
                    self.execute(name, actions);
                }
                Err(e) => log::warn!("{e}"),
            }
        }
        if let Some(w) = self.waiters.get(&wid) {
            if w.remaining.is_empty() {
                // Every upgrade finished at once (count 0, say) or none started.
                let w = self.waiters.remove(&wid);
                if let Some(w) = w {
                    let bytes =
                        codec::encode(&Reply::new("Upgrade done", w.request_id), w.encoding);
                    self.control.write(self.poll.registry(), w.conn, &bytes);
                }
            }
        }
        Ok(names)
    }

    pub(crate) fn shutdown(&mut self, how: Shutdown) {
        self.sd.stopping();
        self.phase = Phase::Draining;
        let now = Instant::now();
        let names: Vec<String> = self.pools.keys().cloned().collect();
        for name in names {
            if let Some(e) = self.pools.get_mut(&name) {
                let actions = e.pool.shutdown(how, now);
                self.execute(&name, actions);
            }
        }
    }

    pub(crate) fn change_count(
        &mut self,
        name: &str,
        f: impl FnOnce(usize) -> usize,
    ) -> Result<usize, String> {
        let Some(e) = self.pools.get_mut(name) else {
            return Err(self.unknown_pool(name));
        };
        let n = f(e.pool.count());
        let actions = e
            .pool
            .set_count(n, Instant::now())
            .map_err(|e| e.to_string())?;
        self.execute(name, actions);
        Ok(n)
    }

    pub(crate) fn signal_pools(
        &mut self,
        pool: Option<&str>,
        sig: Signal,
    ) -> Result<usize, String> {
        let names: Vec<String> = match pool {
            Some(p) if self.pools.contains_key(p) => vec![p.to_string()],
            Some(p) => return Err(self.unknown_pool(p)),
            None => self.pools.keys().cloned().collect(),
        };
        let mut n = 0;
        for name in names {
            if let Some(e) = self.pools.get_mut(&name) {
                let actions = e.pool.signal_all(sig);
                n += actions.len();
                self.execute(&name, actions);
            }
        }
        Ok(n)
    }

    pub(crate) fn unknown_pool(&self, name: &str) -> String {
        format!(
            "no pool named {name:?}; pools: {}",
            self.pools.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.phase != Phase::Running
    }

    /// Queue a reply on a connection.
    pub(crate) fn reply(&mut self, conn: ConnId, reply: &Reply, encoding: Encoding) {
        self.control
            .write(self.poll.registry(), conn, &codec::encode(reply, encoding));
    }

    /// Close a connection once its queued replies are written.
    pub(crate) fn hang_up(&mut self, conn: ConnId) {
        self.control.close_after_flush(self.poll.registry(), conn);
    }

    /// Find the pool of a worker pid.
    pub(crate) fn pool_of_pid(&self, pid: Pid) -> Option<String> {
        self.pid_pool.get(&pid).cloned()
    }

    /// Hand a worker message (ack/ping) to the pool that owns the pid.
    pub(crate) fn worker_ack(&mut self, pid: Pid) -> Result<(), String> {
        let name = self
            .pool_of_pid(pid)
            .ok_or_else(|| format!("pid {pid} is not a worker of this master"))?;
        let Some(e) = self.pools.get_mut(&name) else {
            return Err(format!("pid {pid} is not a worker of this master"));
        };
        let actions = e.pool.ack(pid, Instant::now()).map_err(|e| e.to_string())?;
        self.execute(&name, actions);
        Ok(())
    }

    fn timers_forget(&mut self, name: &str) {
        self.dirty.remove(name);
    }

    /// HUP: re-read the config (with `--config`), then roll every pool the reload
    /// did not already roll.
    fn on_hup(&mut self) {
        let sd_reload = self.sd.begin_reload();
        self.on_hup_inner();
        self.sd.end_reload(sd_reload);
    }

    fn on_hup_inner(&mut self) {
        let mut rolled = Vec::new();
        if self.config.source.is_some() {
            match self.reload("SIGHUP") {
                Ok((summary, r)) => {
                    log::info!("SIGHUP: {summary}");
                    rolled = r;
                }
                Err(e) => log::error!("SIGHUP: config not reloaded, running one unchanged: {e}"),
            }
        }
        if self.phase != Phase::Running {
            return;
        }
        log::info!("SIGHUP: smooth upgrade of every pool");
        let names: Vec<String> = self
            .pools
            .iter()
            .filter(|(n, e)| !e.removing && !rolled.contains(n))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            if let Err(e) = self.start_upgrade(Some(&name), None, None) {
                log::warn!("SIGHUP: pool {name}: {e}");
            }
            self.note_change(&name, "upgrade (SIGHUP)".into());
        }
    }

    pub(crate) fn note_change(&mut self, name: &str, what: String) {
        if let Some(e) = self.pools.get_mut(name) {
            e.last_change = Some((Instant::now(), what));
        }
    }

    /// Re-read the config file and apply the difference: new pools start,
    /// removed pools drain, count changes scale, changed pools roll, unchanged
    /// pools are not touched. Nothing is applied unless the whole new file is valid
    /// and every new address binds. Returns a summary and the pools rolled.
    pub(crate) fn reload(&mut self, trigger: &str) -> Result<(String, Vec<String>), String> {
        let sd_reload = self.sd.begin_reload();
        let result = self.reload_inner(trigger);
        self.sd.end_reload(sd_reload);
        let record = ReloadRecord {
            at: Instant::now(),
            trigger: trigger.to_string(),
            result: result
                .as_ref()
                .map(|(s, _)| s.clone())
                .map_err(Clone::clone),
        };
        self.last_reload = Some(record);
        if let Err(e) = &result {
            log::error!("reload ({trigger}) refused, configuration unchanged:\n{e}");
        }
        result
    }

    fn reload_inner(&mut self, trigger: &str) -> Result<(String, Vec<String>), String> {
        if self.phase != Phase::Running {
            return Err("the master is shutting down".into());
        }
        let Some(path) = self.config.source.clone() else {
            return Err(
                "reload needs --config (this master was started from the command line)".into(),
            );
        };
        let mut new = Config::load(&path).map_err(|e| e.to_string())?;
        // The control socket and the master's files stay as started.
        if new.control != self.config.control || new.master != self.config.master {
            log::warn!("reload: [control] and [master] changes need a restart; kept as running");
        }
        new.control = self.config.control.clone();
        new.master = self.config.master.clone();
        let d = crate::config::diff(&self.config, &new);

        // Sockets for every added or rolled pool: a running socket with the same
        // address is kept (no moment without a listener), others are bound anew;
        // all or nothing. Port-0 binds are only kept by their own pool: each one
        // is a different port.
        enum Src {
            Take(String),
            New(BoundSocket),
        }
        let rebinding: Vec<String> = d
            .added
            .iter()
            .chain(d.rolled.iter().map(|(n, _)| n))
            .cloned()
            .collect();
        let mut plans: HashMap<String, Vec<Src>> = HashMap::new();
        for name in &rebinding {
            let Some(spec) = new.pools.get(name) else {
                continue;
            };
            let mut plan = Vec::new();
            for (i, b) in spec.binds.iter().enumerate() {
                let key = b.addr_text();
                let ephemeral = matches!(b.addr, crate::bind::BindAddr::Inet { port: 0, .. });
                let owner = self.pools.iter().find(|(n, e)| {
                    (!ephemeral || *n == name) && e.sockets.iter().any(|s| s.key() == key)
                });
                match owner {
                    Some((owner, _)) => plan.push(Src::Take(owner.clone())),
                    None => {
                        let s = bind::bind(b, bind::DEFAULT_BACKLOG).map_err(|e| {
                            format!(
                                "{}: pools.{name}.binds[{i}]: {e}",
                                new.locate(&format!("pools.{name}.binds[{i}]"))
                            )
                        })?;
                        plan.push(Src::New(s));
                    }
                }
            }
            plans.insert(name.clone(), plan);
        }
        // Past this point nothing fails.
        let mut sockets_for: HashMap<String, Vec<BoundSocket>> = HashMap::new();
        for name in &rebinding {
            let Some(spec) = new.pools.get(name) else {
                continue;
            };
            let mut sockets = Vec::new();
            for (b, src) in spec
                .binds
                .iter()
                .zip(plans.remove(name).unwrap_or_default())
            {
                let sock = match src {
                    Src::New(s) => Some(s),
                    Src::Take(owner) => self.pools.get_mut(&owner).and_then(|e| {
                        let pos = e.sockets.iter().position(|s| s.key() == b.addr_text())?;
                        Some(e.sockets.remove(pos))
                    }),
                };
                match sock {
                    Some(s) => sockets.push(s),
                    None => log::error!("reload: pool {name}: lost the socket for {}", b.raw),
                }
            }
            sockets_for.insert(name.clone(), sockets);
        }
        let now = Instant::now();
        let mut parts = Vec::new();
        for name in &d.removed {
            if let Some(e) = self.pools.get_mut(name) {
                e.removing = true;
                let actions = e.pool.shutdown(Shutdown::Graceful, now);
                self.execute(name, actions);
                self.note_change(name, format!("removed ({trigger})"));
            }
        }
        let mut rolled = Vec::new();
        for name in &rebinding {
            let Some(spec) = new.pools.get(name) else {
                continue;
            };
            let sockets = sockets_for.remove(name).unwrap_or_default();
            let spec = Arc::new(spec.clone());
            if let Some(e) = self.pools.get_mut(name) {
                // Rolled: new workers get the new spec and sockets; old ones keep
                // the sockets they inherited until they drain.
                e.sockets = sockets;
                let mut actions = e.pool.set_count(spec.count, now).unwrap_or_default();
                match e.pool.upgrade(None, Some(spec), now) {
                    Ok((_, a)) => actions.extend(a),
                    Err(err) => log::warn!("reload: {err}"),
                }
                self.execute(name, actions);
                let keys = d
                    .rolled
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, k)| k.join(", "))
                    .unwrap_or_default();
                self.note_change(name, format!("rolled ({trigger}: {keys} changed)"));
                rolled.push(name.clone());
            } else {
                let mut pool = Pool::new(spec);
                let actions = pool.start(now);
                self.pools
                    .insert(name.clone(), PoolEntry::new(pool, sockets));
                self.execute(name, actions);
                self.note_change(name, format!("added ({trigger})"));
            }
        }
        for (name, from, to) in &d.scaled {
            if rolled.contains(name) {
                continue;
            }
            if let Some(spec) = new.pools.get(name) {
                let spec = Arc::new(spec.clone());
                if let Some(e) = self.pools.get_mut(name) {
                    let mut actions = e.pool.retune(spec, now);
                    actions.extend(e.pool.set_count(*to, now).unwrap_or_default());
                    self.execute(name, actions);
                    self.note_change(name, format!("scaled {from} -> {to} ({trigger})"));
                }
            }
        }
        for name in &d.retuned {
            if let (Some(spec), Some(e)) = (new.pools.get(name), self.pools.get_mut(name)) {
                let actions = e.pool.retune(Arc::new(spec.clone()), now);
                self.execute(name, actions);
                self.note_change(name, format!("settings updated in place ({trigger})"));
            }
        }
        if new.log != self.config.log {
            log::set_max_level(new.log.level);
        }
        if !d.added.is_empty() {
            parts.push(format!("added {}", d.added.join(", ")));
        }
        if !d.removed.is_empty() {
            parts.push(format!("removed {}", d.removed.join(", ")));
        }
        for (n, keys) in &d.rolled {
            parts.push(format!("rolling {n} ({} changed)", keys.join(", ")));
        }
        for (n, a, b) in &d.scaled {
            parts.push(format!("scaled {n} {a} -> {b}"));
        }
        if !d.retuned.is_empty() {
            parts.push(format!("retuned {}", d.retuned.join(", ")));
        }
        if !d.unchanged.is_empty() {
            parts.push(format!("unchanged {}", d.unchanged.join(", ")));
        }
        self.config = new;
        for name in &d.removed {
            self.debounce.cancel(&WatchOwner::Pool(name.clone()));
        }
        self.watch_config();
        let summary = format!(
            "Reloaded {}: {}",
            path.display(),
            if parts.is_empty() {
                "nothing changed".into()
            } else {
                parts.join("; ")
            }
        );
        log::info!("{summary}");
        Ok((summary, rolled))
    }

    /// After a waiter's client disconnected, stop streaming to it.
    pub(crate) fn forget_conn(&mut self, conn: ConnId) {
        let gone: Vec<u64> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.conn == conn)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(w) = self.waiters.remove(&id) {
                for key in w.remaining {
                    self.waiter_of.remove(&key);
                }
            }
        }
    }

    pub(crate) fn has_waiter(&self, conn: ConnId) -> bool {
        self.waiters.values().any(|w| w.conn == conn)
    }

    fn on_new_conn(&mut self, id: ConnId) {
        let (uid, _) = self.control.peer(id);
        let me = nix::unistd::geteuid().as_raw();
        let allowed = match uid {
            Some(u) => u == me || u == 0 || self.config.control.allow_uids.contains(&u),
            None => false,
        };
        if !allowed {
            log::warn!(
                "control: refused a connection from uid {} (allowed: {me}, root{})",
                uid.map_or("unknown".into(), |u| u.to_string()),
                if self.config.control.allow_uids.is_empty() {
                    String::new()
                } else {
                    format!(", {:?}", self.config.control.allow_uids)
                }
            );
            let reply = Reply::failure(
                "permission denied: your uid may not control this master",
                None,
            );
            self.control.write(
                self.poll.registry(),
                id,
                &codec::encode(&reply, Encoding::Json),
            );
            self.control.close_after_flush(self.poll.registry(), id);
        }
    }

    fn on_conn_readable(&mut self, id: ConnId) {
        let Some((inputs, eof)) = self.control.read(self.poll.registry(), id) else {
            self.forget_conn(id);
            return;
        };
        for input in inputs {
            if !self.control.is_open(id) {
                break;
            }
            match input {
                Input::Line(line) => self.handle_line(id, &line),
                Input::TooLong => {
                    log::warn!(
                        "control: request line longer than {} bytes; closing the connection",
                        codec::MAX_LINE
                    );
                    let reply = Reply::failure(
                        format!(
                            "request line longer than {} bytes; closing",
                            codec::MAX_LINE
                        ),
                        None,
                    );
                    self.control.write(
                        self.poll.registry(),
                        id,
                        &codec::encode(&reply, Encoding::Json),
                    );
                    self.control.close_after_flush(self.poll.registry(), id);
                }
            }
        }
        if eof && !self.has_waiter(id) {
            self.control.close_after_flush(self.poll.registry(), id);
        }
        if !self.control.is_open(id) {
            self.forget_conn(id);
        }
    }

    pub(crate) fn registry(&self) -> &mio::Registry {
        self.poll.registry()
    }

    pub(crate) fn rolling_uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        if let Some(p) = &self.pidfile {
            if std::fs::read_to_string(p)
                .ok()
                .is_some_and(|s| s.trim() == self.pid.to_string())
            {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// `exited with status 1`, `killed by SIGKILL`, ...
fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, core) => {
            format!(
                "killed by {}{}",
                sig.as_str(),
                if *core { " (core dumped)" } else { "" }
            )
        }
        other => format!("{other:?}"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    Signal::try_from(sig).map_or("signal", |s| s.as_str())
}

fn take_lock(path: &Path) -> Result<File, MasterError> {
    let err = |op| {
        let path = path.to_path_buf();
        move |source| MasterError::File { op, path, source }
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(err("open lockfile"))?;
    match nix::fcntl::Flock::lock(
        f.try_clone().map_err(err("open lockfile"))?,
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    ) {
        Ok(locked) => {
            // Keep the lock for the master's life: leak the guard into the File we
            // keep (the lock belongs to the open file description).
            std::mem::forget(locked);
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut s = String::new();
            let _ = f.read_to_string(&mut s);
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

fn write_pidfile(path: &Path) -> Result<(), MasterError> {
    if let Ok(s) = std::fs::read_to_string(path) {
        if let Ok(pid) = s.trim().parse::<i32>() {
            let alive = pid > 0
                && pid != std::process::id() as i32
                && signal::kill(NixPid::from_raw(pid), None).is_ok();
            if alive {
                return Err(MasterError::PidfileTaken {
                    path: path.to_path_buf(),
                    pid,
                });
            }
            log::info!(
                "replacing stale pidfile {} (pid {pid} is gone)",
                path.display()
            );
        }
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        writeln!(f, "{}", std::process::id())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        MasterError::File {
            op: "write pidfile",
            path: path.to_path_buf(),
            source,
        }
    })
}

fn set_process_name(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated buffer of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
}
