//! Replacing workers that work: recycling the too old (`max_age`) and the too
//! large (`max_rss`) through the smooth engine, and killing einhorn-protocol
//! workers that stop pinging (`heartbeat_timeout`).
//!
//! A recycled worker is only *marked*: the steady-state reconcile starts its
//! successor (at most `max_unacked` unacked at a time, at most `max_surge`
//! beyond `count`) and retires a marked worker only against an ack, exactly as
//! an upgrade retires old workers. So recycling never drops capacity, and a
//! successor that cannot start leaves the marked worker serving.

use std::time::Instant;

use super::*;

impl Pool {
    /// A sampled RSS (bytes) for one worker: over the pool's `max_rss`, the
    /// worker is replaced.
    pub fn over_rss(&mut self, pid: Pid, rss: u64, now: Instant) -> Result<Vec<Action>, PoolError> {
        let id = self.id_of(pid)?;
        let mut out = Vec::new();
        let over = self
            .workers
            .get(&id)
            .and_then(|w| w.spec.max_rss)
            .is_some_and(|max| rss > max);
        if over {
            self.mark_recycling(id, RecycleReason::Rss(rss));
            self.reconcile(now, &mut out);
        }
        Ok(out)
    }

    /// Workers marked for recycling, with why.
    pub fn recycling(&self) -> impl Iterator<Item = (&Worker, RecycleReason)> {
        self.recycling
            .iter()
            .filter_map(|id| self.workers.get(id))
            .filter_map(|w| w.recycle.map(|r| (w, r)))
    }

    /// Mark an acked, serving worker for replacement (once). Not during an
    /// upgrade (which replaces everyone anyway) nor a shutdown.
    fn mark_recycling(&mut self, id: WorkerId, reason: RecycleReason) {
        if self.upgrade.is_some() || self.shutdown.is_some() {
            return;
        }
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if !w.is_acked() || w.recycle.is_some() {
            return;
        }
        w.recycle = Some(reason);
        let pid = w.pid.unwrap_or(0);
        self.recycling.insert(id);
        self.emit(PoolEvent::Recycling { pid, reason });
    }

    pub(super) fn age_passed(&mut self, id: WorkerId, at: Instant, _now: Instant) {
        let due = self
            .workers
            .get(&id)
            .is_some_and(|w| w.recycle_at == Some(at));
        if due {
            if let Some(w) = self.workers.get_mut(&id) {
                w.recycle_at = None;
            }
            self.mark_recycling(id, RecycleReason::Age);
        }
    }

    pub(super) fn heartbeat_passed(
        &mut self,
        id: WorkerId,
        at: Instant,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(w) = self.workers.get(&id) else {
            return;
        };
        if !w.is_acked() || w.heartbeat_at != Some(at) {
            return;
        }
        let ev = PoolEvent::HeartbeatMissed {
            pid: w.pid.unwrap_or(0),
            timeout: w.spec.heartbeat_timeout.unwrap_or_default(),
        };
        self.emit(ev);
        self.stop_worker(id, Signal::SIGKILL, StopReason::Heartbeat, now, out);
    }

    /// Steady state with workers marked for recycling: start successors within
    /// the bounds, retire marked workers against acks.
    pub(super) fn reconcile_recycling(&mut self, now: Instant, out: &mut Vec<Action>) {
        let count = self.count;
        let live: usize = self.buckets.values().map(Bucket::len).sum();
        let marked = self.recycling.len();
        let normal = live - marked.min(live);
        // Retire marked workers only while the acked total stays at count.
        let excess = self.acked().saturating_sub(count).min(marked);
        if excess > 0 {
            let victims: Vec<WorkerId> = self.recycling.iter().take(excess).copied().collect();
            for id in victims {
                self.retire(id, StopReason::Recycled, now, out);
            }
        }
        let marked = self.recycling.len();
        let live: usize = self.buckets.values().map(Bucket::len).sum();
        if normal > count {
            let marked_set = self.recycling.clone();
            let extra: Vec<WorkerId> = self
                .pick(live, |_| true)
                .into_iter()
                .filter(|id| !marked_set.contains(id))
                .take(normal - count)
                .collect();
            for id in extra {
                self.retire(id, StopReason::ScaledDown, now, out);
            }
            return;
        }
        if marked == 0 {
            self.reconcile(now, out);
            return;
        }
        let unacked: usize = self.buckets.values().map(|b| b.unacked.len()).sum();
        let spec = self.target.1.clone();
        let room_unacked = spec.max_unacked.max(1).saturating_sub(unacked);
        let room_surge = (count + spec.surge(count)).saturating_sub(live);
        let need = count.saturating_sub(normal);
        self.spawn_n(need.min(room_unacked).min(room_surge), now, out);
    }
}
