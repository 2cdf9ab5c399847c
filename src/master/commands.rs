//! What each control command does to the master: a request line is decoded and
//! parsed once into a typed [`Command`] (src/control/protocol/command.rs), then
//! one `match` runs its handler.
//!
//! Every request gets exactly one final reply (with `request_id` when it had an
//! `id`), except `worker:ack` and `worker:ping`, which get none (the connection is
//! closed, as einhorn does), and `upgrade`, which streams progress replies with
//! `wait: true` before its final one.

use std::fmt::Write as _;
use std::time::Instant;

use crate::control::protocol::{self, Command, Parsed, Reply, UpgradeKind, COMMANDS};
use crate::control::server::ConnId;

use super::phase::StopRequest;
use super::upgrades::Rollout;
use super::{Master, ReplyTo, RuntimeError};

/// How a handler answers.
enum Outcome {
    Ok(String),
    Err(String),
    /// The reply comes later (streamed upgrade).
    Later,
    /// No reply; close the connection (worker:ack / worker:ping).
    Silent,
}

impl From<Result<String, RuntimeError>> for Outcome {
    fn from(r: Result<String, RuntimeError>) -> Outcome {
        match r {
            Ok(m) => Outcome::Ok(m),
            Err(e) => Outcome::Err(e.to_string()),
        }
    }
}

