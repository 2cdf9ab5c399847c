//! Operations on pools shared by signals and control commands: stopping,
//! scaling, signalling, acks.

use std::time::Instant;

use nix::sys::signal::Signal;

use super::phase::StopRequest;
use super::{Master, RuntimeError};
use crate::config::MAX_WORKERS;
use crate::pool::Pid;

impl Master {
    /// A stop request (signal or `die`): every pool is told how to stop; the
    /// loop exits once they are all gone (or at once for QUIT).
    pub(super) fn stop(&mut self, req: StopRequest, why: &str) {
        let step = self.phase.stop(req);
        log::info!(
            "{why}: shutting down ({}{})",
            step.how.describe(),
            if step.exit_now { ", exiting now" } else { "" }
        );
        self.sd_stopping();
        let now = Instant::now();
        let names: Vec<String> = self.pools.keys().cloned().collect();
        for name in names {
            if let Some(e) = self.pools.get_mut(&name) {
                let actions = e.pool.shutdown(step.how, now);
                self.execute(&name, actions);
            }
        }
    }

    /// Set a pool's count to `f(count)`, capped by [`MAX_WORKERS`]; `why`
    /// (the command or signal) is recorded as the pool's last change.
    pub(super) fn change_count(
        &mut self,
        name: &str,
        why: &str,
        f: impl FnOnce(usize) -> usize,
    ) -> Result<usize, RuntimeError> {
        let Some(e) = self.pools.get_mut(name) else {
            return Err(self.unknown_pool(name));
        };
        let n = f(e.pool.count());
        if n > MAX_WORKERS {
            return Err(RuntimeError::TooManyWorkers {
                pool: name.to_string(),
                count: n,
            });
        }
        let old = e.pool.count();
        let actions = e.pool.set_count(n, Instant::now())?;
        self.execute(name, actions);
        if n != old {
            self.note_change(name, format!("count {old} -> {n} ({why})"));
        }
        Ok(n)
    }

    /// `signal SIG`: to every worker of one pool or of all; returns how many
    /// signals were sent.
    pub(super) fn signal_pools(
        &mut self,
        pool: Option<&str>,
        sig: Signal,
    ) -> Result<usize, RuntimeError> {
        let mut n = 0;
        for name in self.addressed(pool, true)? {
            if let Some(e) = self.pools.get_mut(&name) {
                let actions = e.pool.signal_all(sig);
                n += actions.len();
                self.execute(&name, actions);
            }
        }
        Ok(n)
    }

    /// `max_rss`: read each acked worker's RSS and hand it to the pool, which
    /// recycles the ones over the limit. Re-armed by `rearm` (the pool is
    /// marked dirty), only while the pool sets `max_rss`.
    pub(super) fn sample_rss(&mut self, name: &str, now: Instant) {
        let Some(e) = self.pools.get(name) else {
            return;
        };
        let pids: Vec<Pid> = e
            .pool
            .workers_sorted()
            .iter()
            .filter(|w| w.is_acked())
            .filter_map(|w| w.pid)
            .collect();
        let mut actions = Vec::new();
        for pid in pids {
            let Some(rss) = crate::procfs::rss(pid) else {
                continue;
            };
            if let Some(e) = self.pools.get_mut(name) {
                if let Ok(a) = e.pool.over_rss(pid, rss, now) {
                    actions.extend(a);
                }
            }
        }
        self.execute(name, actions);
    }

    /// Hand a worker's ack to the pool that owns the pid.
    pub(super) fn worker_ack(&mut self, pid: Pid) -> Result<(), RuntimeError> {
        let name = self
            .pool_of_pid(pid)
            .ok_or(RuntimeError::NotAWorker { pid })?;
        let e = self
            .pools
            .get_mut(&name)
            .ok_or(RuntimeError::NotAWorker { pid })?;
        let actions = e.pool.ack(pid, Instant::now())?;
        self.execute(&name, actions);
        Ok(())
    }
}
