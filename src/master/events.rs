//! What happened, told once: every [`PoolEvent`] a pool records, and the
//! master's own events (reloads, watcher triggers), is logged here with its
//! level, kept in a small ring for `events`, and written to every client that
//! follows them (`events -f`) as a JSON line.
//!
//! Followers cost nothing when there are none (no timer, no wake-up: events are
//! only formatted when someone follows or asks). A follower that does not read
//! is dropped once [`FOLLOWER_QUEUE`] bytes wait for it, with a notice in the
//! log; it never blocks the loop or grows the master's memory.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

use super::{Master, ReplyTo};
use crate::control::protocol::Reply;
use crate::control::server::ConnId;
use crate::pool::{Level, PoolEvent};

/// Events kept for `events` without `-f`.
const RING: usize = 512;
/// Bytes queued for a follower beyond which it is dropped.
pub(super) const FOLLOWER_QUEUE: usize = 256 * 1024;

/// The ring of recent events and the clients following new ones.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct EventLog {
    ring: VecDeque<String>,
    followers: Vec<ReplyTo>,
}

impl EventLog {
    fn push(&mut self, line: String) {
        if self.ring.len() == RING {
            self.ring.pop_front();
        }
        self.ring.push_back(line);
    }

    pub(super) fn recent(&self) -> String {
        let mut s = String::new();
        for l in &self.ring {
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    pub(super) fn follow(&mut self, who: ReplyTo) {
        self.followers.push(who);
    }

    pub(super) fn forget(&mut self, conn: ConnId) {
        self.followers.retain(|f| f.conn != conn);
    }

    fn has(&self, conn: ConnId) -> bool {
        self.followers.iter().any(|f| f.conn == conn)
    }
}

impl Master {
    /// Does this connection follow the events?
    pub(super) fn follows(&self, conn: ConnId) -> bool {
        self.events.has(conn)
    }

    /// `events -f`: this connection gets every event from now on.
    pub(super) fn follow_events(&mut self, who: ReplyTo) {
        self.control.set_busy(who.conn, true);
        self.events.follow(who);
    }

    /// Log and publish what a pool recorded since it was last asked.
    pub(super) fn publish(&mut self, pool: &str) {
        let Some(e) = self.pools.get_mut(pool) else {
            return;
        };
        for ev in e.pool.take_events() {
            log_event(pool, &ev);
            self.counters.pool_event(pool, &ev);
            let mut fields = pool_event_fields(&ev);
            fields.insert("pool".into(), Value::String(pool.to_string()));
            fields.insert("message".into(), Value::String(ev.to_string()));
            self.record(ev.kind(), fields);
        }
    }

    /// A master-level event (already logged by the caller).
    pub(super) fn master_event(&mut self, kind: &'static str, fields: Value) {
        let target = fields.get("pool").and_then(Value::as_str);
        self.counters.master_event(kind, target);
        let fields = match fields {
            Value::Object(m) => m,
            other => {
                let mut m = Map::new();
                m.insert("detail".into(), other);
                m
            }
        };
        self.record(kind, fields);
    }

    fn record(&mut self, kind: &'static str, mut fields: Map<String, Value>) {
        fields.insert(
            "ts".into(),
            Value::String(humantime::format_rfc3339_millis(SystemTime::now()).to_string()),
        );
        fields.insert("event".into(), Value::String(kind.into()));
        let line = Value::Object(fields).to_string();
        let followers = std::mem::take(&mut self.events.followers);
        let mut kept = Vec::with_capacity(followers.len());
        for f in followers {
            if !self.control.is_open(f.conn) {
                continue;
            }
            if self.control.queued(f.conn) > FOLLOWER_QUEUE {
                log::warn!(
                    "events: dropping a follower that does not read ({} bytes queued)",
                    self.control.queued(f.conn)
                );
                self.counters.followers_dropped += 1;
                self.control.set_busy(f.conn, false);
                self.control.close(self.poll.registry(), f.conn);
                continue;
            }
            let reply = Reply::progress(line.clone(), f.request_id.clone());
            self.reply(f.conn, &reply, f.encoding);
            kept.push(f);
        }
        self.events.followers = kept;
        self.events.push(line);
    }
}

/// A reload's plan as the `reload_applied` event carries it.
pub(super) fn diff_json(d: &crate::config::ConfigDiff) -> Value {
    json!({
        "added": d.added,
        "removed": d.removed,
        "scaled": d.scaled.iter().map(|(p, from, to)| json!({"pool": p, "from": from, "to": to})).collect::<Vec<_>>(),
        "rolled": d.rolled.iter().map(|(p, keys)| json!({"pool": p, "keys": keys})).collect::<Vec<_>>(),
        "retuned": d.retuned,
        "unchanged": d.unchanged,
        "global": d.global,
    })
}

fn log_event(pool: &str, ev: &PoolEvent) {
    let level = match ev.level() {
        Level::Debug => log::Level::Debug,
        Level::Info => log::Level::Info,
        Level::Warn => log::Level::Warn,
        Level::Error => log::Level::Error,
    };
    log::log!(level, "pool {pool}: {ev}");
}

fn ms(d: Duration) -> Value {
    // Milliseconds, to the microsecond.
    json!((d.as_secs_f64() * 1e6).round() / 1e3)
}

/// The machine-readable fields of a pool event.
fn pool_event_fields(ev: &PoolEvent) -> Map<String, Value> {
    let v = match ev {
        PoolEvent::Spawned {
            pid,
            index,
            version,
        } => json!({"pid": pid, "index": index, "version": version}),
        PoolEvent::SpawnFailed {
            index,
            version,
            error,
            master_side,
        } => {
            json!({"index": index, "version": version, "error": error, "master_side": master_side})
        }
        PoolEvent::Acked {
            pid,
            index,
            version,
            after,
        } => json!({"pid": pid, "index": index, "version": version, "after_ms": ms(*after)}),
        PoolEvent::AckIgnored { pid } | PoolEvent::WorkerStopping { pid } => json!({"pid": pid}),
        PoolEvent::AckTimeout { pid, timeout } => {
            json!({"pid": pid, "timeout_ms": ms(*timeout)})
        }
        PoolEvent::WatchdogMissed { pid, every } => json!({"pid": pid, "every_ms": ms(*every)}),
        PoolEvent::Stopping {
            pid,
            signal,
            reason,
        } => json!({"pid": pid, "signal": signal.as_str(), "reason": reason.as_str()}),
        PoolEvent::StopTimeout { pid, timeout } => {
            json!({"pid": pid, "signal": "SIGKILL", "timeout_ms": ms(*timeout)})
        }
        PoolEvent::Exited {
            pid,
            index,
            version,
            how,
            after_stop,
            reason,
        } => json!({
            "pid": pid, "index": index, "version": version, "status": how,
            "cause": reason.as_str(), "after_stop_ms": ms(*after_stop),
        }),
        PoolEvent::Died {
            pid,
            index,
            version,
            how,
            acked,
        } => json!({
            "pid": pid, "index": index, "version": version, "status": how,
            "cause": if *acked { "crash after ack" } else { "crash before ack" },
        }),
        PoolEvent::Backoff { delay, failures } => {
            json!({"delay_ms": ms(*delay), "failures": failures})
        }
        PoolEvent::GaveUp { failures, retries } => {
            json!({"failures": failures, "retries": retries})
        }
        PoolEvent::Revived | PoolEvent::Stopped => json!({}),
        PoolEvent::CountChanged { from, to } => json!({"from": from, "to": to}),
        PoolEvent::UpgradeStarted {
            id,
            version,
            count,
            how,
        } => json!({"upgrade": id, "version": version, "count": count, "how": how}),
        PoolEvent::UpgradeSuperseded { id, by } => json!({"upgrade": id, "by": by}),
        PoolEvent::UpgradeDone {
            id,
            version,
            count,
            took,
        } => json!({"upgrade": id, "version": version, "count": count, "took_ms": ms(*took)}),
        PoolEvent::UpgradeFailed { id, why, took } => {
            json!({"upgrade": id, "error": why, "took_ms": ms(*took)})
        }
        PoolEvent::CanaryHolding {
            id,
            version,
            n,
            hold,
        } => json!({"upgrade": id, "version": version, "canaries": n, "hold_ms": hold.map(ms)}),
        PoolEvent::CanaryPromoted { id, auto } => json!({"upgrade": id, "auto": auto}),
        PoolEvent::CanaryRolledBack { id, why } => json!({"upgrade": id, "error": why}),
        PoolEvent::RollbackStarted { id, from, to } => {
            json!({"upgrade": id, "from_version": from, "to_version": to})
        }
        PoolEvent::Recycling { pid, reason } => {
            json!({"pid": pid, "reason": reason.describe()})
        }
        PoolEvent::HeartbeatMissed { pid, timeout } => {
            json!({"pid": pid, "timeout_ms": ms(*timeout)})
        }
    };
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
