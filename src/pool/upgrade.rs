//! Upgrades: smooth and fleet rolls to a new version within `max_unacked` and
//! `max_surge`, supersession, abandonment after `retries` failures; canaries
//! (part of the pool on the new version, holding until promoted or rolled
//! back) and rollbacks.
//!
//! During an upgrade the pool's workers fall in three classes by version: the
//! target `T` (new), the base `B` (only during a canary: the version the canary
//! rolls back to, kept at `count - n` workers), and the others `O` (old,
//! retired). New workers start within the bounds; an acked worker of `B` or `O`
//! is retired only while the acked total stays at `count` or more, so a rollout
//! never lowers capacity. A rollback is an upgrade whose target is the version
//! it goes back to: its remaining workers are already "new", and the canaries
//! are retired against the acks of their replacements.

use std::sync::Arc;
use std::time::Instant;

use super::*;

impl Pool {
    /// Start a rolling upgrade to a new version (with a new spec when the config
    /// changed), as a canary if the pool's `canary` says so. Supersedes a
    /// running upgrade.
    pub fn upgrade(
        &mut self,
        strategy: Option<UpgradeStrategy>,
        spec: Option<Arc<PoolConfig>>,
        now: Instant,
    ) -> Result<(UpgradeId, Vec<Action>), PoolError> {
        let canary = spec.as_ref().unwrap_or(&self.target.1).canary;
        self.upgrade_with(strategy, spec, canary, now)
    }

    /// [`Pool::upgrade`] with an explicit canary size (`None` or `Some(0)`: a
    /// full upgrade).
    pub fn upgrade_with(
        &mut self,
        strategy: Option<UpgradeStrategy>,
        spec: Option<Arc<PoolConfig>>,
        canary: Option<usize>,
        now: Instant,
    ) -> Result<(UpgradeId, Vec<Action>), PoolError> {
        self.refuse_if_shutting_down()?;
        let spec = spec.unwrap_or_else(|| self.target.1.clone());
        let canary = canary.filter(|n| *n > 0);
        if let Some(n) = canary {
            if n >= self.count {
                return Err(PoolError::BadCanary {
                    pool: self.name.clone(),
                    n,
                    count: self.count,
                });
            }
        }
        let mut out = Vec::new();
        let strategy = strategy.unwrap_or(spec.upgrade);
        let from = self.supersede(&mut out);
        let id = self.next_upgrade;
        self.next_upgrade += 1;
        let version = self.next_version;
        self.next_version += 1;
        let hold = spec.canary_hold;
        self.target = (version, spec);
        self.upgrade = Some(Upgrade {
            id,
            strategy,
            failures: 0,
            from,
            started: now,
            canary: canary.map(|n| Canary {
                n,
                hold,
                holding_since: None,
            }),
            rollback: false,
            keeps_previous: false,
        });
        self.revive();
        let how = match (canary, strategy) {
            (Some(n), _) => format!(
                "as a canary of {n} (max_unacked {})",
                self.target.1.max_unacked
            ),
            (None, UpgradeStrategy::Smooth) => format!(
                "smoothly (max_unacked {}, max_surge {})",
                self.target.1.max_unacked,
                self.target.1.surge(self.count)
            ),
            (None, UpgradeStrategy::Fleet) => "as a fleet".to_string(),
        };
        self.emit(PoolEvent::UpgradeStarted {
            id,
            version,
            count: self.count,
            how: how.clone(),
        });
        let n = canary.unwrap_or(self.count);
        out.push(Action::Progress {
            upgrade: id,
            message: format!(
                "pool {}: upgrading {} worker(s) to version {} {}",
                self.name, n, version, how
            ),
            outcome: None,
        });
        self.reconcile(now, &mut out);
        Ok((id, out))
    }

    /// End a running upgrade because another one starts; returns the version
    /// the new one falls back to if it fails (the original one).
    fn supersede(&mut self, out: &mut Vec<Action>) -> (u64, Arc<PoolConfig>) {
        match self.upgrade.take() {
            Some(prev) => {
                self.set_canary_timer(None);
                let msg = format!("superseded by upgrade #{}", self.next_upgrade);
                self.emit(PoolEvent::UpgradeSuperseded {
                    id: prev.id,
                    by: self.next_upgrade,
                });
                out.push(Action::Progress {
                    upgrade: prev.id,
                    message: format!("pool {}: upgrade {}", self.name, msg),
                    outcome: Some(Err(msg)),
                });
                prev.from
            }
            None => self.target.clone(),
        }
    }

