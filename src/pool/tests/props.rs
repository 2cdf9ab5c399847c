//! Property test: anything the configuration parser accepts can start,
//! scale, upgrade (smooth, fleet, canary), promote, roll back, reload, be
//! pinged, crash, time out and shut down, in any order, without a panic and
//! with the pool's bookkeeping intact. Files come from the schema-driven
//! generator of src/config/props.rs, values at and beyond every bound.

use proptest::prelude::*;

use super::*;
use crate::config::props::{config_text, Mix};
use crate::config::{Config, UpgradeStrategy};

#[derive(Debug, Clone)]
enum Op {
    /// Fork up to this many requested workers (a share of them fail).
    Fork(usize, bool),
    Ack(usize),
    Exit(usize),
    Ping(usize),
    /// Let time pass, up to far beyond the largest setting.
    Tick(u64),
    SetCount(usize),
    Upgrade(bool, Option<usize>),
    Promote,
    Rollback,
    /// Reload with another pool of the same file (or the same spec).
    Retune(usize),
    Shutdown(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..40usize, prop::bool::weighted(0.1)).prop_map(|(n, f)| Op::Fork(n, f)),
        3 => any::<usize>().prop_map(Op::Ack),
        3 => any::<usize>().prop_map(Op::Exit),
        1 => any::<usize>().prop_map(Op::Ping),
        3 => prop_oneof![0..2_000u64, 0..700_000_000u64, Just(u64::MAX / 4)].prop_map(Op::Tick),
        1 => (0..6usize).prop_map(Op::SetCount),
        2 => (prop::bool::ANY, prop::option::of(0..4usize)).prop_map(|(f, c)| Op::Upgrade(f, c)),
        1 => Just(Op::Promote),
        1 => Just(Op::Rollback),
        1 => any::<usize>().prop_map(Op::Retune),
        1 => prop::bool::ANY.prop_map(Op::Shutdown),
    ]
}

/// A minimal OS: fake pids, spawns queued until forked, signals recorded
/// (SIGKILL means the process is gone at its next `Exit`).
struct Os {
    pool: Pool,
    now: Instant,
    next_pid: Pid,
    queued: Vec<WorkerId>,
    live: Vec<Pid>,
}

impl Os {
    fn apply(&mut self, actions: Vec<Action>) {
        for a in actions {
            if let Action::Spawn { worker, .. } = a {
                self.queued.push(worker);
            }
        }
        self.check();
    }

    fn check(&self) {
        let p = &self.pool;
        if p.workers.len() > 1000 || p.held.len() > 1000 {
            return; // a 100,000-worker pool: the walk below would dominate
        }
        assert_eq!(
            p.buckets.values().map(Bucket::len).sum::<usize>() + p.draining,
            p.workers.len(),
            "buckets cover workers"
        );
        let holds: Vec<Instant> = p.held.iter().map(|h| h.at).collect();
        assert!(holds.windows(2).all(|w| w[0] <= w[1]), "holds sorted");
        // A hold still to come has its timer (a past one is refilled at the
        // next chance: an ack, an exit, room in an upgrade).
        for h in p.held.iter().filter(|h| h.at > self.now) {
            assert!(
                p.timers.contains(&(h.at, TimerKey::Respawn)),
                "hold without timer"
            );
        }
        let mut idx: Vec<u32> = p.workers.values().map(|w| w.index).collect();
        let n = idx.len();
        idx.sort_unstable();
        idx.dedup();
        assert_eq!(idx.len(), n, "duplicate EINHORN_CHILD_INDEX");
    }

