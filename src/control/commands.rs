//! What each control command does: one handler per command, on the master.
//!
//! Every request gets exactly one final reply (with `request_id` when it had an
//! `id`), except `worker:ack` and `worker:ping`, which get none (the connection is
//! closed, as einhorn does), and `upgrade`, which streams progress replies with
//! `wait: true` before its final one.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::codec::{self, Reply, Request};
use super::server::ConnId;
use crate::config::{parse_signal, AckMode, UpgradeStrategy};
use crate::master::Master;
use crate::pool::{Pool, Shutdown, WorkerState};

/// Command names with a one-line description, for `help` and completion.
pub const COMMANDS: &[(&str, &str)] = &[
    ("ehlo", "say hello (einhornsh does this on connect)"),
    ("help", "this list"),
    (
        "check",
        "readiness probe: ok only when every pool has its count acked (systemd, Kubernetes)",
    ),
    ("status", "human-readable table of pools and workers"),
    (
        "state",
        "machine-readable dump (JSON) of every pool and worker",
    ),
    ("inc", "one more worker (needs `pool` with several pools)"),
    ("dec", "one fewer worker (needs `pool` with several pools)"),
    (
        "set_workers N",
        "set the worker count (needs `pool` with several pools)",
    ),
    (
        "upgrade",
        "smooth rolling upgrade of `pool`, or of every pool; streams progress",
    ),
    (
        "upgrade_fleet",
        "fleet upgrade: all new workers, then retire all old ones",
    ),
    (
        "signal SIG...",
        "send signals to every worker (of `pool`, or of all pools)",
    ),
    (
        "die [SIG]",
        "graceful shutdown; workers get SIG (default: each pool's stop_signal)",
    ),
    ("reload", "re-read the config file and apply the difference"),
    ("version", "master version"),
    ("louder", "more verbose logging"),
    ("quieter", "less verbose logging"),
    (
        "worker:ack",
        "a worker is ready (sent by workers: {\"command\":\"worker:ack\",\"pid\":N})",
    ),
    (
        "worker:ping",
        "a worker is alive (recorded with its request_id; no reply)",
    ),
];

/// The command names alone, in [`COMMANDS`] order (for errors and completion).
pub fn command_names() -> impl Iterator<Item = &'static str> {
    COMMANDS
        .iter()
        .map(|(c, _)| c.split_once(' ').map_or(*c, |(name, _)| name))
}

enum Outcome {
    Ok(String),
    Err(String),
    /// The reply comes later (streamed upgrade).
    Later,
    /// No reply; close the connection (worker:ack / worker:ping).
    Silent,
}

impl Master {
    /// Decode and answer one request line from connection `conn`.
    pub(crate) fn handle_line(&mut self, conn: ConnId, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let req = match codec::decode(line) {
            Ok(r) => r,
            Err(f) => {
                log::warn!("control: unparsable request: {}", f.error);
                let reply = Reply::failure(format!("Could not parse command: {}", f.error), None);
                self.reply(conn, &reply, f.encoding);
                return;
            }
        };
        log::debug!(
            "control: {} {:?} pool={:?}",
            req.command,
            req.args,
            req.pool
        );
        let (id, enc) = (req.id.clone(), req.encoding);
        let outcome = self.dispatch(conn, &req);
        let reply = match outcome {
            Outcome::Ok(m) => Reply::new(m, id),
            Outcome::Err(m) => {
                log::info!("control: {} failed: {}", req.command, m);
                Reply::failure(m, id)
            }
            Outcome::Later => return,
            Outcome::Silent => {
                if !self.control.is_persistent(conn) {
                    self.hang_up(conn);
                }
                return;
            }
        };
        self.reply(conn, &reply, enc);
    }