    /// The canary in progress or holding, if any.
    pub fn canary(&self) -> Option<CanaryInfo> {
        let up = self.upgrade.as_ref()?;
        let c = up.canary?;
        Some(CanaryInfo {
            upgrade: up.id,
            version: self.target.0,
            base: up.from.0,
            n: c.n,
            started: up.started,
            holding_since: c.holding_since,
            hold: c.hold,
        })
    }

    /// Whether workers of `version` are canaries right now.
    pub fn is_canary_version(&self, version: u64) -> bool {
        self.upgrade
            .as_ref()
            .is_some_and(|up| up.canary.is_some() && version == self.target.0)
    }

    /// The version the last finished upgrade replaced (what `rollback` after a
    /// finished upgrade goes back to), and its spec.
    pub fn previous(&self) -> Option<&(u64, Arc<PoolConfig>)> {
        self.previous.as_ref()
    }

    /// `promote`: the canary's version replaces the rest of the pool.
    pub fn promote(&mut self, now: Instant) -> Result<(UpgradeId, Vec<Action>), PoolError> {
        self.refuse_if_shutting_down()?;
        let mut out = Vec::new();
        let id = self.promote_canary(false, &mut out)?;
        self.reconcile(now, &mut out);
        Ok((id, out))
    }

    fn promote_canary(
        &mut self,
        auto: bool,
        out: &mut Vec<Action>,
    ) -> Result<UpgradeId, PoolError> {
        let no_canary = || PoolError::NoCanary {
            pool: self.name.clone(),
        };
        let up = self.upgrade.as_mut().ok_or_else(no_canary)?;
        if up.canary.take().is_none() {
            return Err(no_canary());
        }
        let id = up.id;
        self.set_canary_timer(None);
        self.emit(PoolEvent::CanaryPromoted { id, auto });
        out.push(Action::Progress {
            upgrade: id,
            message: format!(
                "pool {}: canary promoted{}: rolling the other workers to version {}",
                self.name,
                if auto { " (held healthy)" } else { "" },
                self.target.0
            ),
            outcome: None,
        });
        Ok(id)
    }

    /// `rollback`: a canary's workers are replaced by the version it came from;
    /// without a canary, the version the last finished upgrade replaced comes
    /// back (`spec`: how to run it now, e.g. its resolved release; `None`: its
    /// spec as it was).
    pub fn rollback(
        &mut self,
        spec: Option<Arc<PoolConfig>>,
        now: Instant,
    ) -> Result<(UpgradeId, Vec<Action>), PoolError> {
        self.refuse_if_shutting_down()?;
        let mut out = Vec::new();
        if self.canary().is_some() {
            let id = self.rollback_canary("rollback requested".into(), now, &mut out);
            return Ok((id, out));
        }
        let Some((from_version, prev_spec)) = self.previous.clone() else {
            return Err(PoolError::NothingToRollBack {
                pool: self.name.clone(),
            });
        };
        let spec = spec.unwrap_or(prev_spec);
        let current = self.target.0;
        let (id, mut actions) =
            self.upgrade_with(Some(UpgradeStrategy::Smooth), Some(spec), None, now)?;
        if let Some(up) = self.upgrade.as_mut() {
            up.rollback = true;
        }
        self.emit(PoolEvent::RollbackStarted {
            id,
            from: current,
            to: from_version,
        });
        out.append(&mut actions);
        Ok((id, out))
    }

