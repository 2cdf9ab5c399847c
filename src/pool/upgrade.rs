//! Upgrades: smooth and fleet rolls to a new version within `max_unacked` and
//! `max_surge`, supersession, abandonment after `retries` failures.

use std::sync::Arc;
use std::time::Instant;

use super::*;

impl Pool {
    /// Start a rolling upgrade to a new version (with a new spec when the config
    /// changed). Supersedes a running upgrade.
    pub fn upgrade(
        &mut self,
        strategy: Option<UpgradeStrategy>,
        spec: Option<Arc<PoolConfig>>,
        now: Instant,
    ) -> Result<(UpgradeId, Vec<Action>), PoolError> {
        self.refuse_if_shutting_down()?;
        let mut out = Vec::new();
        let spec = spec.unwrap_or_else(|| self.target.1.clone());
        let strategy = strategy.unwrap_or(spec.upgrade);
        let from = match self.upgrade.take() {
            Some(prev) => {
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
        };
        let id = self.next_upgrade;
        self.next_upgrade += 1;
        let version = self.next_version;
        self.next_version += 1;
        self.target = (version, spec);
        self.upgrade = Some(Upgrade {
            id,
            strategy,
            failures: 0,
            from,
            started: now,
        });
        self.revive();
        let how = match strategy {
            UpgradeStrategy::Smooth => format!(
                "smoothly (max_unacked {}, max_surge {})",
                self.target.1.max_unacked,
                self.target.1.surge(self.count)
            ),
            UpgradeStrategy::Fleet => "as a fleet".to_string(),
        };
        self.emit(PoolEvent::UpgradeStarted {
            id,
            version,
            count: self.count,
            how: how.clone(),
        });
        out.push(Action::Progress {
            upgrade: id,
            message: format!(
                "pool {}: upgrading {} worker(s) to version {} {}",
                self.name, self.count, version, how
            ),
            outcome: None,
        });
        self.reconcile(now, &mut out);
        Ok((id, out))
    }

    pub(super) fn finish_upgrade(
        &mut self,
        up: Upgrade,
        result: Result<(), String>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let version = self.target.0;
        let message = match &result {
            Ok(()) => {
                self.emit(PoolEvent::UpgradeDone {
                    id: up.id,
                    version,
                    count: self.count,
                    took: now.saturating_duration_since(up.started),
                });
                format!(
                    "pool {}: upgrade done: {} worker(s) at version {}",
                    self.name, self.count, version
                )
            }
            Err(why) => {
                self.emit(PoolEvent::UpgradeFailed {
                    id: up.id,
                    why: why.clone(),
                    took: now.saturating_duration_since(up.started),
                });
                format!("pool {}: upgrade failed: {}", self.name, why)
            }
        };
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
            self.set_respawn_at_none();
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
        // Old workers that never acked count for nothing: retire them now.
        let old_unacked: Vec<WorkerId> = self
            .buckets
            .iter()
            .filter(|(v, _)| **v != target)
            .flat_map(|(_, b)| b.unacked.iter().map(|(_, id)| *id))
            .collect();
        for id in old_unacked {
            self.retire(id, StopReason::Retired, now, out);
        }
        // More new workers than wanted (count lowered during the upgrade).
        let new_total = self.buckets.get(&target).map_or(0, Bucket::len);
        if new_total > count {
            for id in self.pick(new_total - count, |v| v == target) {
                self.retire(id, StopReason::ScaledDown, now, out);
            }
        }
        let new_acked = self.buckets.get(&target).map_or(0, |b| b.acked.len());
        let old_acked: usize = self
            .buckets
            .iter()
            .filter(|(v, _)| **v != target)
            .map(|(_, b)| b.acked.len())
            .sum();
        // Retire old acked workers only against acked new ones.
        let retire = match up.strategy {
            UpgradeStrategy::Smooth => (new_acked + old_acked).saturating_sub(count).min(old_acked),
            UpgradeStrategy::Fleet if new_acked >= count => old_acked,
            UpgradeStrategy::Fleet => 0,
        };
        if retire > 0 {
            for id in self.pick(retire, |v| v != target) {
                self.retire(id, StopReason::Retired, now, out);
            }
        }
        // Sizes only: cloning the bucket would make every event O(workers).
        let (new_total, new_acked, new_unacked) = self
            .buckets
            .get(&target)
            .map_or((0, 0, 0), |b| (b.len(), b.acked.len(), b.unacked.len()));
        let old_total: usize = self
            .buckets
            .iter()
            .filter(|(v, _)| **v != target)
            .map(|(_, b)| b.len())
            .sum();
        if old_total == 0 && new_acked >= count {
            if let Some(up) = self.upgrade.take() {
                self.finish_upgrade(up, Ok(()), now, out);
            }
            return;
        }
        let need = count.saturating_sub(new_total);
        let n = match up.strategy {
            UpgradeStrategy::Fleet => need,
            UpgradeStrategy::Smooth => {
                let spec = &self.target.1;
                let room_unacked = spec.max_unacked.max(1).saturating_sub(new_unacked);
                let room_surge = (count + spec.surge(count)).saturating_sub(new_total + old_total);
                need.min(room_unacked).min(room_surge)
            }
        };
        self.spawn_n(n, now, out);
    }
}
