//! A pool as data, for the master's re-exec: [`Pool::snapshot`] writes
//! everything the pool knows into a serde structure, [`Pool::restore`] builds
//! the same pool from it in the new image.
//!
//! Instants cannot cross an exec as values, so every one is written as its
//! offset from the snapshot's `now`, in microseconds (negative: in the past),
//! and read back against the new image's `now`: deadlines keep their distance,
//! and the few milliseconds the exec takes count as time passing. Specs are
//! written once each (workers of one version share theirs). The indexes
//! (buckets, pids, timers, the draining count) are not written: they are
//! rebuilt from the workers, so a snapshot cannot carry an inconsistent one.
//!
//! The format is part of the master's re-exec state (src/master/reexec.rs),
//! which is versioned; new fields must be optional (`#[serde(default)]`) so a
//! state written by the previous release stays readable.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::*;
use crate::config::{parse_signal, PoolConfig, UpgradeStrategy};

/// An instant as microseconds from the snapshot's `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct At(i64);

impl At {
    pub fn of(t: Instant, now: Instant) -> At {
        match t.checked_duration_since(now) {
            Some(d) => At(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            None => At(-i64::try_from(now.duration_since(t).as_micros()).unwrap_or(i64::MAX)),
        }
    }

    pub fn at(self, now: Instant) -> Instant {
        if self.0 >= 0 {
            later(now, Duration::from_micros(self.0 as u64))
        } else {
            now.checked_sub(Duration::from_micros(self.0.unsigned_abs()))
                .unwrap_or(now)
        }
    }
}

fn opt(t: Option<Instant>, now: Instant) -> Option<At> {
    t.map(|t| At::of(t, now))
}

fn back(a: Option<At>, now: Instant) -> Option<Instant> {
    a.map(|a| a.at(now))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum StateSnap {
    Spawning,
    Unacked {
        deadline: At,
    },
    Acked {
        at: At,
    },
    Draining {
        since: At,
        kill_at: Option<At>,
        reason: StopReason,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WorkerSnap {
    id: WorkerId,
    pid: Option<Pid>,
    index: u32,
    version: u64,
    spec: usize,
    spawned_at: At,
    state: StateSnap,
    acked_at: Option<At>,
    signals: Vec<String>,
    last_ping: Option<(At, Option<String>)>,
    notify_status: Option<String>,
    watchdog_at: Option<At>,
    #[serde(default)]
    heartbeat_at: Option<At>,
    #[serde(default)]
    recycle_at: Option<At>,
    #[serde(default)]
    recycle: Option<RecycleReason>,
    #[serde(default)]
    streak: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CanarySnap {
    n: usize,
    hold: Option<Duration>,
    holding_since: Option<At>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UpgradeSnap {
    id: UpgradeId,
    strategy: UpgradeStrategy,
    failures: u32,
    from: (u64, usize),
    started: At,
    #[serde(default)]
    canary: Option<CanarySnap>,
    #[serde(default)]
    rollback: bool,
    #[serde(default)]
    keeps_previous: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OutcomeSnap {
    id: UpgradeId,
    version: u64,
    at: At,
    result: Result<(), String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum ShutdownSnap {
    Graceful,
    With(String),
}

/// Everything a pool knows, as data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolSnapshot {
    name: String,
    count: usize,
    /// The specs workers and versions refer to, by index.
    specs: Vec<PoolConfig>,
    target: (u64, usize),
    next_version: u64,
    next_worker: WorkerId,
    next_upgrade: UpgradeId,
    workers: Vec<WorkerSnap>,
    free_indexes: Vec<u32>,
    next_index: u32,
    upgrade: Option<UpgradeSnap>,
    last_upgrade: Option<OutcomeSnap>,
    failures: u32,
    /// Written as 0 since slots are held one by one (`held`); an image that
    /// still reads it refills at once the slots it does not know are held.
    owed: usize,
    #[serde(default)]
    previous: Option<(u64, usize)>,
    /// The earliest hold, for an image that knows only one pool-wide backoff.
    respawn_at: Option<At>,
    /// Slots held back by a backoff, with their streaks.
    #[serde(default)]
    held: Vec<(At, u32)>,
    logged_backoff: Option<Duration>,
    gave_up: bool,
    shutdown: Option<ShutdownSnap>,
    stopped_reported: bool,
}

/// Specs written once each: Arc identity first, equal content second.
#[derive(Default)]
struct SpecTable {
    specs: Vec<Arc<PoolConfig>>,
    by_ptr: HashMap<*const PoolConfig, usize>,
}

impl SpecTable {
    fn index(&mut self, s: &Arc<PoolConfig>) -> usize {
        if let Some(i) = self.by_ptr.get(&Arc::as_ptr(s)) {
            return *i;
        }
        let i = match self.specs.iter().position(|t| **t == **s) {
            Some(i) => i,
            None => {
                self.specs.push(s.clone());
                self.specs.len() - 1
            }
        };
        self.by_ptr.insert(Arc::as_ptr(s), i);
        i
    }
}

/// Why a snapshot cannot be made into a pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("pool {pool}: spec #{index} is missing from the state")]
    MissingSpec { pool: String, index: usize },
    #[error("pool {pool}: worker {id}: unknown signal {signal:?}")]
    BadSignal {
        pool: String,
        id: WorkerId,
        signal: String,
    },
    #[error("pool {pool}: two workers have index {index}")]
    DuplicateIndex { pool: String, index: u32 },
}

impl Pool {
    /// The pool as data, with instants relative to `now`.
    pub fn snapshot(&self, now: Instant) -> PoolSnapshot {
        let mut t = SpecTable::default();
        let mut workers: Vec<&Worker> = self.workers.values().collect();
        workers.sort_by_key(|w| w.id);
        let workers = workers
            .into_iter()
            .map(|w| WorkerSnap {
                id: w.id,
                pid: w.pid,
                index: w.index,
                version: w.version,
                spec: t.index(&w.spec),
                spawned_at: At::of(w.spawned_at, now),
                state: match &w.state {
                    WorkerState::Spawning => StateSnap::Spawning,
                    WorkerState::Unacked { deadline } => StateSnap::Unacked {
                        deadline: At::of(*deadline, now),
                    },
                    WorkerState::Acked { at } => StateSnap::Acked {
                        at: At::of(*at, now),
                    },
                    WorkerState::Draining {
                        since,
                        kill_at,
                        reason,
                    } => StateSnap::Draining {
                        since: At::of(*since, now),
                        kill_at: opt(*kill_at, now),
                        reason: *reason,
                    },
                },
                acked_at: opt(w.acked_at, now),
                signals: w.signals.iter().map(|s| s.as_str().to_string()).collect(),
                last_ping: w
                    .last_ping
                    .as_ref()
                    .map(|(at, r)| (At::of(*at, now), r.clone())),
                notify_status: w.notify_status.clone(),
                watchdog_at: opt(w.watchdog_at, now),
                heartbeat_at: opt(w.heartbeat_at, now),
                recycle_at: opt(w.recycle_at, now),
                recycle: w.recycle,
                streak: w.streak,
            })
            .collect();
        let target = (self.target.0, t.index(&self.target.1));
        let upgrade = self.upgrade.as_ref().map(|u| UpgradeSnap {
            id: u.id,
            strategy: u.strategy,
            failures: u.failures,
            from: (u.from.0, t.index(&u.from.1)),
            started: At::of(u.started, now),
            canary: u.canary.map(|c| CanarySnap {
                n: c.n,
                hold: c.hold,
                holding_since: opt(c.holding_since, now),
            }),
            rollback: u.rollback,
            keeps_previous: u.keeps_previous,
        });
        let previous = self.previous.as_ref().map(|(v, s)| (*v, t.index(s)));
        PoolSnapshot {
            name: self.name.clone(),
            count: self.count,
            specs: t.specs.iter().map(|s| (**s).clone()).collect(),
            target,
            next_version: self.next_version,
            next_worker: self.next_worker,
            next_upgrade: self.next_upgrade,
            workers,
            free_indexes: self.free_indexes.iter().copied().collect(),
            next_index: self.next_index,
            upgrade,
            last_upgrade: self.last_upgrade.as_ref().map(|o| OutcomeSnap {
                id: o.id,
                version: o.version,
                at: At::of(o.at, now),
                result: o.result.clone(),
            }),
            failures: self.failures,
            owed: 0,
            previous,
            respawn_at: opt(self.respawn_at(), now),
            held: self
                .held
                .iter()
                .map(|h| (At::of(h.at, now), h.streak))
                .collect(),
            logged_backoff: self.logged_backoff,
            gave_up: self.gave_up,
            shutdown: self.shutdown.map(|s| match s {
                Shutdown::Graceful => ShutdownSnap::Graceful,
                Shutdown::With(sig) => ShutdownSnap::With(sig.as_str().to_string()),
            }),
            stopped_reported: self.stopped_reported,
        }
    }

    /// The pool a snapshot describes, with instants against `now`; and the
    /// spawns that were requested but not yet forked (to queue again).
    pub fn restore(snap: PoolSnapshot, now: Instant) -> Result<(Pool, Vec<Action>), RestoreError> {
        let name = snap.name.clone();
        let specs: Vec<Arc<PoolConfig>> = snap.specs.into_iter().map(Arc::new).collect();
        let spec = |i: usize| {
            specs.get(i).cloned().ok_or(RestoreError::MissingSpec {
                pool: name.clone(),
                index: i,
            })
        };
        let signal = |id: WorkerId, s: &str| {
            parse_signal(s).map_err(|_| RestoreError::BadSignal {
                pool: name.clone(),
                id,
                signal: s.to_string(),
            })
        };
        let mut p = Pool::new(spec(snap.target.1)?);
        p.name = snap.name.clone();
        p.count = snap.count;
        p.target = (snap.target.0, spec(snap.target.1)?);
        p.next_version = snap.next_version;
        p.next_worker = snap.next_worker;
        p.next_upgrade = snap.next_upgrade;
        p.free_indexes = snap.free_indexes.into_iter().collect();
        p.next_index = snap.next_index;
        p.failures = snap.failures;
        p.logged_backoff = snap.logged_backoff;
        p.gave_up = snap.gave_up;
        p.stopped_reported = snap.stopped_reported;
        p.previous = match snap.previous {
            Some((v, i)) => Some((v, spec(i)?)),
            None => None,
        };
        p.shutdown = match snap.shutdown {
            None => None,
            Some(ShutdownSnap::Graceful) => Some(Shutdown::Graceful),
            Some(ShutdownSnap::With(s)) => Some(Shutdown::With(signal(0, &s)?)),
        };
        p.last_upgrade = snap.last_upgrade.map(|o| UpgradeOutcome {
            id: o.id,
            version: o.version,
            at: o.at.at(now),
            result: o.result,
        });
        p.upgrade = match snap.upgrade {
            None => None,
            Some(u) => Some(Upgrade {
                id: u.id,
                strategy: u.strategy,
                failures: u.failures,
                from: (u.from.0, spec(u.from.1)?),
                started: u.started.at(now),
                canary: u.canary.map(|c| Canary {
                    n: c.n,
                    hold: c.hold,
                    holding_since: back(c.holding_since, now),
                }),
                rollback: u.rollback,
                keeps_previous: u.keeps_previous,
            }),
        };
        if snap.held.is_empty() {
            // A state from an image with one pool-wide backoff: one held
            // slot at its deadline, with the pool's streak.
            if let Some(at) = snap.respawn_at {
                p.hold(at.at(now), snap.failures);
            }
        }
        for (at, streak) in snap.held {
            p.hold(at.at(now), streak);
        }
        if let Some(c) = p.upgrade.as_ref().and_then(|u| u.canary) {
            if let (Some(since), Some(hold)) = (c.holding_since, c.hold) {
                p.timers.insert((later(since, hold), TimerKey::CanaryHold));
            }
        }
        let mut pending = Vec::new();
        let mut indexes = BTreeSet::new();
        for w in snap.workers {
            if !indexes.insert(w.index) {
                return Err(RestoreError::DuplicateIndex {
                    pool: name.clone(),
                    index: w.index,
                });
            }
            let state = match w.state {
                StateSnap::Spawning => WorkerState::Spawning,
                StateSnap::Unacked { deadline } => WorkerState::Unacked {
                    deadline: deadline.at(now),
                },
                StateSnap::Acked { at } => WorkerState::Acked { at: at.at(now) },
                StateSnap::Draining {
                    since,
                    kill_at,
                    reason,
                } => WorkerState::Draining {
                    since: since.at(now),
                    kill_at: back(kill_at, now),
                    reason,
                },
            };
            let signals = w
                .signals
                .iter()
                .map(|s| signal(w.id, s))
                .collect::<Result<Vec<Signal>, _>>()?;
            let worker = Worker {
                id: w.id,
                pid: w.pid,
                index: w.index,
                version: w.version,
                spec: spec(w.spec)?,
                spawned_at: w.spawned_at.at(now),
                state,
                acked_at: back(w.acked_at, now),
                signals,
                last_ping: w.last_ping.map(|(at, r)| (at.at(now), r)),
                notify_status: w.notify_status,
                watchdog_at: back(w.watchdog_at, now),
                heartbeat_at: back(w.heartbeat_at, now),
                recycle_at: back(w.recycle_at, now),
                recycle: w.recycle,
                streak: w.streak,
            };
            p.index_worker(&worker);
            if worker.state == WorkerState::Spawning {
                pending.push(Action::Spawn {
                    worker: worker.id,
                    index: worker.index,
                    version: worker.version,
                    spec: worker.spec.clone(),
                });
            }
            p.workers.insert(worker.id, worker);
        }
        Ok((p, pending))
    }

    /// Put a restored worker into every index (buckets, pids, timers).
    fn index_worker(&mut self, w: &Worker) {
        if let Some(pid) = w.pid {
            self.by_pid.insert(pid, w.id);
        }
        match &w.state {
            WorkerState::Spawning => {
                self.buckets
                    .entry(w.version)
                    .or_default()
                    .unacked
                    .insert((w.index, w.id));
            }
            WorkerState::Unacked { deadline } => {
                self.buckets
                    .entry(w.version)
                    .or_default()
                    .unacked
                    .insert((w.index, w.id));
                self.timers.insert((*deadline, TimerKey::Deadline(w.id)));
            }
            WorkerState::Acked { .. } => {
                self.buckets
                    .entry(w.version)
                    .or_default()
                    .acked
                    .insert((w.index, w.id));
                if w.recycle.is_some() {
                    self.recycling.insert(w.id);
                }
            }
            WorkerState::Draining { kill_at, .. } => {
                self.draining += 1;
                if let Some(k) = kill_at {
                    self.timers.insert((*k, TimerKey::Deadline(w.id)));
                }
            }
        }
        if let Some(at) = w.watchdog_at {
            self.timers.insert((at, TimerKey::Watchdog(w.id)));
        }
        if let Some(at) = w.heartbeat_at {
            self.timers.insert((at, TimerKey::Heartbeat(w.id)));
        }
        if let Some(at) = w.recycle_at {
            self.timers.insert((at, TimerKey::Age(w.id)));
        }
        self.free_indexes.remove(&w.index);
    }
}
