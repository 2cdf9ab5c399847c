//! What happened in a pool, as values: the pool records [`PoolEvent`]s instead
//! of logging, and the master turns each one into a log line (with the pool's
//! name and the event's level), a line on the `events` stream and metrics. The
//! state machine thus stays free of I/O, and tests can assert on events.

use std::fmt;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::{Pid, StopReason, UpgradeId};

/// How severe an event is, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// One thing that happened to a pool or one of its workers.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolEvent {
    /// A worker process was started.
    Spawned {
        pid: Pid,
        index: u32,
        version: u64,
    },
    /// The master could not start a worker (the program is missing, fds ran
    /// out, ...).
    SpawnFailed {
        index: u32,
        version: u64,
        error: String,
        /// The master's own failure (fds, processes): not counted against
        /// the worker, retried shortly.
        master_side: bool,
    },
    /// A worker is ready (`after`: since it was spawned).
    Acked {
        pid: Pid,
        index: u32,
        version: u64,
        after: Duration,
    },
    /// An explicit ack in a timer-acked pool (einhorn ignores it too).
    AckIgnored {
        pid: Pid,
    },
    /// A manual/notify worker did not ack in time; it is killed.
    AckTimeout {
        pid: Pid,
        timeout: Duration,
    },
    /// A notify worker missed its watchdog; it is killed.
    WatchdogMissed {
        pid: Pid,
        every: Duration,
    },
    /// The worker said STOPPING=1.
    WorkerStopping {
        pid: Pid,
    },
    /// The master asked a worker to stop.
    Stopping {
        pid: Pid,
        signal: Signal,
        reason: StopReason,
    },
    /// A stopping worker outlived `stop_timeout`: SIGKILL.
    StopTimeout {
        pid: Pid,
        timeout: Duration,
    },
    /// A worker the master had asked to stop exited.
    Exited {
        pid: Pid,
        index: u32,
        version: u64,
        how: String,
        after_stop: Duration,
        reason: StopReason,
    },
    /// A worker exited on its own.
    Died {
        pid: Pid,
        index: u32,
        version: u64,
        how: String,
        acked: bool,
    },
    /// Respawning waits `delay` after `failures` consecutive failures.
    Backoff {
        delay: Duration,
        failures: u32,
    },
    /// `retries` exhausted: no more respawns until an operator acts.
    GaveUp {
        failures: u32,
        retries: u32,
    },
    /// An operator action cleared a give-up.
    Revived,
    CountChanged {
        from: usize,
        to: usize,
    },
    UpgradeStarted {
        id: UpgradeId,
        version: u64,
        count: usize,
        how: String,
    },
    UpgradeSuperseded {
        id: UpgradeId,
        by: UpgradeId,
    },
    UpgradeDone {
        id: UpgradeId,
        version: u64,
        count: usize,
        took: Duration,
    },
    UpgradeFailed {
        id: UpgradeId,
        why: String,
        took: Duration,
    },
    /// The pool was shut down and its last worker is gone.
    Stopped,
    /// A canary's new workers all acked; the pool holds with both versions.
    CanaryHolding {
        id: UpgradeId,
        version: u64,
        n: usize,
        hold: Option<Duration>,
    },
    /// A canary was promoted (`auto`: its hold passed healthy).
    CanaryPromoted {
        id: UpgradeId,
        auto: bool,
    },
    /// A canary was rolled back (`why`: the operator, or what failed).
    CanaryRolledBack {
        id: UpgradeId,
        why: String,
    },
    /// A rollback to an earlier version started.
    RollbackStarted {
        id: UpgradeId,
        from: u64,
        to: u64,
    },
    /// A working worker is being replaced (too old, too large).
    Recycling {
        pid: Pid,
        reason: super::RecycleReason,
    },
    /// An einhorn-protocol worker stopped pinging; it is killed.
    HeartbeatMissed {
        pid: Pid,
        timeout: Duration,
    },
}

impl PoolEvent {
    pub fn level(&self) -> Level {
        match self {
            PoolEvent::AckIgnored { .. } => Level::Debug,
            PoolEvent::SpawnFailed { .. }
            | PoolEvent::GaveUp { .. }
            | PoolEvent::UpgradeFailed { .. } => Level::Error,
            PoolEvent::AckTimeout { .. }
            | PoolEvent::WatchdogMissed { .. }
            | PoolEvent::HeartbeatMissed { .. }
            | PoolEvent::CanaryRolledBack { .. }
            | PoolEvent::StopTimeout { .. }
            | PoolEvent::Died { .. } => Level::Warn,
            _ => Level::Info,
        }
    }

    /// A short name for the event stream and metrics (`spawned`, `died`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            PoolEvent::Spawned { .. } => "spawned",
            PoolEvent::SpawnFailed { .. } => "spawn_failed",
            PoolEvent::Acked { .. } => "acked",
            PoolEvent::AckIgnored { .. } => "ack_ignored",
            PoolEvent::AckTimeout { .. } => "ack_timeout",
            PoolEvent::WatchdogMissed { .. } => "watchdog_missed",
            PoolEvent::WorkerStopping { .. } => "worker_stopping",
            // Replaced by a newer version: what hooks most often want apart.
            PoolEvent::Stopping {
                reason: StopReason::Retired,
                ..
            } => "retired",
            PoolEvent::Stopping { .. } => "stopping",
            PoolEvent::StopTimeout { .. } => "killed",
            PoolEvent::Exited { .. } => "exited",
            PoolEvent::Died { .. } => "died",
            PoolEvent::Backoff { .. } => "backoff",
            PoolEvent::GaveUp { .. } => "gave_up",
            PoolEvent::Revived => "revived",
            PoolEvent::CountChanged { .. } => "count_changed",
            PoolEvent::UpgradeStarted { .. } => "upgrade_started",
            PoolEvent::UpgradeSuperseded { .. } => "upgrade_superseded",
            PoolEvent::UpgradeDone { .. } => "upgrade_done",
            PoolEvent::UpgradeFailed { .. } => "upgrade_abandoned",
            PoolEvent::Stopped => "stopped",
            PoolEvent::CanaryHolding { .. } => "canary_holding",
            PoolEvent::CanaryPromoted { .. } => "canary_promoted",
            PoolEvent::CanaryRolledBack { .. } => "canary_rolled_back",
            PoolEvent::RollbackStarted { .. } => "rollback_started",
            PoolEvent::Recycling { .. } => "recycling",
            PoolEvent::HeartbeatMissed { .. } => "heartbeat_missed",
        }
    }
}

