//! The master process: one single-threaded mio loop that owns the listening
//! sockets and every pool, and turns OS events into pool events.
//!
//! Sources on the loop ([`token::Source`]): the signal pipe (signal-hook-mio),
//! the control listener and its connections, the workers' notify socket, the file
//! watcher's waker, and the deadline queue (the poll timeout). Nothing polls: with
//! no deadline armed the loop sleeps until a signal, a client or a file change.
//!
//! Each pool is a pure state machine ([`crate::pool::Pool`]); this module feeds it
//! events and carries out its actions (fork/exec, kill), routes upgrade progress to
//! the clients that asked, and reaps children. `Master` and its fields are private
//! to this module: every other part of the crate is given what it needs as
//! arguments and hands back values (docs/architecture.md, the dependency rule).
//!
//! The submodules are the master's jobs, one file each:
//! - `children`: reaping, carrying out pool actions, the spawn queue;
//! - `signals`: the master's signals and the shutdown phases (`phase`, pure);
//! - `clients`: control connections; `commands`: what each command does;
//!   `status`: the `status` table and the `state` dump;
//! - `upgrades`: starting upgrades and streaming their progress (`waiters`, pure);
//! - `reload`: re-reading the config file and applying the difference;
//! - `watching`: the file watcher's wake-ups and debounced decisions;
//! - `notify`: the workers' notify socket; `service`: the master's own sd_notify;
//! - `reexec`: the master upgrading itself in place (state out, exec, state in);
//! - `releases`: what each version ran (for `rollback`); `events`: the event log;
//! - `metrics`: the `/metrics` listener, the scrape snapshot and `stats`;
//! - `startup`: lockfile, pidfile, process name; `error`: typed errors;
//! - `output`: workers' captured stdout/stderr, `logs`, `reopen_logs`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll};
use signal_hook::consts::signal as sigs;
use signal_hook_mio::v1_0::Signals;

use crate::bind::{self, BoundSocket};
use crate::config::{Config, PoolConfig};
use crate::control::protocol::Encoding;
use crate::control::server::{ConnId, ControlServer};
use crate::pool::{Pid, Pool, WorkerId};
use crate::systemd::service::{Notifier, Supervisor};
use crate::systemd::worker_notify::WorkerNotify;
use crate::timer::TimerQueue;
use crate::watch::{Debouncer, FileWatcher};

mod children;
mod clients;
mod commands;
mod error;
mod events;
mod identities;
mod metrics;
mod notify;
mod output;
mod phase;
mod pools;
mod reexec;
mod releases;
mod reload;
mod service;
mod signals;
mod startup;
mod status;
mod token;
mod upgrades;
mod waiters;
mod watching;

pub use error::MasterError;
use error::RuntimeError;
use phase::Phase;
pub(crate) use reexec::{check_main, resume, take_resume_fd, Launch, CHECK_ARG};
use token::Source;
use waiters::Waiters;

/// Forks per loop turn: between batches the loop serves acks and clients, so a
/// pool of thousands starts without starving the control socket.
const SPAWN_BATCH: usize = 64;

/// The signals the master handles (also blocked across a re-exec).
const HANDLED_SIGNALS: [i32; 9] = [
    sigs::SIGHUP,
    sigs::SIGINT,
    sigs::SIGTERM,
    sigs::SIGQUIT,
    sigs::SIGUSR2,
    sigs::SIGTTIN,
    sigs::SIGTTOU,
    sigs::SIGCHLD,
    sigs::SIGUSR1,
];

/// Who wanted a watched file: a change rolls that pool, or reloads the config.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum WatchOwner {
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
    /// Sample the RSS of a pool's workers (`max_rss`).
    RssSample(String),
    /// The new binary's check before a re-exec took too long.
    ReexecCheck,
    /// A scrape connection's idle deadline (armed only while one is open).
    MetricsIdle,
}

/// A worker a pool asked for, waiting for its fork.
struct PendingSpawn {
    pool: String,
    worker: WorkerId,
    index: u32,
    version: u64,
    spec: Arc<PoolConfig>,
}

