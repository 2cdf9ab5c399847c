//! What `status` (a table for humans) and `state` (JSON for programs) show.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::Master;
use crate::config::{AckMode, UpgradeStrategy};
use crate::pool::{Pool, WorkerState};

impl Master {
    pub(super) fn status_table(&self, names: &[String]) -> String {
        let now = Instant::now();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "einhyrningsins {} pid {} up {} control {}{}",
            env!("CARGO_PKG_VERSION"),
            self.pid,
            ago(self.uptime()),
            self.control.path().display(),
            if self.is_shutting_down() {
                " SHUTTING DOWN"
            } else {
                ""
            }
        );
        // A refused reload leaves everything running as before, so this line is
        // the operator's only sign in `status` that their edit was not applied.
        if let Some(r) = &self.last_reload {
            let _ = writeln!(
                s,
                "last reload ({}) {} ago: {}",
                r.trigger,
                ago(now.saturating_duration_since(r.at)),
                match &r.result {
                    Ok(m) => m.clone(),
                    Err(e) => format!("FAILED, configuration unchanged: {e}"),
                }
            );
        }
        if let Some((at, what, pid, why)) = self.rejected.recent.back() {
            let _ = writeln!(
                s,
                "worker messages refused: {} (last {} ago: {what} for pid {pid}: {why})",
                self.rejected.count,
                ago(now.saturating_duration_since(*at))
            );
        }
        if let Some((path, f)) = crate::log::file_stats() {
            let _ = writeln!(
                s,
                "log file {}: {} line(s), {} rotation(s), {} dropped{}",
                path.display(),
                f.lines,
                f.rotations,
                f.dropped,
                f.last_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(" (last error: {e})"))
            );
        }
        for name in names {
            let Some(e) = self.pools.get(name) else {
                continue;
            };
            let p = &e.pool;
            let binds: Vec<&str> = e.sockets.iter().map(|s| s.local_addr()).collect();
            let _ = writeln!(
                s,
                "\npool {name}: {}/{} acked, {} worker(s), {} draining, version {}, {} ack, binds [{}]",
                p.acked(),
                p.count(),
                p.len(),
                p.draining(),
                p.version(),
                match p.spec().ack {
                    AckMode::Timer => "timer",
                    AckMode::Manual => "manual",
                    AckMode::Notify => "notify",
                },
                binds.join(", ")
            );
            let _ = writeln!(s, "  state: {}", pool_state(p, now));
            if let Some(o) = self.output_status(name) {
                let _ = writeln!(s, "{o}");
            }
            if let Some(configured) = self.configured_count(name) {
                let _ = writeln!(
                    s,
                    "  count: {} set at run time ({} says {configured}; a reload keeps {} \
                     unless the file's count changes)",
                    p.count(),
                    if self.config.source.is_some() {
                        "the file"
                    } else {
                        "the command line"
                    },
                    p.count()
                );
            }
            if let Some(argv) = shown_argv(p.spec(), &e.sockets) {
                let _ = writeln!(s, "  argv: {}", argv.join(" "));
            }
            if let Some(c) = p.canary() {
                let _ = writeln!(
                    s,
                    "  canary: {} worker(s) at version {} (base version {}), started {} ago{}",
                    c.n,
                    c.version,
                    c.base,
                    ago(now.saturating_duration_since(c.started)),
                    match (c.holding_since, c.hold) {
                        (Some(h), Some(hold)) => format!(
                            ", holding for {}, auto-promote in {}",
                            ago(now.saturating_duration_since(h)),
                            ago(crate::pool::later(h, hold).saturating_duration_since(now))
                        ),
                        (Some(h), None) => format!(
                            ", holding for {}: `promote` or `rollback`",
                            ago(now.saturating_duration_since(h))
                        ),
                        (None, _) => String::new(),
                    }
                );
            }
            let recycling: Vec<String> = p
                .recycling()
                .map(|(w, r)| format!("pid {} ({})", w.pid.unwrap_or(0), r.describe()))
                .collect();
            if !recycling.is_empty() {
                let _ = writeln!(s, "  recycling: {}", recycling.join(", "));
            }
            if let Some((at, what)) = &e.last_change {
                let _ = writeln!(
                    s,
                    "  last change: {what} {} ago",
                    ago(now.saturating_duration_since(*at))
                );
            }
            if let Some(o) = p.last_upgrade() {
                let _ = writeln!(
                    s,
                    "  last upgrade: #{} to version {} {} ago: {}",
                    o.id,
                    o.version,
                    ago(now.saturating_duration_since(o.at)),
                    match &o.result {
                        Ok(()) => "done".to_string(),
                        Err(e) => format!("FAILED: {e}"),
                    }
                );
            }
            let _ = writeln!(
                s,
                "  {:>8} {:>5} {:>7} {:<10} {:>8} {:<14} PING",
                "PID", "INDEX", "VERSION", "STATE", "UPTIME", "SIGNALED"
            );
            for w in p.workers_sorted() {
                let mut state = match &w.state {
                    WorkerState::Spawning => "spawning".to_string(),
                    WorkerState::Unacked { .. } => "unacked".to_string(),
                    WorkerState::Acked { .. } => "acked".to_string(),
                    WorkerState::Draining { reason, .. } => {
                        format!("draining ({})", reason.as_str())
                    }
                };
                if p.is_canary_version(w.version) && !w.is_draining() {
                    state.push_str(" canary");
                }
                let signaled: Vec<&str> = w
                    .signals
                    .iter()
                    .map(|s| s.as_str().trim_start_matches("SIG"))
                    .collect();
                let ping = w
                    .last_ping
                    .as_ref()
                    .map(|(t, r)| {
                        format!(
                            "{} ago {}",
                            ago(now.saturating_duration_since(*t)),
                            r.as_deref().unwrap_or("")
                        )
                    })
                    .unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    s,
                    "  {:>8} {:>5} {:>7} {:<10} {:>8} {:<14} {}",
                    w.pid.map_or("-".into(), |p| p.to_string()),
                    w.index,
                    w.version,
                    state,
                    ago(now.saturating_duration_since(w.spawned_at)),
                    if signaled.is_empty() {
                        "-".to_string()
                    } else {
                        signaled.join(",")
                    },
                    ping.trim_end()
                );
                if let Some(st) = &w.notify_status {
                    let _ = writeln!(s, "  {:>8} status: {st}", "");
                }
            }
        }
        s
    }

    pub(super) fn state_json(&self, names: &[String]) -> Value {
        let now = Instant::now();
        let secs = |d: Duration| (d.as_secs_f64() * 1000.0).round() / 1000.0;
        let mut pools = serde_json::Map::new();
        for name in names {
            let Some(e) = self.pools.get(name) else {
                continue;
            };
            let p = &e.pool;
            let workers: Vec<Value> = p
                .workers_sorted()
                .into_iter()
                .map(|w| {
                    let (state, reason) = match &w.state {
                        WorkerState::Spawning => ("spawning", None),
                        WorkerState::Unacked { .. } => ("unacked", None),
                        WorkerState::Acked { .. } => ("acked", None),
                        WorkerState::Draining { reason, .. } => ("draining", Some(reason.as_str())),
                    };
                    json!({
                        "pid": w.pid,
                        "index": w.index,
                        "version": w.version,
                        "state": state,
                        "stop_reason": reason,
                        "acked": w.acked_at.is_some(),
                        "signaled": w.signals.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                        "spawned_secs_ago": secs(now.saturating_duration_since(w.spawned_at)),
                        "acked_secs_ago": w.acked_at.map(|t| secs(now.saturating_duration_since(t))),
                        "last_ping": w.last_ping.as_ref().map(|(t, r)| json!({
                            "secs_ago": secs(now.saturating_duration_since(*t)),
                            "request_id": r,
                        })),
                        "notify_status": w.notify_status,
                        "canary": p.is_canary_version(w.version) && !w.is_draining(),
                        "recycling": w.recycle.map(|r| r.describe()),
                    })
                })
                .collect();
            pools.insert(
                name.clone(),
                json!({
                    "count": p.count(),
                    "configured_count": self.config.pools.get(name).map(|c| c.count),
                    "version": p.version(),
                    "acked": p.acked(),
                    "draining": p.draining(),
                    "state": pool_state(p, now),
                    "command": p.spec().command,
                    "argv": shown_argv(p.spec(), &e.sockets).unwrap_or_else(|| p.spec().command.clone()),
                    "binds": e.sockets.iter().map(|s| s.local_addr()).collect::<Vec<_>>(),
                    "consecutive_failures": p.failures(),
                    "gave_up": p.gave_up(),
                    "upgrading": p.upgrading().map(|(id, st, since)| json!({
                        "id": id,
                        "strategy": match st { UpgradeStrategy::Smooth => "smooth", UpgradeStrategy::Fleet => "fleet" },
                        "secs": secs(now.saturating_duration_since(since)),
                    })),
                    "last_upgrade": p.last_upgrade().map(|o| json!({
                        "id": o.id,
                        "version": o.version,
                        "secs_ago": secs(now.saturating_duration_since(o.at)),
                        "ok": o.result.is_ok(),
                        "error": o.result.as_ref().err(),
                    })),
                    "canary": p.canary().map(|c| json!({
                        "upgrade": c.upgrade,
                        "version": c.version,
                        "base_version": c.base,
                        "workers": c.n,
                        "secs": secs(now.saturating_duration_since(c.started)),
                        "holding_secs": c.holding_since.map(|h| secs(now.saturating_duration_since(h))),
                        "hold_secs": c.hold.map(secs),
                    })),
                    "previous_version": p.previous().map(|v| v.0),
                    "releases": self.releases_json(name, p),
                    "last_change": e.last_change.as_ref().map(|(at, what)| json!({
                        "what": what,
                        "secs_ago": secs(now.saturating_duration_since(*at)),
                    })),
                    "workers": workers,
                    "output": self.output_json(name),
                }),
            );
        }
        json!({
            "master": {
                "pid": self.pid,
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_secs": secs(self.uptime()),
                "control_socket": self.control.path(),
                "config": self.config.source,
                "shutting_down": self.is_shutting_down(),
                "log_level": log::max_level().to_string(),
                "log_file": crate::log::file_stats().map(|(path, stats)| json!({"path": path, "stats": stats})),
                "rejected_worker_messages": {
                    "count": self.rejected.count,
                    "recent": self.rejected.recent.iter().map(|(at, what, pid, why)| json!({
                        "command": what,
                        "pid": pid,
                        "why": why,
                        "secs_ago": secs(now.saturating_duration_since(*at)),
                    })).collect::<Vec<_>>(),
                },
                "last_reload": self.last_reload.as_ref().map(|r| json!({
                    "trigger": r.trigger,
                    "secs_ago": secs(now.saturating_duration_since(r.at)),
                    "ok": r.result.is_ok(),
                    "message": match &r.result { Ok(m) | Err(m) => m },
                })),
            },
            "pools": pools,
        })
    }
}

