//! Observability: the master's counters, the Prometheus text exposition of
//! them, and the small HTTP responder that serves it.
//!
//! - [`Counters`] (this file, pure): what happened since the master started,
//!   bumped where the pools' events and the master's own are published
//!   (src/master/events.rs), so their cost is a few integer increments per
//!   event. They travel in a re-exec's state.
//! - [`render`] (pure): a [`render::Scrape`] — what the master sees now, workers' RSS
//!   and CPU read from /proc at scrape time only — and the counters written in
//!   the text exposition format (version 0.0.4).
//! - [`http`]: the listener and its connections on the master's mio loop, each
//!   bounded as a control client is (request size, output, idle time, count).
//!
//! Nothing here runs unless someone scrapes: no timer, no thread, no wake-up.

pub mod http;
pub mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pool::{Pid, PoolEvent, StopReason};

/// Upper bounds (seconds) of the ack latency histogram.
pub const ACK_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Upper bounds (seconds) of the upgrade duration histogram.
pub const UPGRADE_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// A cumulative histogram with fixed bounds (kept by the caller, so the
/// state carries only counts).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Histogram {
    /// Observations at or below each bound (not cumulative here; summed when
    /// rendered). One per bound; values above the last bound are only in
    /// `count`.
    pub buckets: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.buckets.len() != bounds.len() {
            // A state from a release with other bounds: keep the totals.
            self.buckets.resize(bounds.len(), 0);
        }
        if let Some(i) = bounds.iter().position(|b| v <= *b) {
            self.buckets[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// (bound, cumulative count) pairs, `+Inf` excluded (that is `count`).
    pub fn cumulative<'a>(&'a self, bounds: &'a [f64]) -> impl Iterator<Item = (f64, u64)> + 'a {
        let mut acc = 0;
        bounds.iter().enumerate().map(move |(i, b)| {
            acc += self.buckets.get(i).copied().unwrap_or(0);
            (*b, acc)
        })
    }
}

/// Counts by a label value from a small, known set (a cause, a command name).
pub type ByLabel = BTreeMap<String, u64>;

fn bump(m: &mut ByLabel, k: &str) {
    match m.get_mut(k) {
        Some(n) => *n += 1,
        None => {
            m.insert(k.to_string(), 1);
        }
    }
}

/// One pool's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PoolCounters {
    pub spawns: u64,
    /// Spawns that failed (`master_side`: the master's own failure).
    pub spawn_failures: ByLabel,
    /// Exits by cause: `crash_before_ack`, `crash_after_ack`, `stopped`,
    /// `killed_after_timeout`.
    pub exits: ByLabel,
    /// Stop signals sent, by reason (`retired`, `scaled_down`, ...).
    pub stops: ByLabel,
    /// SIGKILLs by why: `stop_timeout`, `ack_timeout`, `watchdog`, `heartbeat`.
    pub kills: ByLabel,
    /// Respawns delayed by the backoff, and the last delay chosen.
    pub backoffs: u64,
    pub backoff_seconds: f64,
    pub gave_up: u64,
    /// Upgrades by outcome: `started`, `done`, `abandoned`, `superseded`.
    pub upgrades: ByLabel,
    /// Upgrade durations by outcome (`done`, `abandoned`).
    pub upgrade_seconds: BTreeMap<String, Histogram>,
    pub ack_seconds: Histogram,
    /// Workers sent SIGKILL after their stop timeout, until their exit is
    /// seen (then counted as `killed_after_timeout`). At most the pool's
    /// draining workers.
    pub killed: BTreeSet<Pid>,
}

/// Everything counted since the master started (carried across re-execs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub pools: BTreeMap<String, PoolCounters>,
    /// Reloads by outcome: `applied`, `refused`.
    pub reloads: ByLabel,
    /// Watcher triggers by target: `config` or a pool's name.
    pub watch_triggers: ByLabel,
    /// Control requests by command name (`unknown` for anything unparsable).
    pub control_requests: ByLabel,
    /// Re-execs by outcome: `done`, `refused`.
    pub reexecs: ByLabel,
    /// `events -f` followers dropped because they did not read.
    pub followers_dropped: u64,
    /// Scrapes served (and refused: too large, not found, ...), by status code.
    pub scrapes: ByLabel,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The metric label for a stop reason (snake case).
