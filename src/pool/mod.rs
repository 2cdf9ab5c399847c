//! One pool's desired state and the decisions that move it there: a pure state
//! machine. Events come in (worker spawned, acked, exited, a deadline passed, a
//! command), [`Action`]s come out (spawn, signal, upgrade progress, stopped). No
//! syscalls happen here and time is passed in, so every decision — backoff, ack
//! timeouts, smooth and fleet upgrades, surge bounds, supersession, shutdown — is
//! unit-tested without processes.
//!
//! Theory of operation. Every event ends in [`Pool::reconcile`], which compares what
//! runs with what is wanted and emits the difference, so the order in which events
//! arrive never matters. Workers carry the *version* (generation) they were spawned
//! at. Without an upgrade, versions do not matter: the pool keeps `count` live
//! workers. During an upgrade, workers of other versions are *old*: new ones are
//! started within `max_unacked` and `max_surge`, and an old acked worker is only
//! retired while the acked total stays at or above `count` (smooth), or all at once
//! when every new one has acked (fleet). A new version that fails `retries` times is
//! abandoned: its unacked workers are stopped and the pool goes back to the version
//! it came from, with the old workers still serving.
//!
//! Indexes make each event O(log n): workers are bucketed by version and ack state,
//! deadlines live in one ordered set, free slot indexes in another.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::config::{AckMode, PoolConfig, UpgradeStrategy, MAX_RESPAWN_DELAY};

mod event;
mod holds;
mod persist;
mod recycle;
mod types;
mod upgrade;

pub use event::{Level, PoolEvent};
use holds::{Held, Holds};
pub use persist::{At, PoolSnapshot, RestoreError};
pub use types::*;
use types::{Bucket, TimerKey, Upgrade};

pub type Pid = i32;
pub type WorkerId = u64;
pub type UpgradeId = u64;

#[derive(Debug)]
pub struct Pool {
    name: String,
    count: usize,
    /// Version new workers are spawned at, and its spec.
    target: (u64, Arc<PoolConfig>),
    next_version: u64,
    next_worker: WorkerId,
    next_upgrade: UpgradeId,
    workers: HashMap<WorkerId, Worker>,
    by_pid: HashMap<Pid, WorkerId>,
    /// Live, non-draining workers by version.
    buckets: BTreeMap<u64, Bucket>,
    draining: usize,
    timers: BTreeSet<(Instant, TimerKey)>,
    free_indexes: BTreeSet<u32>,
    next_index: u32,
    upgrade: Option<Upgrade>,
    last_upgrade: Option<UpgradeOutcome>,
    /// Consecutive deaths before ack in the whole pool (any ack resets it):
    /// what `retries` counts and `status` shows. The delay itself is per slot.
    failures: u32,
    /// Live workers marked for recycling (see src/pool/recycle.rs).
    recycling: BTreeSet<WorkerId>,
    /// The version a finished upgrade replaced: what `rollback` goes back to.
    previous: Option<(u64, Arc<PoolConfig>)>,
    /// Empty slots held back by a backoff, earliest first: a slot whose
    /// worker died before it acked waits `respawn_delay × 1.5^(streak-1)`.
    /// Every other empty slot is refilled at once.
    held: Holds,
    /// Backoff last reported in the log: a crash loop of many workers repeats
    /// the same capped delay once per death, which says nothing new.
    logged_backoff: Option<Duration>,
    /// `retries` exhausted in steady state: no more respawns until a command.
    gave_up: bool,
    shutdown: Option<Shutdown>,
    stopped_reported: bool,
    /// What happened since the master last asked ([`Pool::take_events`]).
    events: Vec<PoolEvent>,
}

impl Pool {
    pub fn new(spec: Arc<PoolConfig>) -> Pool {
        Pool {
            name: spec.name.clone(),
            count: spec.count,
            target: (1, spec),
            next_version: 2,
            next_worker: 1,
            next_upgrade: 1,
            workers: HashMap::new(),
            by_pid: HashMap::new(),
            buckets: BTreeMap::new(),
            draining: 0,
            timers: BTreeSet::new(),
            free_indexes: BTreeSet::new(),
            next_index: 0,
            upgrade: None,
            last_upgrade: None,
            failures: 0,
            recycling: BTreeSet::new(),
            previous: None,
            held: Holds::default(),
            logged_backoff: None,
            gave_up: false,
            shutdown: None,
            stopped_reported: false,
            events: Vec::new(),
        }
    }

    // ---- read side -------------------------------------------------------

