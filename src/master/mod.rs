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

mod reload;
mod watching;

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
    /// Accepting control clients failed (out of fds): try again.
    AcceptRetry,
    /// systemd notifications (STATUS rate limit, WATCHDOG): handled by
    /// `sd_turn`, which runs every loop turn.
    SdNotify,
}

/// A worker a pool asked for, waiting for its fork.
struct PendingSpawn {
    pool: String,
    worker: crate::pool::WorkerId,
    index: u32,
    spec: Arc<crate::config::PoolConfig>,
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
    /// During a roll that changed the binds: the previous sockets, in their
    /// order, for the version a failed roll falls back to (see `settle_sockets`).
    pub(crate) fallback: Option<Vec<BoundSocket>>,
}

impl PoolEntry {
    fn new(pool: Pool, sockets: Vec<BoundSocket>) -> PoolEntry {
        PoolEntry {
            pool,
            sockets,
            removing: false,
            last_change: None,
            fallback: None,
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
    /// Spawns waiting for their fork (see [`SPAWN_BATCH`]).
    spawn_queue: std::collections::VecDeque<PendingSpawn>,
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
                    CONTROL => self.accept_clients(),
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
                    Deadline::AcceptRetry => self.accept_clients(),
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

    fn accept_clients(&mut self) {
        let (ids, failed) = self.control.accept(self.poll.registry());
        for id in ids {
            self.on_new_conn(id);
        }
        if failed {
            self.timers.arm(
                Deadline::AcceptRetry,
                Instant::now() + Duration::from_millis(250),
            );
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
        for action in actions {
            match action {
                Action::Spawn {
                    worker,
                    index,
                    spec,
                    ..
                } => self.spawn_queue.push_back(PendingSpawn {
                    pool: name.to_string(),
                    worker,
                    index,
                    spec,
                }),
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
                } => {
                    let finished = outcome.as_ref().map(Result::is_ok);
                    self.progress(name, upgrade, message, outcome);
                    if let Some(ok) = finished {
                        self.settle_sockets(name, ok);
                    }
                }
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

    /// An upgrade of `name` ended. If it was a roll that changed the binds, the
    /// previous sockets were kept aside: dropped on success (addresses no longer
    /// configured close now), put back on failure, since the pool fell back to
    /// the version that expects them (its EINHORN_FD_n).
    fn settle_sockets(&mut self, name: &str, ok: bool) {
        let Some(e) = self.pools.get_mut(name) else {
            return;
        };
        if e.pool.upgrading().is_some() {
            return; // superseded: the roll goes on
        }
        let Some(fallback) = e.fallback.take() else {
            return;
        };
        if ok {
            return;
        }
        let mut current = std::mem::take(&mut e.sockets);
        // For an address in both sets keep the original (it owns a unix socket's
        // path) and drop the duplicate.
        e.sockets = fallback
            .into_iter()
            .map(
                |old| match current.iter().position(|s| s.key() == old.key()) {
                    Some(pos) => current.remove(pos),
                    None => old,
                },
            )
            .collect();
        let binds: Vec<&str> = e.sockets.iter().map(BoundSocket::local_addr).collect();
        log::warn!(
            "pool {name}: the roll failed; back to the previous binds [{}]",
            binds.join(", ")
        );
    }

    /// Fork up to `budget` queued workers.
    fn run_spawns(&mut self, budget: usize) {
        for _ in 0..budget {
            let Some(PendingSpawn {
                pool: name,
                worker,
                index,
                spec,
            }) = self.spawn_queue.pop_front()
            else {
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
                self.waiter_of.remove(&key);
                finished = w.remaining.is_empty();
            }
            self.control.write(self.poll.registry(), conn, &bytes);
        }
        if finished {
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
        // Every upgrade is registered with the waiter before any is carried out: a
        // pool that finishes at once (count 0) must not end the wait for the others.
        let mut started = Vec::new();
        let mut refused = Vec::new();
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
                    started.push((name, actions));
                }
                Err(e) => {
                    log::warn!("{e}");
                    refused.push(e.to_string());
                }
            }
        }
        if started.is_empty() && !refused.is_empty() {
            self.waiters.remove(&wid);
            return Err(refused.join("; "));
        }
        if let Some(w) = self.waiters.get_mut(&wid) {
            w.failures.extend(refused);
        }
        for (name, actions) in started {
            self.execute(name, actions);
        }
        if let Some(w) = self.waiters.get(&wid) {
            if w.remaining.is_empty() {
                // Every upgrade finished at once (count 0, say) or none started.
                let w = self.waiters.remove(&wid);
                if let Some(w) = w {
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

    /// The datagrams waiting on the workers' notify socket (bounded per turn).
    pub(crate) fn worker_notify_batch(&mut self) -> Vec<(Pid, Vec<crate::notify_ack::Msg>)> {
        match self.notify_ack.as_mut() {
            Some(n) => n.recv_all(self.poll.registry(), crate::notify_ack::PER_TURN),
            None => Vec::new(),
        }
    }

    pub(crate) fn uptime(&self) -> Duration {
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