/// One pool and what the master keeps beside it.
struct PoolEntry {
    pool: Pool,
    sockets: Vec<BoundSocket>,
    /// Removed from the config: draining, dropped (sockets closed) once empty.
    removing: bool,
    /// Last roll, reload or scale of this pool: when, and what and why.
    last_change: Option<(Instant, String)>,
    /// During a roll that changed the binds: the previous sockets, in their
    /// order, for the version a failed roll falls back to (see `settle_sockets`).
    fallback: Option<Vec<BoundSocket>>,
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
struct ReloadRecord {
    at: Instant,
    trigger: String,
    result: Result<String, String>,
}

/// `worker:ack` / `worker:ping` messages refused because of who sent them.
#[derive(Debug, Default)]
struct Rejected {
    count: u64,
    /// The last few: when, what, for which pid, why.
    recent: VecDeque<(Instant, &'static str, Pid, String)>,
}

impl Rejected {
    fn note(&mut self, what: &'static str, pid: Pid, why: String) {
        self.count += 1;
        if self.recent.len() == 8 {
            self.recent.pop_front();
        }
        self.recent.push_back((Instant::now(), what, pid, why));
    }
}

/// Where a streamed reply goes: the connection, the request's id and encoding.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct ReplyTo {
    conn: ConnId,
    request_id: Option<serde_json::Value>,
    encoding: Encoding,
}

/// Take the sockets and files `config` asks for, then run the loop until the
/// master exits; returns the exit status. (The crate's only way into the master.)
/// `launch` is how this process was started: what `reexec` runs again.
pub fn run(config: Config, launch: Launch) -> Result<i32, MasterError> {
    Master::new(config, launch)?.run()
}

struct Master {
    config: Config,
    pools: BTreeMap<String, PoolEntry>,
    /// Which pool each live worker pid belongs to (forgotten when reaped).
    pid_pool: HashMap<Pid, String>,
    poll: Poll,
    signals: Signals,
    control: ControlServer,
    timers: TimerQueue<Deadline>,
    watcher: Option<FileWatcher<WatchOwner>>,
    debounce: Debouncer<WatchOwner>,
    /// Watched files a writer still has open: their change waits for the close
    /// (the path, and whether the log said so already).
    held: HashMap<WatchOwner, (std::path::PathBuf, bool)>,
    started: Instant,
    pid: Pid,
    phase: Phase,
    /// Clients waiting for the end of their upgrades.
    waiters: Waiters<ReplyTo>,
    /// Recent events and the clients following them.
    events: events::EventLog,
    /// Spawns waiting for their fork (see [`SPAWN_BATCH`]).
    spawn_queue: VecDeque<PendingSpawn>,
    /// Pools whose deadlines may have changed since the last loop turn.
    dirty: HashSet<String>,
    last_reload: Option<ReloadRecord>,
    /// Worker messages refused because of their sender.
    rejected: Rejected,
    /// What each version of each pool ran (for `rollback`).
    releases: releases::Releases,
    /// Lockfile and pidfile, held for the master's life.
    _files: startup::Files,
    /// The master's own systemd notifications (src/systemd/service.rs): the
    /// decisions, the socket they go to, and whether a failure was reported.
    sd: Supervisor,
    sd_link: Option<Notifier>,
    sd_warned: bool,
    /// `ack = "notify"`: the workers' NOTIFY_SOCKET, bound on first use.
    notify_ack: Option<WorkerNotify>,
    /// How this master was started (what `reexec` runs again).
    launch: Launch,
    /// A re-exec waiting for the new binary's check.
    reexec: Option<reexec::Job>,
    /// After a re-exec: the client that asked for it, answered once resumed.
    resumed_for: Option<ReplyTo>,
    /// The pools' users, groups and limits, resolved.
    identities: identities::Identities,
    /// What happened since the start, for `/metrics` (src/metrics/).
    counters: crate::metrics::Counters,
    /// `[metrics] listen`: the scrape listener and its connections.
    metrics: Option<crate::metrics::http::MetricsServer>,
    /// Captured worker output: pipes, files, rings, `logs -f` followers.
    capture: output::Capture,
}

impl Master {
    /// Take the lockfile, the control socket, every pool's sockets and the
    /// pidfile; register signal handlers. No worker is started yet.
    fn new(config: Config, launch: Launch) -> Result<Master, MasterError> {
        startup::raise_nofile();
        let lock = startup::Files::lock(config.master.lockfile.as_deref())?;
        let identities = identities::Identities::load(&config).map_err(MasterError::Identity)?;
        let mut control = ControlServer::bind(&config.control.socket, config.control.mode)?;
        identities::grant_control(&config, &identities, control.path())?;
        let mut pools = BTreeMap::new();
        // systemd socket activation: inherited fds first (src/systemd/activation.rs).
        let mut inherited = crate::systemd::activation::Inherited::from_env();
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
        let files = lock.with_pidfile(config.master.pidfile.as_deref())?;
        let (sd, sd_link) = crate::systemd::service::from_env();
        let poll = Poll::new().map_err(MasterError::Poll)?;
        let mut signals = Signals::new(HANDLED_SIGNALS).map_err(MasterError::Poll)?;
        poll.registry()
            .register(
                &mut signals,
                Source::Signals.token(),
                mio::Interest::READABLE,
            )
            .map_err(MasterError::Poll)?;
        control
            .register(poll.registry(), Source::Control.token())
            .map_err(MasterError::Poll)?;
        let metrics = Master::bind_metrics(&config, &poll).map_err(MasterError::Metrics)?;
        if let Some(name) = &config.master.command_name {
            startup::set_process_name(name);
        }
        if config.master.subreaper {
            startup::become_subreaper();
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
            held: HashMap::new(),
            started: Instant::now(),
            pid: std::process::id() as Pid,
            phase: Phase::default(),
            waiters: Waiters::default(),
            events: events::EventLog::default(),
            dirty: HashSet::new(),
            spawn_queue: VecDeque::new(),
            last_reload: None,
            rejected: Rejected::default(),
            releases: releases::Releases::default(),
            _files: files,
            sd,
            sd_link,
            sd_warned: false,
            notify_ack: None,
            launch,
            reexec: None,
            resumed_for: None,
            identities,
            counters: crate::metrics::Counters::default(),
            metrics,
            capture: output::Capture::default(),
        })
    }