pub fn reason_label(r: StopReason) -> &'static str {
    match r {
        StopReason::Retired => "retired",
        StopReason::ScaledDown => "scaled_down",
        StopReason::Shutdown => "shutdown",
        StopReason::AckTimeout => "ack_timeout",
        StopReason::Watchdog => "watchdog",
        StopReason::WorkerStopping => "worker_stopping",
        StopReason::Abandoned => "abandoned",
        StopReason::Recycled => "recycled",
        StopReason::Heartbeat => "heartbeat",
        StopReason::RolledBack => "rolled_back",
    }
}

impl Counters {
    /// Count one event of `pool`.
    pub fn pool_event(&mut self, pool: &str, ev: &PoolEvent) {
        let p = match self.pools.get_mut(pool) {
            Some(p) => p,
            None => self.pools.entry(pool.to_string()).or_default(),
        };
        match ev {
            PoolEvent::Spawned { .. } => p.spawns += 1,
            PoolEvent::SpawnFailed { master_side, .. } => bump(
                &mut p.spawn_failures,
                if *master_side { "master" } else { "worker" },
            ),
            PoolEvent::Acked { after, .. } => p.ack_seconds.observe(ACK_BUCKETS, secs(*after)),
            PoolEvent::AckTimeout { .. } => bump(&mut p.kills, "ack_timeout"),
            PoolEvent::WatchdogMissed { .. } => bump(&mut p.kills, "watchdog"),
            PoolEvent::HeartbeatMissed { .. } => bump(&mut p.kills, "heartbeat"),
            PoolEvent::StopTimeout { pid, .. } => {
                bump(&mut p.kills, "stop_timeout");
                p.killed.insert(*pid);
            }
            PoolEvent::Stopping { reason, .. } => bump(&mut p.stops, reason_label(*reason)),
            PoolEvent::Exited { pid, .. } => {
                let cause = if p.killed.remove(pid) {
                    "killed_after_timeout"
                } else {
                    "stopped"
                };
                bump(&mut p.exits, cause);
            }
            PoolEvent::Died { pid, acked, .. } => {
                p.killed.remove(pid);
                bump(
                    &mut p.exits,
                    if *acked {
                        "crash_after_ack"
                    } else {
                        "crash_before_ack"
                    },
                );
            }
            PoolEvent::Backoff { delay, .. } => {
                p.backoffs += 1;
                p.backoff_seconds = secs(*delay);
            }
            PoolEvent::GaveUp { .. } => p.gave_up += 1,
            PoolEvent::UpgradeStarted { .. } => bump(&mut p.upgrades, "started"),
            PoolEvent::UpgradeSuperseded { .. } => bump(&mut p.upgrades, "superseded"),
            PoolEvent::UpgradeDone { took, .. } => {
                bump(&mut p.upgrades, "done");
                p.upgrade_seconds
                    .entry("done".into())
                    .or_default()
                    .observe(UPGRADE_BUCKETS, secs(*took));
            }
            PoolEvent::UpgradeFailed { took, .. } => {
                bump(&mut p.upgrades, "abandoned");
                p.upgrade_seconds
                    .entry("abandoned".into())
                    .or_default()
                    .observe(UPGRADE_BUCKETS, secs(*took));
            }
            _ => {}
        }
    }

    /// Count one master-level event by its kind (src/master/events.rs);
    /// `target` is what it was about (a watched file's pool, or `config`).
    pub fn master_event(&mut self, kind: &str, target: Option<&str>) {
        match kind {
            "reload_applied" => bump(&mut self.reloads, "applied"),
            "reload_refused" => bump(&mut self.reloads, "refused"),
            "watch_triggered" => bump(&mut self.watch_triggers, target.unwrap_or("config")),
            "reexec_done" => bump(&mut self.reexecs, "done"),
            "reexec_refused" => bump(&mut self.reexecs, "refused"),
            _ => {}
        }
    }

