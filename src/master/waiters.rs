//! Clients waiting for upgrades to end: the rule "reply when every pool the
//! request started is done", without I/O.
//!
//! One `upgrade` request may start upgrades in several pools. Each pool reports
//! progress and, once, an outcome (`Action::Progress` from the pool). The client
//! gets every progress line of its upgrades as they come, and exactly one final
//! reply when the last of them has an outcome: "Upgrade done" if all succeeded,
//! else "Upgrade failed: ..." with one reason per failed pool (and per pool that
//! refused to start). An upgrade superseded by a newer one ends, for its waiter,
//! with the supersession as its outcome. A client that goes away is forgotten
//! along with its routes, so nothing is written to a closed connection and the
//! routing table does not grow.

use std::collections::{HashMap, HashSet};

use crate::pool::UpgradeId;

/// Handle of one waiting request.
pub type WaiterId = u64;

/// What to tell a waiting client.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice<C> {
    /// A progress line (`"wait": true`).
    Progress { client: C, message: String },
    /// The final reply: `Ok` for "Upgrade done", `Err` with the reasons.
    Done {
        client: C,
        result: Result<(), String>,
    },
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Waiter<C> {
    client: C,
    #[serde(with = "remaining_serde")]
    remaining: HashSet<(String, UpgradeId)>,
    failures: Vec<String>,
}

/// Every waiting request and the upgrades it waits for (serializable, to be
/// carried across the master's re-exec).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(bound(
    serialize = "C: serde::Serialize",
    deserialize = "C: serde::de::DeserializeOwned"
))]
pub struct Waiters<C> {
    waiters: HashMap<WaiterId, Waiter<C>>,
    #[serde(with = "route_serde")]
    route: HashMap<(String, UpgradeId), WaiterId>,
    next: WaiterId,
}

impl<C> Default for Waiters<C> {
    fn default() -> Self {
        Waiters {
            waiters: HashMap::new(),
            route: HashMap::new(),
            next: 1,
        }
    }
}

impl<C: Clone> Waiters<C> {
    /// A new waiting request; register its upgrades with [`Waiters::expect`]
    /// before any of them can report (a pool with no workers finishes at once).
    pub fn open(&mut self, client: C) -> WaiterId {
        let id = self.next;
        self.next += 1;
        self.waiters.insert(
            id,
            Waiter {
                client,
                remaining: HashSet::new(),
                failures: Vec::new(),
            },
        );
        id
    }

    /// `waiter` waits for `upgrade` of `pool`.
    pub fn expect(&mut self, waiter: WaiterId, pool: &str, upgrade: UpgradeId) {
        if let Some(w) = self.waiters.get_mut(&waiter) {
            w.remaining.insert((pool.to_string(), upgrade));
            self.route.insert((pool.to_string(), upgrade), waiter);
        }
    }

    /// A pool refused to start its upgrade: part of the final reply.
    pub fn refused(&mut self, waiter: WaiterId, why: String) {
        if let Some(w) = self.waiters.get_mut(&waiter) {
            w.failures.push(why);
        }
    }

    /// Drop a request that started nothing (its error is replied directly).
    pub fn cancel(&mut self, waiter: WaiterId) {
        if let Some(w) = self.waiters.remove(&waiter) {
            for key in w.remaining {
                self.route.remove(&key);
            }
        }
    }

    /// After the upgrades were started: if all of them already finished (or
    /// none started), the final reply is due now.
    pub fn settle(&mut self, waiter: WaiterId) -> Option<Notice<C>> {
        if self.waiters.get(&waiter)?.remaining.is_empty() {
            return self.finish(waiter);
        }
        None
    }

    /// A pool reported on one of its upgrades. `outcome` is set on its last
    /// report. Returns what to send, in order.
    pub fn progress(
        &mut self,
        pool: &str,
        upgrade: UpgradeId,
        message: String,
        outcome: Option<Result<(), String>>,
    ) -> Vec<Notice<C>> {
        let key = (pool.to_string(), upgrade);
        let Some(&id) = self.route.get(&key) else {
            return Vec::new();
        };
        let Some(w) = self.waiters.get_mut(&id) else {
            self.route.remove(&key);
            return Vec::new();
        };
        let mut out = vec![Notice::Progress {
            client: w.client.clone(),
            message,
        }];
        if let Some(result) = outcome {
            if let Err(why) = result {
                w.failures.push(format!("pool {pool}: {why}"));
            }
            w.remaining.remove(&key);
            self.route.remove(&key);
            if w.remaining.is_empty() {
                out.extend(self.finish(id));
            }
        }
        out
    }

