//! Starting upgrades and streaming their progress to the clients that asked.
//! Who waits for what, and when the final reply is due, is decided by the pure
//! [`Waiters`](super::waiters::Waiters); this file only starts the pools'
//! upgrades and writes the notices it returns.

use std::time::Instant;

use super::waiters::Notice;
use super::{Master, ReplyTo, RuntimeError};
use crate::config::UpgradeStrategy;
use crate::control::protocol::{self, Encoding, Reply};
use crate::control::server::ConnId;
use crate::pool::UpgradeId;

/// What a rollout request asks of each pool it addresses.
#[derive(Debug, Clone, Copy)]
pub(super) enum Rollout {
    /// `canary`: `Some(n)` a canary of n (0: full); `None`: the pool's setting.
    Upgrade {
        strategy: Option<UpgradeStrategy>,
        canary: Option<usize>,
    },
    Promote,
    Rollback,
}

impl Master {
    /// Smooth/fleet upgrade of one pool or all; progress goes to `waiter` if any.
    /// Returns the pools upgraded.
    pub(super) fn start_upgrade(
        &mut self,
        pool: Option<&str>,
        strategy: Option<UpgradeStrategy>,
        waiter: Option<(ConnId, Option<serde_json::Value>, Encoding)>,
    ) -> Result<Vec<String>, RuntimeError> {
        self.start_rollout(
            pool,
            Rollout::Upgrade {
                strategy,
                canary: None,
            },
            waiter,
        )
    }

    /// Start `op` on one pool or all; progress goes to `waiter` if any, which
    /// gets its final reply once every pool's rollout has ended. Returns the
    /// pools addressed.
    pub(super) fn start_rollout(
        &mut self,
        pool: Option<&str>,
        op: Rollout,
        waiter: Option<(ConnId, Option<serde_json::Value>, Encoding)>,
    ) -> Result<Vec<String>, RuntimeError> {
        if self.is_shutting_down() {
            return Err(RuntimeError::ShuttingDown);
        }
        let names = self.addressed(pool, false)?;
        let pool_conn = waiter.as_ref().map(|(c, _, _)| *c);
        let wid = waiter.map(|(conn, request_id, encoding)| {
            self.control.set_busy(conn, true);
            self.waiters.open(ReplyTo {
                conn,
                request_id,
                encoding,
            })
        });
        let now = Instant::now();
        // Every rollout is registered with the waiter before any is carried out:
        // a pool that finishes at once (count 0) must not end the wait for the
        // others.
        let mut started = Vec::new();
        let mut refused = Vec::new();
        for name in &names {
            match self.rollout_one(name, op, now) {
                Ok((id, actions)) => {
                    if let Some(w) = wid {
                        self.waiters.expect(w, name, id);
                    }
                    started.push((name, actions));
                }
                Err(e) => {
                    log::warn!("{e}");
                    refused.push(e.to_string());
                }
            }
        }
        if started.is_empty() && !refused.is_empty() {
            if let Some(w) = wid {
                self.waiters.cancel(w);
            }
            if let Some(c) = pool_conn {
                if !self.waiters.any(|w| w.conn == c) {
                    self.control.set_busy(c, false);
                }
            }
            return Err(RuntimeError::UpgradeRefused(refused));
        }
        if let Some(w) = wid {
            for why in refused {
                self.waiters.refused(w, why);
            }
        }
        for (name, actions) in started {
            self.execute(name, actions);
        }
        if let Some(n) = wid.and_then(|w| self.waiters.settle(w)) {
            self.deliver(n);
        }
        Ok(names)
    }

    fn rollout_one(
        &mut self,
        name: &str,
        op: Rollout,
        now: Instant,
    ) -> Result<(UpgradeId, Vec<crate::pool::Action>), RuntimeError> {
        // A rollback after a finished upgrade runs the previous release's
        // recorded files, if they are still there (src/master/releases.rs).
        let release_spec = match op {
            Rollout::Rollback => self.previous_release(name)?,
            _ => None,
        };
        let e = self
            .pools
            .get_mut(name)
            .ok_or_else(|| RuntimeError::UnknownPool {
                name: name.to_string(),
                pools: String::new(),
            })?;
        let r = match op {
            Rollout::Upgrade {
                strategy,
                canary: None,
            } => e.pool.upgrade(strategy, None, now),
            Rollout::Upgrade {
                strategy,
                canary: Some(n),
            } => e.pool.upgrade_with(strategy, None, Some(n), now),
            Rollout::Promote => e.pool.promote(now),
            Rollout::Rollback => e.pool.rollback(release_spec, now),
        };
        Ok(r?)
    }

    /// For `rollback` without a canary: how to run the release the last
    /// upgrade replaced, from what was recorded when it ran.
    fn previous_release(
        &self,
        name: &str,
    ) -> Result<Option<std::sync::Arc<crate::config::PoolConfig>>, RuntimeError> {
        let Some(e) = self.pools.get(name) else {
            return Ok(None);
        };
        if e.pool.canary().is_some() {
            return Ok(None);
        }
        let Some((version, spec)) = e.pool.previous() else {
            return Ok(None);
        };
        match self.releases.get(name, *version) {
            Some(r) => r
                .spec_for(spec)
                .map(Some)
                .map_err(|why| RuntimeError::ReleaseGone {
                    pool: name.to_string(),
                    version: *version,
                    why,
                }),
            None => Ok(None),
        }
    }

    /// A pool's upgrade progressed (or ended, with `outcome`).
    pub(super) fn progress(
        &mut self,
        pool: &str,
        upgrade: UpgradeId,
        message: String,
        outcome: Option<Result<(), String>>,
    ) {
        for n in self.waiters.progress(pool, upgrade, message, outcome) {
            self.deliver(n);
        }
    }

    fn deliver(&mut self, n: Notice<ReplyTo>) {
        match n {
            Notice::Progress { client, message } => {
                let reply = Reply::progress(message, client.request_id);
                self.write_to(client.conn, &reply, client.encoding);
            }
            Notice::Done { client, result } => {
                if !self.streams_to(client.conn) {
                    self.control.set_busy(client.conn, false);
                }
                let reply = match result {
                    Ok(()) => Reply::new("Upgrade done", client.request_id),
                    Err(why) => Reply::failure(format!("Upgrade failed: {why}"), client.request_id),
                };
                self.write_to(client.conn, &reply, client.encoding);
                // A client that half-closed only waited for this reply.
                if self.control.peer_eof(client.conn) {
                    self.hang_up(client.conn);
                }
            }
        }
    }

    fn write_to(&mut self, conn: ConnId, reply: &Reply, encoding: Encoding) {
        self.control.write(
            self.poll.registry(),
            conn,
            &protocol::encode(reply, encoding),
        );
    }
}