impl Master {
    /// The recorded releases of the versions a pool runs or may roll back to.
    fn releases_json(&self, name: &str, p: &Pool) -> Value {
        let mut versions: Vec<u64> = p.workers_sorted().iter().map(|w| w.version).collect();
        versions.push(p.version());
        versions.extend(p.previous().map(|v| v.0));
        versions.sort_unstable();
        versions.dedup();
        let mut m = serde_json::Map::new();
        for v in versions {
            if let Some(r) = self.releases.get(name, v) {
                m.insert(v.to_string(), r.to_json());
            }
        }
        Value::Object(m)
    }
}

impl Master {
    /// The configured count of `name` when the running count differs from it
    /// (`inc`, `dec`, `set_workers`, TTIN/TTOU since the last reload).
    fn configured_count(&self, name: &str) -> Option<usize> {
        let configured = self.config.pools.get(name)?.count;
        let running = self.pools.get(name)?.pool.count();
        (configured != running).then_some(configured)
    }
}

fn pool_state(p: &Pool, now: Instant) -> String {
    if p.is_shutting_down() {
        return "shutting down (draining)".into();
    }
    if let Some(c) = p.canary() {
        return match c.holding_since {
            Some(_) => format!(
                "canary holding (#{}, version {} on {} worker(s))",
                c.upgrade, c.version, c.n
            ),
            None => format!("canary starting (#{}, version {})", c.upgrade, c.version),
        };
    }
    if let Some((id, st, since)) = p.upgrading() {
        return format!(
            "upgrading (#{id}, {}, {} so far)",
            match st {
                UpgradeStrategy::Smooth => "smooth",
                UpgradeStrategy::Fleet => "fleet",
            },
            ago(now.saturating_duration_since(since))
        );
    }
    if p.gave_up() {
        return format!("GAVE UP after {} consecutive failures", p.failures());
    }
    match p.respawn_at() {
        Some(t) if t > now => format!(
            "backing off: {} consecutive failure(s), next spawn in {}",
            p.failures(),
            ago(t - now)
        ),
        _ if p.acked() >= p.count() => "running".into(),
        _ => "starting".into(),
    }
}

/// The argv with `{fd:N}` resolved to what this pool's workers get.
fn shown_argv(
    spec: &crate::config::PoolConfig,
    sockets: &[crate::bind::BoundSocket],
) -> Option<Vec<String>> {
    use std::os::fd::AsRawFd;
    let fds: Vec<i32> = sockets.iter().map(AsRawFd::as_raw_fd).collect();
    crate::config::placeholders::shown_argv(spec, Some(&fds))
}

pub(super) fn ago(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