impl Master {
    /// Decode and answer one request line from connection `conn`.
    pub(super) fn handle_line(&mut self, conn: ConnId, line: &[u8]) {
        let req = match protocol::decode(line) {
            Ok(r) => r,
            Err(f) => {
                log::warn!("control: unparsable request: {}", f.error);
                self.counters.control_request("unknown");
                let reply = Reply::failure(format!("Could not parse command: {}", f.error), None);
                self.reply(conn, &reply, f.encoding);
                return;
            }
        };
        let (id, enc) = (req.id.clone(), req.encoding);
        let parsed = Command::parse(&req, |p| self.pools.contains_key(p));
        self.counters.control_request(match &parsed {
            Ok(p) => p.command.name(),
            Err(_) => "unknown",
        });
        let outcome = match parsed {
            Ok(parsed) => {
                log::debug!(
                    "control: {} {:?} pool={:?}",
                    parsed.command.name(),
                    req.args,
                    parsed.pool
                );
                self.dispatch(conn, &req, parsed)
            }
            Err(e) => Outcome::Err(e.to_string()),
        };
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

    fn dispatch(&mut self, conn: ConnId, req: &protocol::Request, parsed: Parsed) -> Outcome {
        let pool = parsed.pool.as_deref();
        // A pool's user (src/master/identities.rs) may ack and ping, and say
        // hello; it does not control the master.
        let harmless = matches!(
            parsed.command,
            Command::Ehlo { .. } | Command::Version | Command::Help
        );
        if parsed.command.spec().scope != protocol::command::Scope::Worker
            && !harmless
            && self.worker_only(conn)
        {
            return Outcome::Err(format!(
                "permission denied: {} comes from a pool's user, which may send worker messages only",
                parsed.command.name()
            ));
        }
        match parsed.command {
            Command::Ehlo { user } => Outcome::Ok(format!(
                "Hello {}, this is einhyrningsins {} (pid {}), einhorn-compatible.",
                user.as_deref().unwrap_or("there"),
                env!("CARGO_PKG_VERSION"),
                self.pid
            )),
            Command::Help => Outcome::Ok(help()),
            Command::Check => {
                let snap = self.sd_snapshot();
                if snap.settled && !snap.shutting_down {
                    Outcome::Ok(format!("ready: {}", snap.status))
                } else {
                    Outcome::Err(format!("not ready: {}", snap.status))
                }
            }
            Command::Events { follow: false } => Outcome::Ok(self.events.recent()),
            Command::Stats => Outcome::Ok(self.stats_json(pool)),
            Command::Events { follow: true } => {
                self.follow_events(ReplyTo {
                    conn,
                    request_id: req.id.clone(),
                    encoding: req.encoding,
                });
                Outcome::Later
            }
            Command::Logs {
                lines,
                follow: false,
            } => match self.recent_logs(pool, lines) {
                Ok(m) => Outcome::Ok(m),
                Err(e) => Outcome::Err(e),
            },
            Command::Logs {
                lines,
                follow: true,
            } => {
                let to = ReplyTo {
                    conn,
                    request_id: req.id.clone(),
                    encoding: req.encoding,
                };
                match self.follow_logs(to, pool, lines) {
                    Ok(()) => Outcome::Later,
                    Err(e) => Outcome::Err(e),
                }
            }
            Command::ReopenLogs => Outcome::Ok(self.reopen_logs()),
            Command::Version => {
                Outcome::Ok(format!("einhyrningsins {}", env!("CARGO_PKG_VERSION")))
            }
            // No trailing spaces: YAML replies then stay readable `|` blocks.
            Command::Status => self
                .select(pool)
                .map(|names| {
                    self.status_table(&names)
                        .lines()
                        .map(str::trim_end)
                        .collect::<Vec<_>>()
                        .join("\n")
                        + "\n"
                })
                .into(),
            Command::State => self
                .select(pool)
                .map(|names| {
                    serde_json::to_string_pretty(&self.state_json(&names)).unwrap_or_default()
                })
                .into(),
            Command::Inc => self.cmd_count("inc", pool, |c| c.saturating_add(1)).into(),
            Command::Dec => self.cmd_count("dec", pool, |c| c.saturating_sub(1)).into(),
            Command::SetWorkers(n) => self.cmd_count("set_workers", pool, |_| n).into(),
            Command::Upgrade { kind, canary } => {
                let strategy = match kind {
                    UpgradeKind::Configured => None,
                    UpgradeKind::Fleet => Some(crate::config::UpgradeStrategy::Fleet),
                };
                self.rollout(conn, req, pool, Rollout::Upgrade { strategy, canary })
            }
            Command::Promote => self.rollout(conn, req, pool, Rollout::Promote),
            Command::Rollback => self.rollout(conn, req, pool, Rollout::Rollback),
            Command::Signal(sigs) => {
                let mut sent = 0;
                for s in &sigs {
                    match self.signal_pools(pool, *s) {
                        Ok(n) => sent += n,
                        Err(e) => return Outcome::Err(e.to_string()),
                    }
                }
                let names: Vec<&str> = sigs.iter().map(|s| s.as_str()).collect();
                Outcome::Ok(format!(
                    "Sent {} to workers ({} signal(s) sent)",
                    names.join(", "),
                    sent
                ))
            }
            Command::Die(sig) => {
                self.stop(StopRequest::Die(sig), "control: die");
                Outcome::Ok(
                    "Shutting down: workers are draining; the master exits when they are gone"
                        .into(),
                )
            }
            Command::Reload => match self.reload("reload command") {
                Ok(r) => Outcome::Ok(r.summary),
                Err(e) => Outcome::Err(format!("Reload failed, configuration unchanged: {e}")),
            },
            Command::Reexec { upgrade } => {
                let to = ReplyTo {
                    conn,
                    request_id: req.id.clone(),
                    encoding: req.encoding,
                };
                self.request_reexec(to, upgrade);
                Outcome::Later
            }
            Command::Louder | Command::Quieter => {
                let lvl = crate::log::step(parsed.command == Command::Louder);
                log::warn!("log level is now {lvl}");
                Outcome::Ok(format!("Log level is now {lvl}"))
            }
            Command::WorkerAck { pid } | Command::WorkerPing { pid, .. }
                if self.refused_sender(conn, parsed.command.name(), pid) =>
            {
                Outcome::Silent
            }
            Command::WorkerAck { pid } => {
                if let Err(e) = self.worker_ack(pid) {
                    log::warn!("control: worker:ack: {e}");
                }
                Outcome::Silent
            }
            Command::WorkerPing { pid, request_id } => {
                if let Err(e) = self.worker_ping(pid, request_id) {
                    log::warn!("control: worker:ping: {e}");
                }
                Outcome::Silent
            }
        }
    }

    /// A `worker:*` message must come from the worker or a descendant of it
    /// (SO_PEERCRED): a worker of one pool cannot ack or ping for another.
    /// Returns true (and records it, for `state`) when the sender is refused.
    fn refused_sender(&mut self, conn: ConnId, what: &'static str, pid: i32) -> bool {
        let Err(why) = self.control.speaks_for(conn, pid) else {
            return false;
        };
        log::warn!("control: {what} for pid {pid} refused: {why}");
        self.rejected.note(what, pid, why.clone());
        self.master_event(
            "worker_message_refused",
            serde_json::json!({"command": what, "pid": pid, "message": why}),
        );
        true
    }

    /// A streamed rollout (upgrade, promote, rollback) for this request.
    fn rollout(
        &mut self,
        conn: ConnId,
        req: &protocol::Request,
        pool: Option<&str>,
        op: Rollout,
    ) -> Outcome {
        match self.start_rollout(pool, op, Some((conn, req.id.clone(), req.encoding))) {
            Ok(_) => Outcome::Later,
            Err(e) => Outcome::Err(e.to_string()),
        }
    }

    /// Pools a read command applies to: the one named, or all.
    fn select(&self, pool: Option<&str>) -> Result<Vec<String>, RuntimeError> {
        match pool {
            Some(p) if self.pools.contains_key(p) => Ok(vec![p.to_string()]),
            Some(p) => Err(self.unknown_pool(p)),
            None => Ok(self.pools.keys().cloned().collect()),
        }
    }

    /// `inc`, `dec`, `set_workers`: the pool named, or the only one.
    fn cmd_count(
        &mut self,
        command: &'static str,
        pool: Option<&str>,
        f: impl FnOnce(usize) -> usize,
    ) -> Result<String, RuntimeError> {
        let name = match (pool, self.pools.len()) {
            (Some(p), _) => p.to_string(),
            (None, 1) => self
                .pools
                .keys()
                .next()
                .cloned()
                .ok_or(RuntimeError::NoPools)?,
            (None, _) => {
                return Err(RuntimeError::PoolNeeded {
                    command,
                    pools: self.pool_list(),
                })
            }
        };
        let n = self.change_count(&name, command, f)?;
        Ok(format!("pool {name}: count is now {n}"))
    }

    /// `worker:ping`: recorded on the worker, shown by `status`/`state`.
    fn worker_ping(&mut self, pid: i32, request_id: Option<String>) -> Result<(), RuntimeError> {
        let name = self
            .pool_of_pid(pid)
            .ok_or(RuntimeError::NotAWorker { pid })?;
        let e = self
            .pools
            .get_mut(&name)
            .ok_or(RuntimeError::NotAWorker { pid })?;
        e.pool.ping(pid, request_id, Instant::now())?;
        Ok(())
    }
}

fn help() -> String {
    let mut s = String::from(
        "Commands (einhyrningsinsctl --pool NAME, or \"pool\": NAME in a request, addresses one pool):\n",
    );
    for c in COMMANDS {
        let _ = writeln!(s, "  {:<16} {}", c.usage(), c.help);
    }
    s
}
