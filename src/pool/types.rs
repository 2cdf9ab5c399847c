//! The pool's vocabulary: workers and their states, why they stop, what the
//! pool asks the master to do, and its errors.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{Pid, UpgradeId, WorkerId};
use crate::config::{PoolConfig, UpgradeStrategy};

/// Why the master asked a worker to stop (or killed it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StopReason {
    /// Replaced by a newer version during an upgrade.
    Retired,
    /// The pool has more workers than `count`.
    ScaledDown,
    /// The master or the pool is shutting down.
    Shutdown,
    /// Manual ack mode: no ack within `ack_timeout`; killed.
    AckTimeout,
    /// Notify ack mode: no WATCHDOG=1 within the pool's `watchdog`; killed.
    Watchdog,
    /// The worker said STOPPING=1 on the notify socket.
    WorkerStopping,
    /// New-version worker stopped because its upgrade was abandoned or superseded.
    Abandoned,
    /// Replaced because it grew too old or too large (`max_age`, `max_rss`);
    /// its successor acked first.
    Recycled,
    /// Einhorn-protocol worker that sent no `worker:ping` within
    /// `heartbeat_timeout`; killed.
    Heartbeat,
    /// A canary retired by a rollback, after an old-version worker acked in
    /// its place.
    RolledBack,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Retired => "retired",
            StopReason::ScaledDown => "scaled down",
            StopReason::Shutdown => "shutdown",
            StopReason::AckTimeout => "ack timeout",
            StopReason::Abandoned => "upgrade abandoned",
            StopReason::Watchdog => "watchdog timeout",
            StopReason::WorkerStopping => "worker said STOPPING=1",
            StopReason::Recycled => "recycled",
            StopReason::Heartbeat => "heartbeat timeout",
            StopReason::RolledBack => "rolled back",
        }
    }
}

/// Where a worker is in its life. Each state carries what is valid in it.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerState {
    /// Spawn requested, pid not known yet.
    Spawning,
    /// Running, not yet ready. `deadline`: timer mode — acked then; manual mode —
    /// killed then.
    Unacked {
        deadline: Instant,
    },
    Acked {
        at: Instant,
    },
    /// Stop signal sent; SIGKILL at `kill_at` if still alive.
    Draining {
        since: Instant,
        kill_at: Option<Instant>,
        reason: StopReason,
    },
}

#[derive(Debug, Clone)]
pub struct Worker {
    pub id: WorkerId,
    pub pid: Option<Pid>,
    /// EINHORN_CHILD_INDEX: unique among this pool's live workers.
    pub index: u32,
    pub version: u64,
    pub spec: Arc<PoolConfig>,
    pub spawned_at: Instant,
    pub state: WorkerState,
    pub acked_at: Option<Instant>,
    /// Signals sent to it by the master, in order.
    pub signals: Vec<Signal>,
    /// Last `worker:ping`: when, and the request_id it carried.
    pub last_ping: Option<(Instant, Option<String>)>,
    /// Last STATUS= the worker sent on the notify socket (`ack = "notify"`).
    pub notify_status: Option<String>,
    /// Notify mode with `watchdog`: killed if no WATCHDOG=1 by then.
    pub watchdog_at: Option<Instant>,
    /// `heartbeat_timeout`: killed if no `worker:ping` by then.
    pub heartbeat_at: Option<Instant>,
    /// `max_age`: due for recycling then.
    pub recycle_at: Option<Instant>,
    /// Marked for replacement (too old or too large): its successor is being
    /// started; it drains once that one acked.
    pub recycle: Option<RecycleReason>,
    /// How many workers of its slot died in a row before acking when it
    /// was started (0: a fresh slot); its own death before ack makes the
    /// slot wait `backoff(respawn_delay, streak + 1)`.
    pub streak: u32,
}

/// Why a worker is being replaced although it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RecycleReason {
    /// Older than the pool's `max_age` (plus its jitter).
    Age,
    /// Its RSS (bytes) exceeded the pool's `max_rss`.
    Rss(u64),
}

impl RecycleReason {
    pub fn describe(self) -> String {
        match self {
            RecycleReason::Age => "max_age reached".into(),
            RecycleReason::Rss(b) => format!("RSS {} MiB over max_rss", b >> 20),
        }
    }
}

impl Worker {
    pub fn is_acked(&self) -> bool {
        matches!(self.state, WorkerState::Acked { .. })
    }
    pub fn is_draining(&self) -> bool {
        matches!(self.state, WorkerState::Draining { .. })
    }
}