    /// What happened since the last call, in order (the master logs and
    /// publishes these after every event it feeds in).
    pub fn take_events(&mut self) -> Vec<PoolEvent> {
        std::mem::take(&mut self.events)
    }

    pub fn count(&self) -> usize {
        self.count
    }
    pub fn spec(&self) -> &Arc<PoolConfig> {
        &self.target.1
    }
    pub fn version(&self) -> u64 {
        self.target.0
    }
    /// The newest version this pool ever started (a rollback's target is
    /// older).
    pub fn newest_version(&self) -> u64 {
        self.next_version - 1
    }
    pub fn worker_by_pid(&self, pid: Pid) -> Option<&Worker> {
        self.by_pid.get(&pid).and_then(|id| self.workers.get(id))
    }
    /// Workers sorted by index then id (for display).
    pub fn workers_sorted(&self) -> Vec<&Worker> {
        let mut v: Vec<&Worker> = self.workers.values().collect();
        v.sort_by_key(|w| (w.index, w.id));
        v
    }
    pub fn len(&self) -> usize {
        self.workers.len()
    }
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }
    pub fn acked(&self) -> usize {
        self.buckets.values().map(|b| b.acked.len()).sum()
    }
    pub fn draining(&self) -> usize {
        self.draining
    }
    pub fn upgrading(&self) -> Option<(UpgradeId, UpgradeStrategy, Instant)> {
        self.upgrade.as_ref().map(|u| (u.id, u.strategy, u.started))
    }
    pub fn last_upgrade(&self) -> Option<&UpgradeOutcome> {
        self.last_upgrade.as_ref()
    }
    pub fn gave_up(&self) -> bool {
        self.gave_up
    }
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }
    /// When the next slot held back by a backoff may be refilled.
    pub fn respawn_at(&self) -> Option<Instant> {
        self.held.first_at()
    }
    pub fn failures(&self) -> u32 {
        self.failures
    }
    /// Earliest instant at which [`Pool::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }
    /// Every pool has its count acked and nothing is in flight.
    pub fn is_settled(&self) -> bool {
        self.shutdown.is_none() && self.upgrade.is_none() && self.acked() >= self.count
    }

    // ---- events ------------------------------------------------------------

    /// Start the pool's workers.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.reconcile(now, &mut out);
        out
    }

    /// Result of an [`Action::Spawn`].
    pub fn spawned(
        &mut self,
        id: WorkerId,
        result: Result<Pid, SpawnError>,
        now: Instant,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        match result {
            Ok(pid) => {
                let Some(w) = self.workers.get_mut(&id) else {
                    return out;
                };
                if w.state != WorkerState::Spawning {
                    // Stopped before it was forked: the master should have asked
                    // `wants_spawn`; stop the process now that it exists.
                    w.pid = Some(pid);
                    self.by_pid.insert(pid, id);
                    let (sig, group) = (w.spec.stop_signal, w.spec.stop_group);
                    self.send(id, pid, sig, group, &mut out);
                    return out;
                }
                w.pid = Some(pid);
                let deadline = later(
                    now,
                    match w.spec.ack {
                        AckMode::Timer => w.spec.ack_timer,
                        AckMode::Manual | AckMode::Notify => w.spec.ack_timeout,
                    },
                );
                w.state = WorkerState::Unacked { deadline };
                self.by_pid.insert(pid, id);
                self.timers.insert((deadline, TimerKey::Deadline(id)));
                let (index, version) = (w.index, w.version);
                self.emit(PoolEvent::Spawned {
                    pid,
                    index,
                    version,
                });
                if self.shutdown.is_some() {
                    self.stop_worker(
                        id,
                        self.shutdown_signal(id),
                        StopReason::Shutdown,
                        now,
                        &mut out,
                    );
                }
            }
            Err(SpawnError::Program(e)) => {
                if let Some(w) = self.remove(id) {
                    self.emit(PoolEvent::SpawnFailed {
                        index: w.index,
                        version: w.version,
                        error: e.clone(),
                        master_side: false,
                    });
                    self.count_failure(&w, &format!("could not spawn: {e}"), true, now, &mut out);
                }
            }
            Err(SpawnError::Resources(e)) => {
                if let Some(w) = self.remove(id) {
                    self.emit(PoolEvent::SpawnFailed {
                        index: w.index,
                        version: w.version,
                        error: e,
                        master_side: true,
                    });
                    // The slot is retried soon, its streak unchanged.
                    self.hold(later(now, MASTER_RETRY), w.streak);
                }
            }
        }
        self.reconcile(now, &mut out);
        out
    }

    /// Is this spawn still wanted? A worker stopped while waiting for its fork
    /// (shutdown, scale-down) is dropped here instead.
    pub fn wants_spawn(&mut self, id: WorkerId) -> bool {
        match self.workers.get(&id).map(|w| &w.state) {
            Some(WorkerState::Spawning) => true,
            Some(WorkerState::Draining { .. }) => {
                self.remove(id);
                false
            }
            _ => false,
        }
    }

    /// Finish a cancelled spawn (see [`Pool::wants_spawn`]).
    pub fn spawn_dropped(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.reconcile(now, &mut out);
        out
    }

    /// A worker said it is ready (`worker:ack`, or READY=1 for notify pools).
    /// In timer mode this is ignored, as einhorn does: only surviving `ack_timer`
    /// counts, so a worker that acks and crashes at once is still backed off as a
    /// crash loop.
    pub fn ack(&mut self, pid: Pid, now: Instant) -> Result<Vec<Action>, PoolError> {
        let id = self.id_of(pid)?;
        if self
            .workers
            .get(&id)
            .is_some_and(|w| w.spec.ack == AckMode::Timer)
        {
            self.emit(PoolEvent::AckIgnored { pid });
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        self.mark_acked(id, now, &mut out);
        self.reconcile(now, &mut out);
        Ok(out)
    }

    /// A worker pinged (`worker:ping`): a liveness hint shown by `state`.
    pub fn ping(
        &mut self,
        pid: Pid,
        request_id: Option<String>,
        now: Instant,
    ) -> Result<(), PoolError> {
        let id = self.id_of(pid)?;
        if let Some(w) = self.workers.get_mut(&id) {
            w.last_ping = Some((now, request_id));
            if let (Some(old), Some(t)) = (w.heartbeat_at, w.spec.heartbeat_timeout) {
                let at = later(now, t);
                w.heartbeat_at = Some(at);
                self.timers.remove(&(old, TimerKey::Heartbeat(id)));
                self.timers.insert((at, TimerKey::Heartbeat(id)));
            }
        }
        Ok(())
    }

    // ---- the notify socket (`ack = "notify"`, see crate::systemd::worker_notify) ----------

    /// STATUS= from a worker: kept for `status`/`state`.
    pub fn notify_status(&mut self, pid: Pid, status: String) -> Result<(), PoolError> {
        let id = self.id_of(pid)?;
        if let Some(w) = self.workers.get_mut(&id) {
            w.notify_status = Some(status);
        }
        Ok(())
    }

    /// WATCHDOG=1 from a worker: push its watchdog deadline back.
    pub fn watchdog_ping(&mut self, pid: Pid, now: Instant) -> Result<(), PoolError> {
        let id = self.id_of(pid)?;
        let Some(w) = self.workers.get_mut(&id) else {
            return Ok(());
        };
        let (Some(old), Some(every)) = (w.watchdog_at, w.spec.watchdog) else {
            return Ok(());
        };
        let at = later(now, every);
        w.watchdog_at = Some(at);
        self.timers.remove(&(old, TimerKey::Watchdog(id)));
        self.timers.insert((at, TimerKey::Watchdog(id)));
        Ok(())
    }

    /// STOPPING=1 from a worker: it is on its way out. Mark it draining (no
    /// signal: it is already stopping; SIGKILL after `stop_timeout`) so that a
    /// replacement starts now.
    pub fn worker_stopping(&mut self, pid: Pid, now: Instant) -> Result<Vec<Action>, PoolError> {
        let id = self.id_of(pid)?;
        let mut out = Vec::new();
        let Some(w) = self.workers.get(&id).cloned() else {
            return Ok(out);
        };
        if w.is_draining() || w.state == WorkerState::Spawning {
            return Ok(out);
        }
        self.unbucket(&w);
        if let WorkerState::Unacked { deadline } = w.state {
            self.timers.remove(&(deadline, TimerKey::Deadline(id)));
        }
        let kill_at = later(now, w.spec.stop_timeout);
        self.timers.insert((kill_at, TimerKey::Deadline(id)));
        self.draining += 1;
        if let Some(wm) = self.workers.get_mut(&id) {
            wm.state = WorkerState::Draining {
                since: now,
                kill_at: Some(kill_at),
                reason: StopReason::WorkerStopping,
            };
        }
        self.emit(PoolEvent::WorkerStopping { pid });
        self.reconcile(now, &mut out);
        Ok(out)
    }

    fn watchdog_passed(&mut self, id: WorkerId, at: Instant, now: Instant, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get(&id) else {
            return;
        };
        if !w.is_acked() || w.watchdog_at != Some(at) {
            return;
        }
        let ev = PoolEvent::WatchdogMissed {
            pid: w.pid.unwrap_or(0),
            every: w.spec.watchdog.unwrap_or_default(),
        };
        self.emit(ev);
        self.stop_worker(id, Signal::SIGKILL, StopReason::Watchdog, now, out);
    }

    /// A worker process was reaped. `how` describes the exit for the log.
    /// Returns `None` if the pid is not ours.
    pub fn exited(&mut self, pid: Pid, how: &str, now: Instant) -> Option<Vec<Action>> {
        let id = *self.by_pid.get(&pid)?;
        let w = self.remove(id)?;
        let mut out = Vec::new();
        if w.spec.stop_group {
            // `stop_group`: the worker's exit ends its process group; what is
            // left of it (children that outlived it) would keep the sockets.
            out.push(Action::Signal {
                pid,
                signal: Signal::SIGKILL,
                group: true,
            });
        }
        match &w.state {
            WorkerState::Draining { reason, since, .. } => {
                self.emit(PoolEvent::Exited {
                    pid,
                    index: w.index,
                    version: w.version,
                    how: how.to_string(),
                    after_stop: now.saturating_duration_since(*since),
                    reason: *reason,
                });
                if *reason == StopReason::AckTimeout {
                    let cause = format!("pid {pid} did not ack within {:?}", w.spec.ack_timeout);
                    // Its slot was held when it was killed.
                    self.count_failure(&w, &cause, false, now, &mut out);
                } else if matches!(reason, StopReason::Watchdog | StopReason::Heartbeat)
                    && self.is_canary_version(w.version)
                {
                    let cause = format!("pid {pid} was killed: {}", reason.as_str());
                    self.rollback_canary(format!("canary {cause}"), now, &mut out);
                }
            }
            state => {
                // A timer-acked worker whose ack timer had passed when it exited
                // survived `ack_timer`: it counts as acked, even though its exit
                // and its timer were handled in the same loop turn, exit first.
                let survived_timer = w.spec.ack == AckMode::Timer
                    && matches!(state, WorkerState::Unacked { deadline } if *deadline <= now);
                let ever_acked = w.acked_at.is_some() || survived_timer;
                let cause = format!(
                    "pid {pid} {how}{}",
                    if ever_acked { "" } else { " before it acked" }
                );
                self.emit(PoolEvent::Died {
                    pid,
                    index: w.index,
                    version: w.version,
                    how: how.to_string(),
                    acked: ever_acked,
                });
                if ever_acked {
                    let in_upgrade = self
                        .upgrade
                        .as_ref()
                        .is_some_and(|_| w.version == self.target.0);
                    if in_upgrade {
                        self.count_failure(&w, &cause, true, now, &mut out);
                    }
                    // Otherwise it served, so its version can start: its slot
                    // is not held, and is refilled at once. Backoff is for a
                    // version that cannot start; holds on other slots (or a
                    // give-up) do not hold this replacement back.
                } else {
                    self.count_failure(&w, &cause, true, now, &mut out);
                }
            }
        }
        self.reconcile(now, &mut out);
        Some(out)
    }

    /// Deadlines that have passed: timer acks, ack timeouts, SIGKILL escalation,
    /// respawn after backoff.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(&(at, key)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, key));
            match key {
                TimerKey::Respawn => {}
                TimerKey::Deadline(id) => self.deadline_passed(id, now, &mut out),
                TimerKey::Watchdog(id) => self.watchdog_passed(id, at, now, &mut out),
                TimerKey::Heartbeat(id) => self.heartbeat_passed(id, at, now, &mut out),
                TimerKey::Age(id) => self.age_passed(id, at, now),
                TimerKey::CanaryHold => self.canary_hold_passed(now, &mut out),
            }
        }
        self.reconcile(now, &mut out);
        out
    }

    /// `inc`, `dec`, `set_workers`, TTIN/TTOU, a reload that changed `count`.
    pub fn set_count(&mut self, count: usize, now: Instant) -> Result<Vec<Action>, PoolError> {
        self.refuse_if_shutting_down()?;
        if count != self.count {
            self.emit(PoolEvent::CountChanged {
                from: self.count,
                to: count,
            });
        }
        self.count = count;
        self.revive();
        let mut out = Vec::new();
        self.reconcile(now, &mut out);
        Ok(out)
    }

    /// New settings that need no restart (stop_timeout, max_unacked, ...): the
    /// running version keeps its number; new workers use the new spec.
    pub fn retune(&mut self, spec: Arc<PoolConfig>, now: Instant) -> Vec<Action> {
        self.target.1 = spec;
        let mut out = Vec::new();
        self.reconcile(now, &mut out);
        out
    }

    /// Stop the pool: no more spawning, every worker gets its stop signal.
    pub fn shutdown(&mut self, how: Shutdown, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(up) = self.upgrade.take() {
            self.finish_upgrade(up, Err("interrupted by shutdown".into()), now, &mut out);
        }
        self.shutdown = Some(how);
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in ids {
            let sig = self.shutdown_signal(id);
            let draining_already = self.workers.get(&id).is_some_and(Worker::is_draining);
            if draining_already {
                // Escalate only when a different signal was asked for.
                if let (Shutdown::With(s), Some((pid, group))) = (
                    how,
                    self.workers
                        .get(&id)
                        .and_then(|w| w.pid.map(|p| (p, w.spec.stop_group))),
                ) {
                    self.send(id, pid, s, group, &mut out);
                }
            } else {
                self.stop_worker(id, sig, StopReason::Shutdown, now, &mut out);
            }
        }
        self.reconcile(now, &mut out);
        out
    }

    /// `signal SIG`: send a signal to every live worker (no state change).
    pub fn signal_all(&mut self, signal: Signal) -> Vec<Action> {
        let mut out = Vec::new();
        let targets: Vec<(WorkerId, Pid)> = self
            .workers
            .values()
            .filter_map(|w| w.pid.map(|p| (w.id, p)))
            .collect();
        // The worker itself, as einhorn: a server relays to its own children.
        for (id, pid) in targets {
            self.send(id, pid, signal, false, &mut out);
        }
        out
    }

    // ---- internals ----------------------------------------------------------

    fn emit(&mut self, e: PoolEvent) {
        self.events.push(e);
    }

    fn id_of(&self, pid: Pid) -> Result<WorkerId, PoolError> {
        self.by_pid
            .get(&pid)
            .copied()
            .ok_or_else(|| PoolError::NotAWorker {
                pool: self.name.clone(),
                pid,
            })
    }

    fn refuse_if_shutting_down(&self) -> Result<(), PoolError> {
        if self.shutdown.is_some() {
            return Err(PoolError::ShuttingDown {
                pool: self.name.clone(),
            });
        }
        Ok(())
    }

    /// An operator action clears a steady-state give-up and the backoff.
    fn revive(&mut self) {
        if self.gave_up {
            self.emit(PoolEvent::Revived);
        }
        self.gave_up = false;
        self.failures = 0;
        self.logged_backoff = None;
        self.clear_holds();
    }

    fn shutdown_signal(&self, id: WorkerId) -> Signal {
        match self.shutdown {
            Some(Shutdown::With(s)) => s,
            _ => self
                .workers
                .get(&id)
                .map_or(self.target.1.stop_signal, |w| w.spec.stop_signal),
        }
    }

    /// Hold one empty slot back until `at`.
    pub(super) fn hold(&mut self, at: Instant, streak: u32) {
        self.held.push(at, streak);
        self.timers.insert((at, TimerKey::Respawn));
    }

    /// Take the earliest (or the latest) hold, and its timer unless another
    /// hold shares the instant.
    fn unhold(&mut self, latest: bool) -> Option<Held> {
        let h = if latest {
            self.held.pop_last()
        } else {
            self.held.pop_first()
        }?;
        if !self.held.has_at(h.at) {
            self.timers.remove(&(h.at, TimerKey::Respawn));
        }
        Some(h)
    }

    /// Forget every hold (an operator action, an abandoned upgrade).
    pub(super) fn clear_holds(&mut self) {
        while self.unhold(true).is_some() {}
    }

    fn deadline_passed(&mut self, id: WorkerId, now: Instant, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        match w.state.clone() {
            WorkerState::Unacked { .. } => match w.spec.ack {
                AckMode::Timer => self.mark_acked(id, now, out),
                AckMode::Manual | AckMode::Notify => {
                    let ev = PoolEvent::AckTimeout {
                        pid: w.pid.unwrap_or(0),
                        timeout: w.spec.ack_timeout,
                    };
                    // Its slot is refilled now, not at its exit: the first
                    // time at once (the ack timeout already bounds the rate),
                    // then backing off like any slot that keeps failing.
                    let streak = w.streak.saturating_add(1);
                    let wait = match w.streak {
                        0 => Duration::ZERO,
                        n => backoff(w.spec.respawn_delay, n.max(self.failures)),
                    };
                    self.hold(later(now, wait), streak);
                    self.emit(ev);
                    self.stop_worker(id, Signal::SIGKILL, StopReason::AckTimeout, now, out);
                }
            },
            WorkerState::Draining {
                since,
                kill_at: Some(_),
                reason,
            } => {
                if let Some(pid) = w.pid {
                    let timeout = w.spec.stop_timeout;
                    w.state = WorkerState::Draining {
                        since,
                        kill_at: None,
                        reason,
                    };
                    self.emit(PoolEvent::StopTimeout { pid, timeout });
                    // Always the whole group: a worker that had to be killed
                    // cannot stop its children, which would keep serving on
                    // the sockets they inherited.
                    self.send(id, pid, Signal::SIGKILL, true, out);
                }
            }
            _ => {}
        }
    }

    fn mark_acked(&mut self, id: WorkerId, now: Instant, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        let WorkerState::Unacked { deadline } = w.state else {
            return;
        };
        self.timers.remove(&(deadline, TimerKey::Deadline(id)));
        w.state = WorkerState::Acked { at: now };
        w.acked_at = Some(now);
        if let (AckMode::Notify, Some(every)) = (w.spec.ack, w.spec.watchdog) {
            let at = later(now, every);
            w.watchdog_at = Some(at);
            self.timers.insert((at, TimerKey::Watchdog(id)));
        }
        if let (false, Some(t)) = (w.spec.ack == AckMode::Notify, w.spec.heartbeat_timeout) {
            let at = later(now, t);
            w.heartbeat_at = Some(at);
            self.timers.insert((at, TimerKey::Heartbeat(id)));
        }
        if let Some(age) = w.spec.max_age {
            let at = later(w.spawned_at, age + jitter(id, w.spec.max_age_jitter)).max(now);
            w.recycle_at = Some(at);
            self.timers.insert((at, TimerKey::Age(id)));
        }
        let (index, version, pid) = (w.index, w.version, w.pid.unwrap_or(0));
        let after = now.saturating_duration_since(w.spawned_at);
        if let Some(b) = self.buckets.get_mut(&version) {
            b.unacked.remove(&(index, id));
            b.acked.insert((index, id));
        }
        self.failures = 0;
        self.logged_backoff = None;
        self.emit(PoolEvent::Acked {
            pid,
            index,
            version,
            after,
        });
        if let Some(up) = &self.upgrade {
            if version == self.target.0 {
                let acked = self.buckets.get(&version).map_or(0, |b| b.acked.len());
                let want = up.canary.map_or(self.count, |c| c.n);
                out.push(Action::Progress {
                    upgrade: up.id,
                    message: format!(
                        "pool {}: {}/{} new workers acked (pid {})",
                        self.name, acked, want, pid
                    ),
                    outcome: None,
                });
            }
        }
    }

    /// A worker died before it acked, or a new version died during its upgrade.
    /// `cause` (pid and exit status, ack timeout, spawn error) ends up in the
    /// failed upgrade's reply: the operator learns why without reading the log.
    /// `hold`: hold the worker's slot back by its backoff (false when that
    /// was done already, at an ack timeout).
    fn count_failure(
        &mut self,
        w: &Worker,
        cause: &str,
        hold: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        // Two streaks set the delay, the longer one wins: the pool's (deaths
        // before ack with no ack anywhere in between: the version cannot
        // start, so every slot backs off fast, as one) and the slot's own (a
        // slot that keeps failing while others ack). Each slot waits on its
        // own timer, so a failure elsewhere never pushes it later. The
        // pool's count is also what `retries` bounds.
        self.failures = self.failures.saturating_add(1);
        let streak = w.streak.saturating_add(1);
        let delay = backoff(w.spec.respawn_delay, streak.max(self.failures));
        if hold {
            self.hold(later(now, delay), streak);
        }
        if let Some(up) = &mut self.upgrade {
            if w.version == self.target.0 && up.canary.is_some() {
                // A canary that fails is the answer the canary was for.
                self.rollback_canary(format!("canary {cause}"), now, out);
                return;
            }
            if w.version == self.target.0 {
                up.failures += 1;
                let limit = w.spec.upgrade_retries();
                if up.failures >= limit {
                    if let Some(up) = self.upgrade.take() {
                        let why = format!(
                            "version {} failed {} time(s) (last: {cause}); old workers keep serving",
                            w.version, up.failures
                        );
                        self.finish_upgrade(up, Err(why), now, out);
                    }
                }
                return;
            }
        }
        if self.upgrade.is_none() {
            if let Some(r) = w.spec.retries {
                // `retries = N`: N failed attempts, then give up (0 reads as
                // 1, as `-r 0` did: no second attempt).
                if self.failures >= r.max(1) && !self.gave_up {
                    self.gave_up = true;
                    self.emit(PoolEvent::GaveUp {
                        failures: self.failures,
                        retries: r,
                    });
                    return;
                }
            }
            // Rate limit: a new delay, or every power of two of failures.
            if hold && (self.logged_backoff != Some(delay) || self.failures.is_power_of_two()) {
                self.logged_backoff = Some(delay);
                self.emit(PoolEvent::Backoff {
                    delay,
                    failures: self.failures,
                });
            }
        }
    }

    fn alloc_index(&mut self) -> u32 {
        if let Some(i) = self.free_indexes.pop_first() {
            return i;
        }
        let i = self.next_index;
        self.next_index += 1;
        i
    }

    /// Start one worker of `version` (the target, or a canary's base version)
    /// in a slot whose worker died `streak` times in a row before acking.
    fn spawn_one(
        &mut self,
        (version, spec): (u64, Arc<PoolConfig>),
        streak: u32,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let id = self.next_worker;
        self.next_worker += 1;
        let index = self.alloc_index();
        // Spawning until the master forks it (it may batch forks across loop
        // turns); it counts as unacked meanwhile.
        self.workers.insert(
            id,
            Worker {
                id,
                pid: None,
                index,
                version,
                spec: spec.clone(),
                spawned_at: now,
                state: WorkerState::Spawning,
                acked_at: None,
                signals: Vec::new(),
                last_ping: None,
                notify_status: None,
                watchdog_at: None,
                heartbeat_at: None,
                recycle_at: None,
                recycle: None,
                streak,
            },
        );
        self.buckets
            .entry(version)
            .or_default()
            .unacked
            .insert((index, id));
        out.push(Action::Spawn {
            worker: id,
            index,
            version,
            spec,
        });
    }

    /// Remove a worker from every index; its slot index becomes free.
    fn remove(&mut self, id: WorkerId) -> Option<Worker> {
        let w = self.workers.remove(&id)?;
        if let Some(pid) = w.pid {
            self.by_pid.remove(&pid);
        }
        self.unbucket(&w);
        match &w.state {
            WorkerState::Unacked { deadline } => {
                self.timers.remove(&(*deadline, TimerKey::Deadline(id)));
            }
            WorkerState::Draining { kill_at, .. } => {
                self.draining -= 1;
                if let Some(k) = kill_at {
                    self.timers.remove(&(*k, TimerKey::Deadline(id)));
                }
            }
            _ => {}
        }
        if let Some(at) = w.watchdog_at {
            self.timers.remove(&(at, TimerKey::Watchdog(id)));
        }
        if let Some(at) = w.heartbeat_at {
            self.timers.remove(&(at, TimerKey::Heartbeat(id)));
        }
        if let Some(at) = w.recycle_at {
            self.timers.remove(&(at, TimerKey::Age(id)));
        }
        self.free_indexes.insert(w.index);
        Some(w)
    }

    fn unbucket(&mut self, w: &Worker) {
        self.recycling.remove(&w.id);
        if let Some(b) = self.buckets.get_mut(&w.version) {
            b.unacked.remove(&(w.index, w.id));
            b.acked.remove(&(w.index, w.id));
            if b.len() == 0 {
                self.buckets.remove(&w.version);
            }
        }
    }

    fn send(&mut self, id: WorkerId, pid: Pid, signal: Signal, group: bool, out: &mut Vec<Action>) {
        if let Some(w) = self.workers.get_mut(&id) {
            w.signals.push(signal);
        }
        out.push(Action::Signal { pid, signal, group });
    }

    /// Move a live worker to Draining and send it `signal`.
    fn stop_worker(
        &mut self,
        id: WorkerId,
        signal: Signal,
        reason: StopReason,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(w) = self.workers.get(&id) else {
            return;
        };
        if w.is_draining() {
            return;
        }
        let w = w.clone();
        self.unbucket(&w);
        if let WorkerState::Unacked { deadline } = w.state {
            self.timers.remove(&(deadline, TimerKey::Deadline(id)));
        }
        let kill_at = (signal != Signal::SIGKILL).then(|| later(now, w.spec.stop_timeout));
        if let Some(k) = kill_at {
            self.timers.insert((k, TimerKey::Deadline(id)));
        }
        self.draining += 1;
        if let Some(wm) = self.workers.get_mut(&id) {
            wm.state = WorkerState::Draining {
                since: now,
                kill_at,
                reason,
            };
        }
        if let Some(pid) = w.pid {
            self.emit(PoolEvent::Stopping {
                pid,
                signal,
                reason,
            });
            let group = signal == Signal::SIGKILL || w.spec.stop_group;
            self.send(id, pid, signal, group, out);
            if let (Some(up), StopReason::Retired) = (&self.upgrade, reason) {
                out.push(Action::Progress {
                    upgrade: up.id,
                    message: format!(
                        "pool {}: retired pid {} (version {})",
                        self.name, pid, w.version
                    ),
                    outcome: None,
                });
            }
        }
    }

    /// Stop a worker with the stop signal of the version it runs.
    fn retire(&mut self, id: WorkerId, reason: StopReason, now: Instant, out: &mut Vec<Action>) {
        if let Some(sig) = self.workers.get(&id).map(|w| w.spec.stop_signal) {
            self.stop_worker(id, sig, reason, now, out);
        }
    }

    /// Pick up to `n` workers to stop from the given version filter: unacked
    /// first, highest index first, so indexes stay compact.
    fn pick(&self, n: usize, version: impl Fn(u64) -> bool) -> Vec<WorkerId> {
        let mut picked = Vec::new();
        for acked in [false, true] {
            for (v, b) in self.buckets.iter().rev() {
                if !version(*v) {
                    continue;
                }
                let set = if acked { &b.acked } else { &b.unacked };
                for (_, id) in set.iter().rev() {
                    if picked.len() == n {
                        return picked;
                    }
                    picked.push(*id);
                }
            }
        }
        picked
    }

    fn spawn_n(&mut self, n: usize, now: Instant, out: &mut Vec<Action>) {
        let target = self.target.clone();
        self.spawn_n_of(target, n, now, out);
    }

    /// Start up to `n` workers of `version` into empty slots: slots that are
    /// not held at once, held slots once their backoff has passed (never
    /// after a give-up); the rest wait for their Respawn timer.
    fn spawn_n_of(
        &mut self,
        version: (u64, Arc<PoolConfig>),
        n: usize,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let mut left = n;
        // Held slots whose time has come, earliest (so longest waiting) first.
        while left > 0 && !self.gave_up && self.held.first_at().is_some_and(|t| t <= now) {
            let Some(h) = self.unhold(false) else { break };
            self.spawn_one(version.clone(), h.streak, now, out);
            left -= 1;
        }
        // Slots that are not held. While `held` slots still wait, `n` counts
        // them among the empty ones.
        let free = left.saturating_sub(self.held.len());
        for _ in 0..free {
            self.spawn_one(version.clone(), 0, now, out);
        }
    }

    /// Compare what runs with what is wanted, and act on the difference.
    fn reconcile(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.shutdown.is_some() {
            if self.workers.is_empty() && !self.stopped_reported {
                self.stopped_reported = true;
                self.emit(PoolEvent::Stopped);
                out.push(Action::Stopped);
            }
            return;
        }
        let count = self.count;
        match self.upgrade.clone() {
            None if !self.recycling.is_empty() => self.reconcile_recycling(now, out),
            None => {
                let live: usize = self.buckets.values().map(Bucket::len).sum();
                // No more holds than empty slots (a scale-down, or holds left
                // from an upgrade): the latest, longest holds go first.
                while self.held.len() > count.saturating_sub(live) {
                    self.unhold(true);
                }
                if live > count {
                    for id in self.pick(live - count, |_| true) {
                        self.retire(id, StopReason::ScaledDown, now, out);
                    }
                } else {
                    self.spawn_n(count - live, now, out);
                }
            }
            Some(up) => self.reconcile_upgrade(&up, now, out),
        }
    }
}

/// `now + d`, saturating: settings are bounded where they are parsed
/// (`config::MAX_DURATION`), but a deadline must never be able to panic.
pub fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(crate::config::MAX_DURATION))
        .unwrap_or(now)
}

/// A worker's share of `max_age_jitter`: spread evenly over worker ids (a
/// fixed multiplicative hash, so tests and restarts see the same value).
pub fn jitter(id: WorkerId, max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let frac = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
    max.mul_f64(frac)
}

/// `base × 1.5^(failures-1)`, capped at [`MAX_RESPAWN_DELAY`].
pub fn backoff(base: Duration, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(64) as i32;
    let secs = base.as_secs_f64() * 1.5f64.powi(exp);
    Duration::from_secs_f64(secs.min(MAX_RESPAWN_DELAY.as_secs_f64()))
}

#[cfg(test)]
mod tests;