    /// Forget every request of clients matching `gone` (it disconnected).
    pub fn forget(&mut self, gone: impl Fn(&C) -> bool) {
        let ids: Vec<WaiterId> = self
            .waiters
            .iter()
            .filter(|(_, w)| gone(&w.client))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.cancel(id);
        }
    }

    /// Is any request of a client matching `f` still waiting?
    pub fn any(&self, f: impl Fn(&C) -> bool) -> bool {
        self.waiters.values().any(|w| f(&w.client))
    }

    /// Routes held (for tests: the table must not grow).
    #[cfg(test)]
    fn routes(&self) -> usize {
        self.route.len()
    }

    fn finish(&mut self, id: WaiterId) -> Option<Notice<C>> {
        let w = self.waiters.remove(&id)?;
        for key in &w.remaining {
            self.route.remove(key);
        }
        let result = if w.failures.is_empty() {
            Ok(())
        } else {
            Err(w.failures.join("; "))
        };
        Some(Notice::Done {
            client: w.client,
            result,
        })
    }
}

/// Maps with tuple keys as lists of pairs (JSON keys must be strings).
mod route_serde {
    use std::collections::HashMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{UpgradeId, WaiterId};

    type Route = HashMap<(String, UpgradeId), WaiterId>;

    pub fn serialize<S: Serializer>(m: &Route, s: S) -> Result<S::Ok, S::Error> {
        let v: Vec<(&(String, UpgradeId), &WaiterId)> = m.iter().collect();
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Route, D::Error> {
        let v: Vec<((String, UpgradeId), WaiterId)> = Vec::deserialize(d)?;
        Ok(v.into_iter().collect())
    }
}

mod remaining_serde {
    use std::collections::HashSet;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::UpgradeId;

    pub fn serialize<S: Serializer>(
        m: &HashSet<(String, UpgradeId)>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let v: Vec<&(String, UpgradeId)> = m.iter().collect();
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<HashSet<(String, UpgradeId)>, D::Error> {
        let v: Vec<(String, UpgradeId)> = Vec::deserialize(d)?;
        Ok(v.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(n: &[Notice<u32>]) -> Vec<(u32, Result<(), String>)> {
        n.iter()
            .filter_map(|n| match n {
                Notice::Done { client, result } => Some((*client, result.clone())),
                Notice::Progress { .. } => None,
            })
            .collect()
    }

    #[test]
    fn the_final_reply_waits_for_every_pool() {
        let mut w = Waiters::default();
        let id = w.open(7u32);
        w.expect(id, "a", 1);
        w.expect(id, "b", 1);
        assert_eq!(w.settle(id), None);
        let n = w.progress("a", 1, "a done".into(), Some(Ok(())));
        assert_eq!(n.len(), 1, "{n:?}");
        assert!(done(&n).is_empty());
        let n = w.progress("b", 1, "b 1/2".into(), None);
        assert_eq!(
            n,
            vec![Notice::Progress {
                client: 7,
                message: "b 1/2".into()
            }]
        );
        let n = w.progress("b", 1, "b done".into(), Some(Ok(())));
        assert_eq!(done(&n), vec![(7, Ok(()))]);
        assert_eq!(w.routes(), 0);
        assert!(!w.any(|c| *c == 7));
    }

    #[test]
    fn a_pool_that_finished_at_once_does_not_end_the_wait_for_the_others() {
        let mut w = Waiters::default();
        let id = w.open(1u32);
        w.expect(id, "empty", 3);
        w.expect(id, "busy", 4);
        // The empty pool reports before the request is settled.
        assert!(done(&w.progress("empty", 3, "done".into(), Some(Ok(())))).is_empty());
        assert_eq!(w.settle(id), None);
        let n = w.progress("busy", 4, "done".into(), Some(Ok(())));
        assert_eq!(done(&n), vec![(1, Ok(()))]);
    }

    #[test]
    fn failures_and_refusals_are_all_in_the_final_reply() {
        let mut w = Waiters::default();
        let id = w.open(1u32);
        w.refused(id, "pool c is shutting down".into());
        w.expect(id, "a", 1);
        w.expect(id, "b", 1);
        w.progress("a", 1, "x".into(), Some(Err("version 2 failed".into())));
        let n = w.progress("b", 1, "y".into(), Some(Err("superseded".into())));
        assert_eq!(
            done(&n),
            vec![(
                1,
                Err("pool c is shutting down; pool a: version 2 failed; pool b: superseded".into())
            )]
        );
    }

    #[test]
    fn nothing_started_settles_at_once_and_a_gone_client_is_forgotten() {
        let mut w = Waiters::default();
        let id = w.open(5u32);
        assert_eq!(
            w.settle(id),
            Some(Notice::Done {
                client: 5,
                result: Ok(())
            })
        );
        let id = w.open(6u32);
        w.expect(id, "a", 9);
        w.forget(|c| *c == 6);
        assert_eq!(w.routes(), 0);
        assert!(w.progress("a", 9, "late".into(), Some(Ok(()))).is_empty());
        // Unrelated upgrades (HUP, watcher) have no waiter.
        assert!(w.progress("z", 1, "x".into(), None).is_empty());
    }
}