    /// Run until every pool has stopped after a shutdown; returns the exit status.
    fn run(mut self) -> Result<i32, MasterError> {
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
        self.run_loop()
    }

    /// The loop, until every pool has stopped after a shutdown.
    fn run_loop(mut self) -> Result<i32, MasterError> {
        let mut events = Events::with_capacity(256);
        loop {
            self.rearm();
            self.sd_turn();
            if self.phase.may_exit(self.pools.len()) {
                break;
            }
            let timeout = if self.spawn_queue.is_empty()
                && !self.control.has_ready()
                && !self.capture.has_ready()
            {
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
                match Source::of(ev.token()) {
                    Some(Source::Signals) => self.on_signals(),
                    Some(Source::Watch) => self.on_watch_events(),
                    Some(Source::Control) => self.accept_clients(),
                    Some(Source::WorkerNotify) => self.on_worker_notify(),
                    Some(Source::Metrics) => self.accept_scrapers(),
                    Some(Source::Scrape(id)) => self.on_scrape_event(id),
                    Some(Source::Conn(id)) => self.on_conn_event(
                        id,
                        ev.is_readable() || ev.is_read_closed(),
                        ev.is_writable(),
                    ),
                    Some(Source::Output(id)) => self.on_output(id),
                    None => {}
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
                    Deadline::RssSample(name) => self.sample_rss(&name, now),
                    Deadline::AcceptRetry => self.accept_clients(),
                    Deadline::ReexecCheck => self.reexec_check_timeout(),
                    Deadline::MetricsIdle => self.metrics_due(now),
                }
            }
            self.serve_clients();
            self.serve_output();
            self.run_spawns(SPAWN_BATCH);
        }
        log::info!("einhyrningsins (pid {}) exiting", self.pid);
        Ok(0)
    }

    /// Re-arm the loop's wake-up for pools whose deadlines may have moved.
    fn rearm(&mut self) {
        for name in std::mem::take(&mut self.dirty) {
            let Some(e) = self.pools.get(&name) else {
                continue;
            };
            // Only pools that set max_rss are ever sampled.
            if e.pool.spec().max_rss.is_some() {
                let at = crate::pool::later(Instant::now(), e.pool.spec().max_rss_interval);
                self.timers.arm(Deadline::RssSample(name.clone()), at);
            }
            if let Some(at) = e.pool.next_deadline() {
                self.timers.arm(Deadline::Pool(name), at);
            }
        }
    }

    fn is_shutting_down(&self) -> bool {
        !self.phase.is_running()
    }

    fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether something still streams to `conn` (an upgrade it waits for,
    /// the events it follows, the re-exec it asked for): it stays open.
    fn streams_to(&self, conn: ConnId) -> bool {
        self.waiters.any(|w| w.conn == conn)
            || self.follows(conn)
            || self.follows_logs(conn)
            || self.reexec_requested_by(conn)
    }

    /// Find the pool of a worker pid.
    fn pool_of_pid(&self, pid: Pid) -> Option<String> {
        self.pid_pool.get(&pid).cloned()
    }

    /// The pool names, for messages.
    fn pool_list(&self) -> String {
        self.pools.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    fn unknown_pool(&self, name: &str) -> RuntimeError {
        RuntimeError::UnknownPool {
            name: name.to_string(),
            pools: self.pool_list(),
        }
    }

    /// The pools a command addresses: the one named, or every pool still in the
    /// config (`all`: also those draining after a removal).
    fn addressed(&self, pool: Option<&str>, all: bool) -> Result<Vec<String>, RuntimeError> {
        match pool {
            Some(p) if self.pools.contains_key(p) => Ok(vec![p.to_string()]),
            Some(p) => Err(self.unknown_pool(p)),
            None => Ok(self
                .pools
                .iter()
                .filter(|(_, e)| all || !e.removing)
                .map(|(n, _)| n.clone())
                .collect()),
        }
    }
}