    /// Roll a canary back: its upgrade ends with `why`, and a rollback to its
    /// base version starts under a new id. Returns that id.
    pub(super) fn rollback_canary(
        &mut self,
        why: String,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> UpgradeId {
        let Some(up) = self.upgrade.take() else {
            return 0;
        };
        self.set_canary_timer(None);
        let canary_version = self.target.clone();
        self.emit(PoolEvent::CanaryRolledBack {
            id: up.id,
            why: why.clone(),
        });
        out.push(Action::Progress {
            upgrade: up.id,
            message: format!("pool {}: canary rolled back: {why}", self.name),
            outcome: Some(Err(format!("canary rolled back: {why}"))),
        });
        self.last_upgrade = Some(UpgradeOutcome {
            id: up.id,
            version: canary_version.0,
            at: now,
            result: Err(format!("canary rolled back: {why}")),
        });
        // Unacked canaries count for nothing: they go at once. Acked ones are
        // retired as their replacements ack (see reconcile_upgrade).
        let unacked: Vec<WorkerId> = self
            .buckets
            .get(&canary_version.0)
            .map(|b| b.unacked.iter().map(|(_, id)| *id).collect())
            .unwrap_or_default();
        for wid in unacked {
            self.retire(wid, StopReason::RolledBack, now, out);
        }
        let id = self.next_upgrade;
        self.next_upgrade += 1;
        self.target = up.from.clone();
        self.upgrade = Some(Upgrade {
            id,
            strategy: UpgradeStrategy::Smooth,
            failures: 0,
            from: canary_version.clone(),
            started: now,
            canary: None,
            rollback: true,
            keeps_previous: true,
        });
        self.revive();
        self.emit(PoolEvent::RollbackStarted {
            id,
            from: canary_version.0,
            to: self.target.0,
        });
        out.push(Action::Progress {
            upgrade: id,
            message: format!(
                "pool {}: rolling back from version {} to version {}",
                self.name, canary_version.0, self.target.0
            ),
            outcome: None,
        });
        self.reconcile(now, out);
        id
    }

    pub(super) fn canary_hold_passed(&mut self, now: Instant, out: &mut Vec<Action>) {
        let due = self.upgrade.as_ref().and_then(|u| u.canary).is_some_and(
            |c| matches!((c.holding_since, c.hold), (Some(s), Some(h)) if later(s, h) <= now),
        );
        if due && self.promote_canary(true, out).is_ok() {
            self.reconcile(now, out);
        }
    }

    fn set_canary_timer(&mut self, at: Option<Instant>) {
        self.timers.retain(|(_, k)| *k != TimerKey::CanaryHold);
        if let Some(at) = at {
            self.timers.insert((at, TimerKey::CanaryHold));
        }
    }

    pub(super) fn finish_upgrade(
        &mut self,
        up: Upgrade,
        result: Result<(), String>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.set_canary_timer(None);
        let version = self.target.0;
        let what = if up.rollback { "rollback" } else { "upgrade" };
        let message = match &result {
            Ok(()) => {
                self.emit(PoolEvent::UpgradeDone {
                    id: up.id,
                    version,
                    count: self.count,
                    took: now.saturating_duration_since(up.started),
                });
                format!(
                    "pool {}: {what} done: {} worker(s) at version {}",
                    self.name, self.count, version
                )
            }
            Err(why) => {
                self.emit(PoolEvent::UpgradeFailed {
                    id: up.id,
                    why: why.clone(),
                    took: now.saturating_duration_since(up.started),
                });
                format!("pool {}: {what} failed: {}", self.name, why)
            }
        };
        if result.is_ok() {
            // What this upgrade replaced is what `rollback` brings back. A
            // rollback of a canary went back to what was already running.
            if !up.keeps_previous {
                self.previous = Some(up.from.clone());
            }
        }
        if result.is_err() && self.shutdown.is_none() {
            // Stop what the failed version started and not yet proved; acked
            // workers of it keep serving (they work), old ones were never retired
            // beyond what acked new ones replaced.
            let victims: Vec<WorkerId> = self
                .buckets
                .get(&version)
                .map(|b| b.unacked.iter().map(|(_, id)| *id).collect())
                .unwrap_or_default();
            for id in victims {
                self.retire(id, StopReason::Abandoned, now, out);
            }
            self.target = up.from.clone();
            self.failures = 0;
            self.logged_backoff = None;
            self.clear_holds();
        }
        self.last_upgrade = Some(UpgradeOutcome {
            id: up.id,
            version,
            at: now,
            result: result.clone(),
        });
        out.push(Action::Progress {
            upgrade: up.id,
            message,
            outcome: Some(result),
        });
    }

    pub(super) fn reconcile_upgrade(&mut self, up: &Upgrade, now: Instant, out: &mut Vec<Action>) {
        let count = self.count;
        let target = self.target.0;
        // During a canary: n new workers, and the base version at count - n.
        let (want_t, base) = match up.canary {
            Some(c) => (c.n.min(count.saturating_sub(1)), Some(up.from.0)),
            None => (count, None),
        };
        let want_b = count - want_t;
        let is_b = |v: u64| Some(v) == base && v != target;
        let is_o = |v: u64| v != target && Some(v) != base;
        // Sizes only: cloning the buckets would make every event O(workers).
        let size = |p: &Pool, f: &dyn Fn(u64) -> bool| -> (usize, usize, usize) {
            p.buckets
                .iter()
                .filter(|(v, _)| f(**v))
                .fold((0, 0, 0), |(t, a, u), (_, b)| {
                    (t + b.len(), a + b.acked.len(), u + b.unacked.len())
                })
        };
        // Old workers that never acked count for nothing: retire them now.
        let old_unacked: Vec<WorkerId> = self
            .buckets
            .iter()
            .filter(|(v, _)| is_o(**v))
            .flat_map(|(_, b)| b.unacked.iter().map(|(_, id)| *id))
            .collect();
        for id in old_unacked {
            self.retire(id, StopReason::Retired, now, out);
        }
        // More new (or base) workers than wanted (count lowered meanwhile).
        let (t_total, _, _) = size(self, &|v| v == target);
        if t_total > want_t {
            for id in self.pick(t_total - want_t, |v| v == target) {
                self.retire(id, StopReason::ScaledDown, now, out);
            }
        }
        let (b_total, b_acked, _) = size(self, &is_b);
        if b_total > want_b && b_acked < b_total {
            let extra = (b_total - want_b).min(b_total - b_acked);
            // Unacked first: `pick` takes them before acked ones.
            for id in self.pick(extra, is_b) {
                self.retire(id, StopReason::ScaledDown, now, out);
            }
        }
        let (_, t_acked, _) = size(self, &|v| v == target);
        let (_, b_acked, _) = size(self, &is_b);
        let (_, o_acked, _) = size(self, &is_o);
        // Retire old acked workers only against acked new ones: others first,
        // then base workers beyond what the canary keeps.
        let b_spare = b_acked.saturating_sub(want_b);
        let retirable = o_acked + b_spare;
        let retire = match up.strategy {
            UpgradeStrategy::Smooth => (t_acked + b_acked + o_acked)
                .saturating_sub(count)
                .min(retirable),
            UpgradeStrategy::Fleet if t_acked >= want_t => retirable,
            UpgradeStrategy::Fleet => 0,
        };
        if retire > 0 {
            let mut victims = self.pick(retire.min(o_acked), is_o);
            let left = retire - victims.len();
            victims.extend(self.pick(left.min(b_spare), is_b));
            let reason = if up.rollback {
                StopReason::RolledBack
            } else {
                StopReason::Retired
            };
            for id in victims {
                self.retire(id, reason, now, out);
            }
        }
        let (t_total, t_acked, t_unacked) = size(self, &|v| v == target);
        let (b_total, b_acked, _) = size(self, &is_b);
        let (o_total, _, _) = size(self, &is_o);
        if base.is_none() && o_total == 0 && t_acked >= count {
            if let Some(up) = self.upgrade.take() {
                self.finish_upgrade(up, Ok(()), now, out);
            }
            return;
        }
        if base.is_some()
            && o_total == 0
            && t_acked >= want_t
            && b_acked >= want_b
            && b_total == want_b
        {
            self.hold_canary(now, out);
        }
        let spec = self.target.1.clone();
        let live = t_total + b_total + o_total;
        let room_surge = (count + spec.surge(count)).saturating_sub(live);
        let need_t = want_t.saturating_sub(t_total);
        let n = match up.strategy {
            UpgradeStrategy::Fleet => need_t,
            UpgradeStrategy::Smooth => {
                let room_unacked = spec.max_unacked.max(1).saturating_sub(t_unacked);
                need_t.min(room_unacked).min(room_surge)
            }
        };
        self.spawn_n(n, now, out);
        // A base worker lost during a canary is replaced by its own version.
        let need_b = want_b.saturating_sub(b_total);
        if need_b > 0 {
            // Below count, capacity comes back first; otherwise within the surge.
            let room = if live < count {
                need_b
            } else {
                room_surge.saturating_sub(n)
            };
            self.spawn_n_of(up.from.clone(), need_b.min(room), now, out);
        }
    }

    /// Every canary acked and the base version is at its share: hold (once).
    fn hold_canary(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(up) = self.upgrade.as_mut() else {
            return;
        };
        let Some(c) = up.canary.as_mut() else {
            return;
        };
        if c.holding_since.is_some() {
            return;
        }
        c.holding_since = Some(now);
        let (id, n, hold) = (up.id, c.n, c.hold);
        let version = self.target.0;
        self.emit(PoolEvent::CanaryHolding {
            id,
            version,
            n,
            hold,
        });
        match hold {
            Some(h) => {
                self.set_canary_timer(Some(later(now, h)));
                out.push(Action::Progress {
                    upgrade: id,
                    message: format!(
                        "pool {}: canary of {n} at version {version} holding; promoting after {h:?} if it stays healthy",
                        self.name
                    ),
                    outcome: None,
                });
            }
            None => out.push(Action::Progress {
                upgrade: id,
                message: format!(
                    "pool {}: canary of {n} at version {version} holding; `promote` or `rollback` it",
                    self.name
                ),
                // The request that started it is answered; `promote` and
                // `rollback` report the rest.
                outcome: Some(Ok(())),
            }),
        }
    }
}