    fn dispatch(&mut self, conn: ConnId, req: &Request) -> Outcome {
        // einhornsh cannot send a `pool` field: accept the pool name as the last
        // argument of the commands that address one pool.
        let rewritten = self.pool_from_args(req);
        let req = rewritten.as_ref().unwrap_or(req);
        let pool = req.pool.as_deref();
        match req.command.as_str() {
            "ehlo" => Outcome::Ok(format!(
                "Hello {}, this is einhyrningsins {} (pid {}), einhorn-compatible.",
                req.user.as_deref().unwrap_or("there"),
                env!("CARGO_PKG_VERSION"),
                self.pid
            )),
            "help" => Outcome::Ok(help()),
            // Readiness probe (src/sdnotify.rs builds the same summary as STATUS=).
            "check" => {
                let snap = crate::sdnotify::Snapshot::of(&self.pools, self.is_shutting_down());
                if snap.settled && !snap.shutting_down {
                    Outcome::Ok(format!("ready: {}", snap.status))
                } else {
                    Outcome::Err(format!("not ready: {}", snap.status))
                }
            }
            "version" => Outcome::Ok(format!("einhyrningsins {}", env!("CARGO_PKG_VERSION"))),
            "status" => match self.select(pool) {
                // No trailing spaces: YAML replies then stay readable `|` blocks.
                Ok(names) => Outcome::Ok(
                    self.status_table(&names)
                        .lines()
                        .map(str::trim_end)
                        .collect::<Vec<_>>()
                        .join("\n")
                        + "\n",
                ),
                Err(e) => Outcome::Err(e),
            },
            "state" => match self.select(pool) {
                Ok(names) => Outcome::Ok(
                    serde_json::to_string_pretty(&self.state_json(&names)).unwrap_or_default(),
                ),
                Err(e) => Outcome::Err(e),
            },
            "inc" | "dec" | "set_workers" => self.cmd_count(req),
            "upgrade" | "upgrade_fleet" => {
                if !req.args.is_empty() {
                    return Outcome::Err(format!("{} takes no arguments", req.command));
                }
                let strategy = (req.command == "upgrade_fleet").then_some(UpgradeStrategy::Fleet);
                match self.start_upgrade(pool, strategy, Some((conn, req.id.clone(), req.encoding)))
                {
                    Ok(_) => Outcome::Later,
                    Err(e) => Outcome::Err(e),
                }
            }
            "signal" => {
                if req.args.is_empty() {
                    return Outcome::Err("usage: signal SIG [SIG...]".into());
                }
                let mut sigs = Vec::new();
                for a in &req.args {
                    match parse_signal(a) {
                        Ok(s) => sigs.push(s),
                        Err(e) => return Outcome::Err(e),
                    }
                }
                let mut sent = 0;
                for s in &sigs {
                    match self.signal_pools(pool, *s) {
                        Ok(n) => sent += n,
                        Err(e) => return Outcome::Err(e),
                    }
                }
                let names: Vec<&str> = sigs.iter().map(|s| s.as_str()).collect();
                Outcome::Ok(format!(
                    "Sent {} to workers ({} signal(s) sent)",
                    names.join(", "),
                    sent
                ))
            }
            "die" => {
                let how = match req.args.as_slice() {
                    [] => Shutdown::Graceful,
                    [s] => match parse_signal(s) {
                        Ok(sig) => Shutdown::With(sig),
                        Err(e) => return Outcome::Err(e),
                    },
                    _ => return Outcome::Err("usage: die [SIG]".into()),
                };
                log::info!("control: die ({how:?})");
                self.shutdown(how);
                Outcome::Ok(
                    "Shutting down: workers are draining; the master exits when they are gone"
                        .into(),
                )
            }
            "reload" => match self.reload("reload command") {
                Ok((summary, _)) => Outcome::Ok(summary),
                Err(e) => Outcome::Err(format!("Reload failed, configuration unchanged: {e}")),
            },
            "louder" | "quieter" => {
                let lvl = crate::log::step(req.command == "louder");
                log::warn!("log level is now {lvl}");
                Outcome::Ok(format!("Log level is now {lvl}"))
            }
            "worker:ack" => {
                match req.pid {
                    Some(pid) => match self.worker_ack(pid) {
                        Ok(()) => {}
                        Err(e) => log::warn!("control: worker:ack: {e}"),
                    },
                    None => log::warn!("control: worker:ack without a pid"),
                }
                Outcome::Silent
            }
            "worker:ping" => {
                if let Some(pid) = req.pid {
                    let rid = req.request_id.as_ref().map(scalar_text);
                    let res = self
                        .pool_of_pid(pid)
                        .and_then(|n| self.pools.get_mut(&n))
                        .map(|e| e.pool.ping(pid, rid, Instant::now()));
                    if !matches!(res, Some(Ok(()))) {
                        log::warn!("control: worker:ping from pid {pid}, which is not a worker");
                    }
                }
                Outcome::Silent
            }
            other => Outcome::Err(format!(
                "Unknown command: {other:?}. Commands: {}",
                command_names().collect::<Vec<_>>().join(", ")
            )),
        }
    }