/// The log text, without the `pool NAME: ` prefix the master adds.
impl fmt::Display for PoolEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolEvent::Spawned {
                pid,
                index,
                version,
            } => write!(
                f,
                "spawned worker pid {pid} (index {index}, version {version})"
            ),
            PoolEvent::SpawnFailed {
                error,
                master_side: false,
                ..
            } => write!(f, "could not spawn worker: {error}"),
            PoolEvent::SpawnFailed {
                error,
                master_side: true,
                ..
            } => write!(
                f,
                "could not spawn worker: {error}; the master's own failure, not counted \
                 against the worker: retrying in {:?}",
                super::MASTER_RETRY
            ),
            PoolEvent::Acked {
                pid,
                index,
                version,
                ..
            } => write!(
                f,
                "worker pid {pid} acked (index {index}, version {version})"
            ),
            PoolEvent::AckIgnored { pid } => {
                write!(f, "ack from pid {pid} ignored: this pool acks by timer")
            }
            PoolEvent::AckTimeout { pid, timeout } => write!(
                f,
                "worker pid {pid} did not ack within {timeout:?}: killing it",
            ),
            PoolEvent::WatchdogMissed { pid, every } => write!(
                f,
                "worker pid {pid} sent no WATCHDOG=1 within {every:?}: killing and replacing it",
            ),
            PoolEvent::WorkerStopping { pid } => {
                write!(f, "worker pid {pid} said STOPPING=1; draining it")
            }
            PoolEvent::Stopping {
                pid,
                signal,
                reason,
            } => write!(
                f,
                "stopping worker pid {pid} with {} ({})",
                signal.as_str(),
                reason.as_str()
            ),
            PoolEvent::StopTimeout { pid, timeout } => write!(
                f,
                "worker pid {pid} still alive {timeout:?} after its stop signal: sending SIGKILL",
            ),
            PoolEvent::Exited {
                pid,
                how,
                after_stop,
                reason,
                ..
            } => write!(
                f,
                "worker pid {pid} exited ({how}) {after_stop:.1?} after stop ({})",
                reason.as_str()
            ),
            PoolEvent::Died {
                pid,
                index,
                version,
                how,
                acked,
            } => write!(
                f,
                "worker pid {pid} (index {index}, version {version}) died unexpectedly: {how}{}",
                if *acked { "" } else { ", before it acked" }
            ),
            PoolEvent::Backoff { delay, failures } => write!(
                f,
                "respawning in {delay:.1?} ({failures} consecutive failure(s))"
            ),
            PoolEvent::GaveUp { failures, retries } => write!(
                f,
                "giving up after {failures} consecutive failed spawns (retries = {retries}); \
                 `inc`, `upgrade` or a reload tries again"
            ),
            PoolEvent::Revived => f.write_str("respawning again"),
            PoolEvent::CountChanged { from, to } => write!(f, "count {from} -> {to}"),
            PoolEvent::UpgradeStarted {
                id, version, how, ..
            } => write!(f, "upgrade #{id} to version {version} {how}"),
            PoolEvent::UpgradeSuperseded { id, by } => {
                write!(f, "upgrade #{id} superseded by upgrade #{by}")
            }
            PoolEvent::UpgradeDone {
                id,
                version,
                count,
                took,
            } => write!(
                f,
                "upgrade #{id} done: {count} worker(s) at version {version} in {took:.1?}"
            ),
            PoolEvent::UpgradeFailed { id, why, .. } => write!(f, "upgrade #{id} failed: {why}"),
            PoolEvent::Stopped => f.write_str("stopped"),
            PoolEvent::CanaryHolding {
                id,
                version,
                n,
                hold,
            } => match hold {
                Some(h) => write!(
                    f,
                    "upgrade #{id}: {n} canary worker(s) at version {version} acked; holding, promoting after {h:?} if they stay healthy"
                ),
                None => write!(
                    f,
                    "upgrade #{id}: {n} canary worker(s) at version {version} acked; holding until `promote` or `rollback`"
                ),
            },
            PoolEvent::CanaryPromoted { id, auto } => write!(
                f,
                "upgrade #{id}: canary promoted{}; rolling the rest",
                if *auto { " (held healthy)" } else { "" }
            ),
            PoolEvent::CanaryRolledBack { id, why } => {
                write!(f, "upgrade #{id}: canary rolled back: {why}")
            }
            PoolEvent::RollbackStarted { id, from, to } => write!(
                f,
                "upgrade #{id}: rolling back from version {from} to version {to}"
            ),
            PoolEvent::Recycling { pid, reason } => write!(
                f,
                "recycling worker pid {pid} ({}): its successor starts first",
                reason.describe()
            ),
            PoolEvent::HeartbeatMissed { pid, timeout } => write!(
                f,
                "worker pid {pid} sent no worker:ping within {timeout:?}: killing and replacing it"
            ),
        }
    }
}