    /// Count one control request (`name` from the command table: a small set).
    pub fn control_request(&mut self, name: &str) {
        bump(&mut self.control_requests, name);
    }

    pub fn scrape(&mut self, status: u16) {
        bump(&mut self.scrapes, &status.to_string());
    }

    /// A pool is gone from the master (removed by a reload and drained): its
    /// counters stay, so that rates over the removal are right, but the pids
    /// waiting for their exit are forgotten.
    pub fn pool_gone(&mut self, pool: &str) {
        if let Some(p) = self.pools.get_mut(pool) {
            p.killed.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_move_the_counters_they_name() {
        let mut c = Counters::default();
        c.pool_event(
            "web",
            &PoolEvent::Spawned {
                pid: 10,
                index: 0,
                version: 1,
            },
        );
        c.pool_event(
            "web",
            &PoolEvent::Acked {
                pid: 10,
                index: 0,
                version: 1,
                after: Duration::from_millis(30),
            },
        );
        c.pool_event(
            "web",
            &PoolEvent::Died {
                pid: 10,
                index: 0,
                version: 1,
                how: "exit 1".into(),
                acked: true,
            },
        );
        c.pool_event(
            "web",
            &PoolEvent::StopTimeout {
                pid: 11,
                timeout: Duration::from_secs(1),
            },
        );
        let exited = |pid| PoolEvent::Exited {
            pid,
            index: 1,
            version: 1,
            how: "signal 9".into(),
            after_stop: Duration::from_secs(1),
            reason: StopReason::Retired,
        };
        c.pool_event("web", &exited(11));
        c.pool_event("web", &exited(12));
        c.pool_event(
            "web",
            &PoolEvent::UpgradeFailed {
                id: 1,
                why: "x".into(),
                took: Duration::from_secs(3),
            },
        );
        let p = &c.pools["web"];
        assert_eq!(p.spawns, 1);
        assert_eq!(p.ack_seconds.count, 1);
        assert_eq!(
            p.ack_seconds.cumulative(ACK_BUCKETS).nth(2),
            Some((0.025, 0))
        );
        assert_eq!(
            p.ack_seconds.cumulative(ACK_BUCKETS).nth(3),
            Some((0.05, 1))
        );
        assert_eq!(p.exits["crash_after_ack"], 1);
        assert_eq!(p.exits["killed_after_timeout"], 1);
        assert_eq!(p.exits["stopped"], 1);
        assert!(p.killed.is_empty());
        assert_eq!(p.upgrades["abandoned"], 1);
        assert_eq!(p.upgrade_seconds["abandoned"].count, 1);
        c.master_event("reload_refused", None);
        c.master_event("watch_triggered", Some("web"));
        c.master_event("something_else", None);
        assert_eq!(c.reloads["refused"], 1);
        assert_eq!(c.watch_triggers["web"], 1);
    }

    #[test]
    fn a_histogram_from_other_bounds_is_resized_not_broken() {
        let mut h = Histogram {
            buckets: vec![1, 2],
            sum: 1.0,
            count: 3,
        };
        h.observe(ACK_BUCKETS, 100.0);
        assert_eq!(h.buckets.len(), ACK_BUCKETS.len());
        assert_eq!(h.count, 4);
        assert_eq!(h.cumulative(ACK_BUCKETS).last(), Some((60.0, 3)));
    }

    #[test]
    fn counters_round_trip_and_an_empty_document_is_the_default() {
        let mut c = Counters::default();
        c.control_request("status");
        c.pool_event(
            "a",
            &PoolEvent::StopTimeout {
                pid: 3,
                timeout: Duration::from_secs(1),
            },
        );
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Counters>(&text).unwrap(), c);
        assert_eq!(
            serde_json::from_str::<Counters>("{}").unwrap(),
            Counters::default()
        );
    }
}