    fn run(&mut self, op: Op, specs: &[Arc<PoolConfig>]) {
        match op {
            Op::Fork(n, fail) => {
                for id in self
                    .queued
                    .drain(..n.min(self.queued.len()))
                    .collect::<Vec<_>>()
                {
                    if !self.pool.wants_spawn(id) {
                        let a = self.pool.spawn_dropped(self.now);
                        self.apply(a);
                        continue;
                    }
                    let result = if fail {
                        Err(SpawnError::Program("no such file".into()))
                    } else {
                        self.next_pid += 1;
                        self.live.push(self.next_pid);
                        Ok(self.next_pid)
                    };
                    let a = self.pool.spawned(id, result, self.now);
                    self.apply(a);
                }
            }
            Op::Ack(i) if !self.live.is_empty() => {
                let pid = self.live[i % self.live.len()];
                if let Ok(a) = self.pool.ack(pid, self.now) {
                    self.apply(a);
                }
            }
            Op::Exit(i) if !self.live.is_empty() => {
                let pid = self.live.swap_remove(i % self.live.len());
                if let Some(a) = self.pool.exited(pid, "exit status 1", self.now) {
                    self.apply(a);
                }
            }
            Op::Ping(i) if !self.live.is_empty() => {
                let pid = self.live[i % self.live.len()];
                let _ = self.pool.ping(pid, Some("x".repeat(i % 300)), self.now);
            }
            Op::Tick(ms) => {
                self.now = later(self.now, Duration::from_millis(ms));
                let a = self.pool.tick(self.now);
                self.apply(a);
            }
            Op::SetCount(n) => {
                if let Ok(a) = self.pool.set_count(n, self.now) {
                    self.apply(a);
                }
            }
            Op::Upgrade(fleet, canary) => {
                let strategy = if fleet {
                    UpgradeStrategy::Fleet
                } else {
                    UpgradeStrategy::Smooth
                };
                if let Ok((_, a)) = self
                    .pool
                    .upgrade_with(Some(strategy), None, canary, self.now)
                {
                    self.apply(a);
                }
            }
            Op::Promote => {
                if let Ok((_, a)) = self.pool.promote(self.now) {
                    self.apply(a);
                }
            }
            Op::Rollback => {
                if let Ok((_, a)) = self.pool.rollback(None, self.now) {
                    self.apply(a);
                }
            }
            Op::Retune(i) => {
                let spec = specs[i % specs.len()].clone();
                let a = self.pool.retune(spec, self.now);
                self.apply(a);
            }
            Op::Shutdown(graceful) => {
                let how = if graceful {
                    Shutdown::Graceful
                } else {
                    Shutdown::With(Signal::SIGTERM)
                };
                let a = self.pool.shutdown(how, self.now);
                self.apply(a);
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn every_accepted_config_survives_any_sequence_of_events(
        text in config_text(Mix::Careful),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let Ok(config) = Config::from_toml_str(&text, None) else {
            return Ok(());
        };
        let specs: Vec<Arc<PoolConfig>> = config.pools.values().cloned().map(Arc::new).collect();
        for spec in &specs {
            let mut os = Os {
                pool: Pool::new(spec.clone()),
                now: Instant::now(),
                next_pid: 1,
                queued: Vec::new(),
                live: Vec::new(),
            };
            let a = os.pool.start(os.now);
            os.apply(a);
            for op in ops.iter().cloned() {
                os.run(op, &specs);
            }
            // However it ended, a shutdown finishes once every process is gone.
            let a = os.pool.shutdown(Shutdown::With(Signal::SIGKILL), os.now);
            os.apply(a);
            while let Some(pid) = os.live.pop() {
                if let Some(a) = os.pool.exited(pid, "killed by SIGKILL", os.now) {
                    os.apply(a);
                }
            }
            for id in std::mem::take(&mut os.queued) {
                if os.pool.wants_spawn(id) {
                    os.next_pid += 1;
                    let a = os.pool.spawned(id, Ok(os.next_pid), os.now);
                    os.apply(a);
                    if let Some(a) = os.pool.exited(os.next_pid, "killed", os.now) {
                        os.apply(a);
                    }
                } else {
                    let a = os.pool.spawn_dropped(os.now);
                    os.apply(a);
                }
            }
            prop_assert!(os.pool.is_empty(), "workers left after shutdown: {}", os.pool.len());
        }
    }
}

/// The largest count `check` accepts, through a start, an upgrade, a scale
/// down and a shutdown.
#[test]
fn a_pool_of_100000_workers_starts_upgrades_and_stops() {
    let mut spec = PoolConfig::new("big", vec!["./w".into()]);
    spec.count = 100_000;
    spec.ack = crate::config::AckMode::Manual;
    let specs = vec![Arc::new(spec)];
    let mut os = Os {
        pool: Pool::new(specs[0].clone()),
        now: Instant::now(),
        next_pid: 1,
        queued: Vec::new(),
        live: Vec::new(),
    };
    let a = os.pool.start(os.now);
    os.apply(a);
    assert_eq!(os.queued.len(), 100_000);
    // A version that cannot start, twice: 100,000 holds, then all refilled.
    os.run(Op::Fork(100_000, true), &specs);
    assert_eq!(os.pool.held.len(), 100_000);
    os.run(Op::Tick(3_600_000), &specs);
    os.run(Op::Fork(100_000, true), &specs);
    os.run(Op::Tick(3_600_000), &specs);
    // Then it starts.
    let a = os.pool.set_count(100_000, os.now).unwrap();
    os.apply(a);
    os.run(Op::Fork(100_000, false), &specs);
    for i in 0..100_000 {
        os.run(Op::Ack(i), &specs);
    }
    assert_eq!(os.pool.acked(), 100_000);
    os.run(Op::Upgrade(false, None), &specs);
    os.run(Op::Fork(1_000, false), &specs);
    os.run(Op::SetCount(3), &specs);
    os.run(Op::Shutdown(false), &specs);
    while let Some(pid) = os.live.pop() {
        if let Some(a) = os.pool.exited(pid, "exit status 0", os.now) {
            os.apply(a);
        }
    }
    assert!(os.pool.is_empty());
}