/// What the master must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Fork/exec a worker; report the result with [`Pool::spawned`].
    Spawn {
        worker: WorkerId,
        index: u32,
        version: u64,
        spec: Arc<PoolConfig>,
    },
    /// Signal a worker; `group`: its whole process group (the worker's pid
    /// is the group's id).
    Signal {
        pid: Pid,
        signal: Signal,
        group: bool,
    },
    /// Upgrade progress for whoever asked; `outcome` is set on the final message.
    Progress {
        upgrade: UpgradeId,
        message: String,
        outcome: Option<Result<(), String>>,
    },
    /// The pool was shut down and its last worker is gone.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Each worker gets its pool's `stop_signal` (INT, USR2, `die`).
    Graceful,
    /// Each worker gets this signal (TERM, QUIT, `die SIG`).
    With(Signal),
}

impl Shutdown {
    /// For the log: `each worker's stop signal`, `SIGTERM to every worker`.
    pub fn describe(self) -> String {
        match self {
            Shutdown::Graceful => "each worker gets its stop signal".into(),
            Shutdown::With(s) => format!("{} to every worker", s.as_str()),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Upgrade {
    pub(super) id: UpgradeId,
    pub(super) strategy: UpgradeStrategy,
    pub(super) failures: u32,
    /// The version (and its spec) to fall back to if this upgrade fails.
    pub(super) from: (u64, Arc<PoolConfig>),
    pub(super) started: Instant,
    /// A canary upgrade: how many new workers, and its hold.
    pub(super) canary: Option<Canary>,
    /// This upgrade goes back to an earlier version (a rollback).
    pub(super) rollback: bool,
    /// A canary's rollback: it went back to what was already running, so
    /// what `rollback` after a finished upgrade returns to does not change.
    pub(super) keeps_previous: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Canary {
    pub(super) n: usize,
    /// Promote automatically after holding healthy this long.
    pub(super) hold: Option<Duration>,
    /// When all canaries acked and the pool began holding.
    pub(super) holding_since: Option<Instant>,
}

/// A canary as `status` and `state` show it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CanaryInfo {
    pub upgrade: UpgradeId,
    /// The canaries' version (workers of any other version are the old one).
    pub version: u64,
    /// The version it rolls back to.
    pub base: u64,
    pub n: usize,
    pub started: Instant,
    pub holding_since: Option<Instant>,
    pub hold: Option<Duration>,
}

/// How the last upgrade of this pool ended, for `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpgradeOutcome {
    pub id: UpgradeId,
    pub version: u64,
    pub at: Instant,
    pub result: Result<(), String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TimerKey {
    Deadline(WorkerId),
    Respawn,
    /// `ack = "notify"` with `watchdog`: the worker's WATCHDOG=1 deadline.
    Watchdog(WorkerId),
    /// `heartbeat_timeout`: the worker's next `worker:ping` deadline.
    Heartbeat(WorkerId),
    /// `max_age`: the worker is due for recycling.
    Age(WorkerId),
    /// A holding canary's `canary_hold` is over: promote it.
    CanaryHold,
}

#[derive(Debug, Default, Clone)]
pub(super) struct Bucket {
    pub(super) unacked: BTreeSet<(u32, WorkerId)>,
    pub(super) acked: BTreeSet<(u32, WorkerId)>,
}

impl Bucket {
    pub(super) fn len(&self) -> usize {
        self.unacked.len() + self.acked.len()
    }
}

/// Why a spawn failed, as far as the pool is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpawnError {
    /// The worker's program or settings are at fault (missing, not
    /// executable, bad cwd): counted as a failure of its version.
    Program(String),
    /// The supervisor could not fork or set up the worker (out of file
    /// descriptors or processes, out of memory): not the worker's fault, so
    /// not counted; retried after [`MASTER_RETRY`].
    Resources(String),
}

/// How long the pool waits before retrying a spawn the master itself failed.
pub const MASTER_RETRY: Duration = Duration::from_secs(1);

/// Errors from commands and worker messages addressed to a pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("pid {pid} is not a worker of pool {pool}")]
    NotAWorker { pool: String, pid: Pid },
    #[error("pool {pool} is shutting down")]
    ShuttingDown { pool: String },
    #[error("pool {pool} has no canary to promote or roll back")]
    NoCanary { pool: String },
    #[error(
        "pool {pool}: nothing to roll back to (no upgrade has finished since the master started)"
    )]
    NothingToRollBack { pool: String },
    #[error("pool {pool}: a canary of {n} needs at least {} workers (count is {count})", n + 1)]
    BadCanary {
        pool: String,
        n: usize,
        count: usize,
    },
}