    /// `inc web`, `set_workers 4 web`, `upgrade web`: the same request with `pool`.
    fn pool_from_args(&self, req: &Request) -> Option<Request> {
        if req.pool.is_some() {
            return None;
        }
        let takes = match req.command.as_str() {
            "inc" | "dec" | "upgrade" | "upgrade_fleet" | "status" | "state" => 0,
            "set_workers" => 1,
            _ => return None,
        };
        if req.args.len() != takes + 1 {
            return None;
        }
        let last = req.args.last()?;
        if !self.pools.contains_key(last) {
            return None;
        }
        let mut r = req.clone();
        r.pool = r.args.pop();
        Some(r)
    }

    /// Pools a read command applies to: the one named, or all.
    fn select(&self, pool: Option<&str>) -> Result<Vec<String>, String> {
        match pool {
            Some(p) if self.pools.contains_key(p) => Ok(vec![p.to_string()]),
            Some(p) => Err(self.unknown_pool(p)),
            None => Ok(self.pools.keys().cloned().collect()),
        }
    }

    fn cmd_count(&mut self, req: &Request) -> Outcome {
        let name = match (&req.pool, self.pools.len()) {
            (Some(p), _) => p.clone(),
            (None, 1) => match self.pools.keys().next() {
                Some(n) => n.clone(),
                None => return Outcome::Err("no pools".into()),
            },
            (None, _) => {
                return Outcome::Err(format!(
                    "{} changes a count: say which pool (\"pool\": NAME); pools: {}",
                    req.command,
                    self.pools.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            }
        };
        let result = match (req.command.as_str(), req.args.as_slice()) {
            ("inc", []) => self.change_count(&name, |c| c.saturating_add(1)),
            ("dec", []) => self.change_count(&name, |c| c.saturating_sub(1)),
            ("set_workers", [n]) => match n.trim().parse::<usize>() {
                Ok(n) => self.change_count(&name, |_| n),
                _ => {
                    return Outcome::Err(format!(
                        "set_workers: {n:?} is not a worker count (0-100000)"
                    ))
                }
            },
            ("set_workers", _) => return Outcome::Err("usage: set_workers N".into()),
            (c, _) => return Outcome::Err(format!("{c} takes no arguments")),
        };
        match result {
            Ok(n) => Outcome::Ok(format!("pool {name}: count is now {n}")),
            Err(e) => Outcome::Err(e),
        }
    }

    fn status_table(&self, names: &[String]) -> String {
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
                let state = match &w.state {
                    WorkerState::Spawning => "spawning".to_string(),
                    WorkerState::Unacked { .. } => "unacked".to_string(),
                    WorkerState::Acked { .. } => "acked".to_string(),
                    WorkerState::Draining { reason, .. } => {
                        format!("draining ({})", reason.as_str())
                    }
                };
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

    fn state_json(&self, names: &[String]) -> Value {
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
                    })
                })
                .collect();
            pools.insert(
                name.clone(),
                json!({
                    "count": p.count(),
                    "version": p.version(),
                    "acked": p.acked(),
                    "draining": p.draining(),
                    "state": pool_state(p, now),
                    "command": p.spec().command,
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
                    "last_change": e.last_change.as_ref().map(|(at, what)| json!({
                        "what": what,
                        "secs_ago": secs(now.saturating_duration_since(*at)),
                    })),
                    "workers": workers,
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

fn pool_state(p: &Pool, now: Instant) -> String {
    if p.is_shutting_down() {
        return "shutting down (draining)".into();
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

fn help() -> String {
    let mut s = String::from("Commands (add \"pool\": NAME to address one pool):\n");
    for (c, d) in COMMANDS {
        let _ = writeln!(s, "  {c:<16} {d}");
    }
    s
}

fn ago(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
