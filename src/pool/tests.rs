//! The pool state machine driven by a simulated OS: fake pids, recorded signals,
//! synthetic time. Invariants are checked after every step.

use super::*;
use crate::config::PoolConfig;

const S: Duration = Duration::from_secs(1);

type Outcome = Option<Result<(), String>>;

struct Sim {
    pool: Pool,
    now: Instant,
    next_pid: Pid,
    /// pid -> signals received
    signals: BTreeMap<Pid, Vec<Signal>>,
    /// pid -> signals sent to its whole process group
    group_signals: BTreeMap<Pid, Vec<Signal>>,
    /// Pids that exited (a group kill may follow their exit).
    exited: BTreeSet<Pid>,
    progress: Vec<(UpgradeId, String, Outcome)>,
    stopped: bool,
    /// Pids whose next spawn attempts fail (exec error), counted down.
    fail_spawns: usize,
    /// Invariants for upgrades: minimum acked non-draining workers allowed.
    acked_floor: usize,
    max_new_unacked_seen: usize,
    max_live_seen: usize,
}

/// Manual ack (the tests ack workers themselves) with an ack timeout far beyond
/// any test's time, so it only fires where a test sets it.
fn spec(count: usize) -> PoolConfig {
    let mut p = PoolConfig::new("web", vec!["./w".into()]);
    p.count = count;
    p.ack = AckMode::Manual;
    p.ack_timeout = 3600 * S;
    p.max_unacked = 2;
    p.max_surge = Some(1);
    p
}

impl Sim {
    fn new(p: PoolConfig) -> Sim {
        let mut s = Sim {
            pool: Pool::new(Arc::new(p)),
            now: Instant::now(),
            next_pid: 1000,
            signals: BTreeMap::new(),
            group_signals: BTreeMap::new(),
            exited: BTreeSet::new(),
            progress: Vec::new(),
            stopped: false,
            fail_spawns: 0,
            acked_floor: 0,
            max_new_unacked_seen: 0,
            max_live_seen: 0,
        };
        let a = s.pool.start(s.now);
        s.apply(a);
        s
    }

    fn apply(&mut self, actions: Vec<Action>) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            match a {
                Action::Spawn { worker, .. } => {
                    let res = if self.fail_spawns > 0 {
                        self.fail_spawns -= 1;
                        Err(crate::pool::SpawnError::Program("exec failed".to_string()))
                    } else {
                        self.next_pid += 1;
                        Ok(self.next_pid)
                    };
                    queue.extend(self.pool.spawned(worker, res, self.now));
                }
                Action::Signal { pid, signal, group } => {
                    // Only a group kill may follow a worker's exit (what is
                    // left of a stop_group worker's group).
                    let live = self.pool.worker_by_pid(pid).is_some();
                    assert!(
                        live || (group && signal == Signal::SIGKILL && self.exited.contains(&pid)),
                        "signal {signal} to pid {pid} that is not a live worker"
                    );
                    if live {
                        self.signals.entry(pid).or_default().push(signal);
                    }
                    if group {
                        self.group_signals.entry(pid).or_default().push(signal);
                    }
                }
                Action::Progress {
                    upgrade,
                    message,
                    outcome,
                } => self.progress.push((upgrade, message, outcome)),
                Action::Stopped => {
                    assert!(!self.stopped, "Stopped reported twice");
                    self.stopped = true;
                }
            }
            self.check();
        }
        self.check();
    }

    fn check(&mut self) {
        let p = &self.pool;
        let live_nd: usize = p.buckets.values().map(Bucket::len).sum();
        let draining = p.workers.values().filter(|w| w.is_draining()).count();
        assert_eq!(draining, p.draining, "draining counter");
        assert_eq!(live_nd + draining, p.workers.len(), "buckets cover workers");
        let acked = p.workers.values().filter(|w| w.is_acked()).count();
        assert_eq!(acked, p.acked(), "acked buckets");
        // Indexes unique among live workers.
        let mut idx: Vec<u32> = p.workers.values().map(|w| w.index).collect();
        idx.sort_unstable();
        let n = idx.len();
        idx.dedup();
        assert_eq!(idx.len(), n, "duplicate EINHORN_CHILD_INDEX");
        if p.upgrade.is_some() {
            assert!(
                acked >= self.acked_floor,
                "acked {acked} fell below {} during upgrade",
                self.acked_floor
            );
            let new_unacked = p.buckets.get(&p.target.0).map_or(0, |b| b.unacked.len());
            self.max_new_unacked_seen = self.max_new_unacked_seen.max(new_unacked);
            self.max_live_seen = self.max_live_seen.max(live_nd);
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        let a = self.pool.tick(self.now);
        self.apply(a);
    }

    /// Jump to the pool's next deadline (if any) and process it.
    fn run_next_deadline(&mut self) -> bool {
        match self.pool.next_deadline() {
            Some(t) => {
                self.now = self.now.max(t);
                let a = self.pool.tick(self.now);
                self.apply(a);
                true
            }
            None => false,
        }
    }

    fn pids(&self, f: impl Fn(&Worker) -> bool) -> Vec<Pid> {
        let mut v: Vec<Pid> = self
            .pool
            .workers
            .values()
            .filter(|w| f(w))
            .filter_map(|w| w.pid)
            .collect();
        v.sort_unstable();
        v
    }
    fn unacked(&self) -> Vec<Pid> {
        self.pids(|w| matches!(w.state, WorkerState::Unacked { .. }))
    }
    fn acked_pids(&self) -> Vec<Pid> {
        self.pids(Worker::is_acked)
    }
    fn draining_pids(&self) -> Vec<Pid> {
        self.pids(Worker::is_draining)
    }

    fn ack(&mut self, pid: Pid) {
        let a = match self.pool.ack(pid, self.now) {
            Ok(a) => a,
            Err(e) => panic!("ack {pid}: {e}"),
        };
        self.apply(a);
    }
    fn ack_all(&mut self) {
        for pid in self.unacked() {
            self.ack(pid);
        }
    }
    fn exit(&mut self, pid: Pid) {
        self.exited.insert(pid);
        let a = self.pool.exited(pid, "exit status 0", self.now);
        assert!(a.is_some(), "exit of unknown pid {pid}");
        self.apply(a.unwrap_or_default());
    }
    /// Workers that were told to stop exit.
    fn drain_exit(&mut self) {
        for pid in self.draining_pids() {
            self.exit(pid);
        }
    }
    fn versions(&self) -> BTreeSet<u64> {
        self.pool
            .workers
            .values()
            .filter(|w| !w.is_draining())
            .map(|w| w.version)
            .collect()
    }
    fn final_outcome(&self, id: UpgradeId) -> Outcome {
        self.progress
            .iter()
            .find(|(u, _, o)| *u == id && o.is_some())
            .and_then(|(_, _, o)| o.clone())
    }
    fn upgrade(&mut self, strategy: UpgradeStrategy) -> UpgradeId {
        self.acked_floor = self.pool.acked().min(self.pool.count());
        self.max_new_unacked_seen = 0;
        self.max_live_seen = 0;
        match self.pool.upgrade(Some(strategy), None, self.now) {
            Ok((id, a)) => {
                self.apply(a);
                id
            }
            Err(e) => panic!("upgrade: {e}"),
        }
    }
}

fn started(count: usize) -> Sim {
    let mut s = Sim::new(spec(count));
    s.ack_all();
    s
}

#[test]
fn start_spawns_count_workers_with_distinct_indexes() {
    let s = Sim::new(spec(4));
    assert_eq!(s.unacked().len(), 4);
    let mut idx: Vec<u32> = s.pool.workers.values().map(|w| w.index).collect();
    idx.sort_unstable();
    assert_eq!(idx, vec![0, 1, 2, 3]);
}

#[test]
fn timer_mode_acks_after_ack_timer_and_ignores_explicit_acks() {
    let mut p = spec(3);
    p.ack = AckMode::Timer;
    let mut s = Sim::new(p);
    let pid = s.unacked()[0];
    let a = s.pool.ack(pid, s.now);
    assert_eq!(a, Ok(Vec::new()));
    assert_eq!(
        s.pool.acked(),
        0,
        "an explicit ack does not count in timer mode"
    );
    s.advance(Duration::from_millis(999));
    assert_eq!(s.pool.acked(), 0);
    s.advance(Duration::from_millis(1));
    assert_eq!(s.pool.acked(), 3);
    assert!(s.pool.is_settled());
    assert_eq!(s.pool.next_deadline(), None, "nothing left to wake up for");
}

#[test]
fn manual_mode_kills_a_worker_that_never_acks_and_replaces_it() {
    let mut p = spec(2);
    p.ack = AckMode::Manual;
    p.ack_timeout = 10 * S;
    let mut s = Sim::new(p);
    let pids = s.unacked();
    s.ack(pids[0]);
    s.advance(10 * S);
    assert_eq!(s.signals.get(&pids[1]), Some(&vec![Signal::SIGKILL]));
    assert_eq!(s.draining_pids(), vec![pids[1]]);
    // Replaced at once (the ack timeout already bounds the rate) ...
    let replacement = s.unacked();
    assert_eq!(replacement.len(), 1);
    assert_ne!(replacement[0], pids[1]);
    // ... its death is a failure ...
    s.exit(pids[1]);
    assert_eq!(s.pool.failures(), 1);
    assert_eq!(s.pool.respawn_at(), None, "its slot is already refilled");
    // ... and the slot carries it: when the replacement misses its ack too,
    // its own replacement waits `respawn_delay`, then 1.5 times that.
    let t0 = s.now;
    s.advance(10 * S);
    assert!(s.unacked().is_empty() || s.unacked() == replacement);
    assert_eq!(s.pool.respawn_at(), Some(t0 + 10 * S + S));
    s.exit(replacement[0]);
    assert_eq!(s.pool.failures(), 2);
    while s.unacked().is_empty() {
        assert!(s.run_next_deadline());
    }
    assert_eq!(s.now, t0 + 10 * S + S);
    let third = s.unacked()[0];
    s.advance(10 * S);
    s.exit(third);
    let t1 = s.now;
    while s.unacked().is_empty() {
        assert!(s.run_next_deadline());
    }
    assert_eq!(s.now - t1, backoff(S, 2));
}

#[test]
fn crash_loop_backs_off_by_one_and_a_half_capped_at_30s() {
    let mut s = Sim::new(spec(1));
    let mut gaps = Vec::new();
    for _ in 0..14 {
        let pid = s.unacked()[0];
        let t0 = s.now;
        s.exit(pid);
        assert!(s.unacked().is_empty(), "respawned without delay");
        while s.unacked().is_empty() {
            assert!(s.run_next_deadline(), "no respawn scheduled");
        }
        gaps.push(s.now - t0);
    }
    let expect: Vec<Duration> = (1..=14).map(|n| backoff(S, n)).collect();
    assert_eq!(gaps, expect);
    assert_eq!(gaps[0], S);
    assert_eq!(gaps[1], Duration::from_millis(1500));
    assert_eq!(*gaps.last().unwrap_or(&S), MAX_RESPAWN_DELAY);
    // An ack resets the backoff.
    let pid = s.unacked()[0];
    s.ack(pid);
    assert_eq!(s.pool.failures(), 0);
}

/// Backoff is for a version that cannot start: a worker that had acked and
/// then dies is replaced at once, and is not counted as a failure.
#[test]
fn a_crash_after_ack_is_replaced_at_once_without_counting_a_failure() {
    let mut s = started(2);
    let pid = s.acked_pids()[0];
    s.exit(pid);
    assert_eq!(s.pool.failures(), 0);
    assert_eq!(s.pool.len(), 2, "replaced in the same step");
    assert_eq!(s.unacked().len(), 1);
}

#[test]
fn retries_bound_respawns_then_an_operator_command_revives_the_pool() {
    let mut p = spec(1);
    p.retries = Some(2);
    let mut s = Sim::new(p);
    // `retries = 2`: two failed attempts, then the pool gives up.
    for _ in 0..2 {
        assert!(!s.pool.gave_up());
        let pid = s.unacked()[0];
        s.exit(pid);
        while s.unacked().is_empty() && s.run_next_deadline() {}
    }
    assert!(s.pool.gave_up());
    assert!(s.pool.is_empty());
    assert_eq!(s.pool.next_deadline(), None, "a pool that gave up sleeps");
    let a = s.pool.set_count(1, s.now).unwrap_or_default();
    s.apply(a);
    assert_eq!(s.unacked().len(), 1);
}

#[test]
fn spawn_errors_count_as_failures_and_back_off() {
    let mut s = Sim {
        fail_spawns: 3,
        ..Sim::new(spec(0))
    };
    let a = s.pool.set_count(1, s.now).unwrap_or_default();
    s.apply(a);
    assert_eq!(s.pool.failures(), 1);
    assert!(s.pool.is_empty());
    s.advance(S);
    assert_eq!(s.pool.failures(), 2);
    s.advance(Duration::from_millis(1500));
    assert_eq!(s.pool.failures(), 3);
    s.advance(Duration::from_millis(2250));
    assert_eq!(s.unacked().len(), 1);
}

#[test]
fn scaling_down_stops_unacked_then_highest_indexes_and_frees_them() {
    let mut s = started(4);
    let a = s.pool.set_count(6, s.now).unwrap_or_default();
    s.apply(a);
    assert_eq!(s.unacked().len(), 2);
    let a = s.pool.set_count(3, s.now).unwrap_or_default();
    s.apply(a);
    // The two unacked go first, then the acked one with the highest index.
    assert_eq!(s.draining_pids().len(), 3);
    let stopped_idx: BTreeSet<u32> = s
        .pool
        .workers
        .values()
        .filter(|w| w.is_draining())
        .map(|w| w.index)
        .collect();
    assert_eq!(stopped_idx, [3, 4, 5].into_iter().collect());
    for pid in s.draining_pids() {
        assert_eq!(s.signals.get(&pid), Some(&vec![Signal::SIGUSR2]));
    }
    s.drain_exit();
    let a = s.pool.set_count(4, s.now).unwrap_or_default();
    s.apply(a);
    let idx: BTreeSet<u32> = s.pool.workers.values().map(|w| w.index).collect();
    assert_eq!(
        idx,
        [0, 1, 2, 3].into_iter().collect(),
        "lowest free index reused"
    );
}

#[test]
fn a_worker_ignoring_its_stop_signal_gets_sigkill_after_stop_timeout() {
    let mut p = spec(1);
    p.stop_timeout = 5 * S;
    let mut s = Sim::new(p);
    s.ack_all();
    let pid = s.acked_pids()[0];
    let a = s.pool.shutdown(Shutdown::Graceful, s.now);
    s.apply(a);
    s.advance(Duration::from_millis(4999));
    assert_eq!(s.signals[&pid], vec![Signal::SIGUSR2]);
    s.advance(Duration::from_millis(1));
    assert_eq!(s.signals[&pid], vec![Signal::SIGUSR2, Signal::SIGKILL]);
    s.advance(60 * S);
    assert_eq!(s.signals[&pid].len(), 2, "SIGKILL sent once");
    assert!(!s.stopped);
    s.exit(pid);
    assert!(s.stopped);
}

#[test]
fn the_sigkill_escalation_reaches_the_group_and_stop_group_the_rest() {
    // Default: the stop signal to the worker alone (einhorn), the SIGKILL
    // after stop_timeout to its whole group, nothing after its exit.
    let mut p = spec(2);
    p.stop_timeout = 5 * S;
    let mut s = Sim::new(p.clone());
    s.ack_all();
    let pids = s.acked_pids();
    let a = s.pool.shutdown(Shutdown::Graceful, s.now);
    s.apply(a);
    assert!(s.group_signals.is_empty(), "{:?}", s.group_signals);
    s.advance(5 * S);
    for pid in &pids {
        assert_eq!(s.group_signals[pid], vec![Signal::SIGKILL]);
    }
    s.drain_exit();
    for pid in &pids {
        assert_eq!(
            s.group_signals[pid],
            vec![Signal::SIGKILL],
            "no kill after exit"
        );
    }
    // stop_group: every stop signal to the group, and the group killed when
    // the worker exits, whatever ended it; `signal` still goes to the worker.
    p.stop_group = true;
    let mut s = Sim::new(p);
    s.ack_all();
    let pids = s.acked_pids();
    let a = s.pool.signal_all(Signal::SIGHUP);
    s.apply(a);
    assert!(s.group_signals.is_empty());
    let a = s.pool.set_count(1, s.now).expect("scale");
    s.apply(a);
    let stopped = s.draining_pids()[0];
    assert_eq!(s.group_signals[&stopped], vec![Signal::SIGUSR2]);
    s.exit(stopped);
    assert_eq!(
        s.group_signals[&stopped],
        vec![Signal::SIGUSR2, Signal::SIGKILL]
    );
    // A crash of the other: its group goes too, and a replacement starts.
    let other = *pids.iter().find(|p| **p != stopped).expect("other");
    s.exit(other);
    assert_eq!(s.group_signals[&other], vec![Signal::SIGKILL]);
    assert_eq!(s.unacked().len(), 1);
}

#[test]
fn shutdown_with_a_signal_sends_it_and_never_respawns() {
    let mut s = started(3);
    let a = s.pool.shutdown(Shutdown::With(Signal::SIGTERM), s.now);
    s.apply(a);
    for pid in s.draining_pids() {
        assert_eq!(s.signals[&pid], vec![Signal::SIGTERM]);
    }
    let first = s.draining_pids()[0];
    s.exit(first);
    s.advance(10 * S);
    assert_eq!(s.pool.len(), 2, "no respawn during shutdown");
    assert!(matches!(
        s.pool.set_count(5, s.now),
        Err(PoolError::ShuttingDown { .. })
    ));
    assert!(s.pool.upgrade(None, None, s.now).is_err());
    s.drain_exit();
    assert!(s.stopped);
}

#[test]
fn unknown_pids_are_not_workers() {
    let mut s = started(1);
    assert!(s.pool.exited(4242, "x", s.now).is_none());
    assert_eq!(
        s.pool.ack(4242, s.now),
        Err(PoolError::NotAWorker {
            pool: "web".into(),
            pid: 4242
        })
    );
    assert!(s.pool.ping(4242, None, s.now).is_err());
    let pid = s.acked_pids()[0];
    assert!(s.pool.ping(pid, Some("r1".into()), s.now).is_ok());
    assert_eq!(
        s.pool.worker_by_pid(pid).and_then(|w| w.last_ping.clone()),
        Some((s.now, Some("r1".into())))
    );
}

/// Drive an upgrade to its end with well-behaved new workers (ack in a chosen
/// order) and old workers that exit when told; return the outcome.
fn run_upgrade(s: &mut Sim, id: UpgradeId, ack_newest_first: bool) -> Result<(), String> {
    for _ in 0..10_000 {
        if let Some(o) = s.final_outcome(id) {
            return o;
        }
        let mut un = s.unacked();
        if ack_newest_first {
            un.reverse();
        }
        if let Some(pid) = un.first() {
            s.ack(*pid);
        } else if let Some(pid) = s.draining_pids().first() {
            s.exit(*pid);
        } else if !s.run_next_deadline() {
            panic!("upgrade stuck: {:?}", s.pool);
        }
    }
    panic!("upgrade did not finish");
}

#[test]
fn smooth_upgrade_bounds_hold_at_every_step_for_every_shape() {
    for count in 0..=6usize {
        for max_unacked in 1..=3usize {
            for surge in 1..=3usize {
                for order in [false, true] {
                    let mut p = spec(count);
                    p.max_unacked = max_unacked;
                    p.max_surge = Some(surge);
                    let mut s = Sim::new(p);
                    s.ack_all();
                    let old: BTreeSet<Pid> = s.acked_pids().into_iter().collect();
                    let id = s.upgrade(UpgradeStrategy::Smooth);
                    assert_eq!(run_upgrade(&mut s, id, order), Ok(()));
                    let ctx = format!("count {count} max_unacked {max_unacked} surge {surge}");
                    assert!(
                        s.max_new_unacked_seen <= max_unacked,
                        "{ctx}: unacked bound"
                    );
                    assert!(s.max_live_seen <= count + surge, "{ctx}: surge bound");
                    s.drain_exit();
                    assert_eq!(s.pool.acked(), count, "{ctx}");
                    assert_eq!(s.versions().len(), usize::from(count > 0), "{ctx}");
                    assert!(
                        s.acked_pids().iter().all(|p| !old.contains(p)),
                        "{ctx}: all new"
                    );
                    assert!(s.pool.upgrading().is_none());
                    assert_eq!(
                        s.pool.last_upgrade().map(|o| o.result.clone()),
                        Some(Ok(()))
                    );
                }
            }
        }
    }
}

#[test]
fn smooth_upgrade_retires_one_old_worker_per_new_ack() {
    let mut s = started(4);
    let old = s.acked_pids();
    let id = s.upgrade(UpgradeStrategy::Smooth);
    // max_unacked 2, surge 1: one new worker at a time.
    assert_eq!(s.unacked().len(), 1);
    assert!(
        s.draining_pids().is_empty(),
        "nothing retired before an ack"
    );
    let n1 = s.unacked()[0];
    s.ack(n1);
    assert_eq!(s.draining_pids().len(), 1);
    assert!(old.contains(&s.draining_pids()[0]));
    let msgs: Vec<&str> = s.progress.iter().map(|(_, m, _)| m.as_str()).collect();
    assert!(
        msgs.iter().any(|m| m.contains("1/4 new workers acked")),
        "{msgs:?}"
    );
    assert!(msgs.iter().any(|m| m.contains("retired pid")), "{msgs:?}");
    assert_eq!(run_upgrade(&mut s, id, false), Ok(()));
    let last = s
        .progress
        .last()
        .map(|(_, m, _)| m.clone())
        .unwrap_or_default();
    assert!(last.contains("upgrade done"), "{last}");
}

#[test]
fn fleet_upgrade_starts_all_and_retires_old_only_when_all_new_acked() {
    let mut s = started(4);
    let old = s.acked_pids();
    let id = s.upgrade(UpgradeStrategy::Fleet);
    let new = s.unacked();
    assert_eq!(new.len(), 4);
    for pid in &new[..3] {
        s.ack(*pid);
        assert!(s.draining_pids().is_empty(), "fleet retired early");
    }
    s.ack(new[3]);
    assert_eq!(s.draining_pids(), old);
    assert_eq!(s.final_outcome(id), Some(Ok(())));
}

#[test]
fn a_crashing_new_version_is_abandoned_after_retries_and_old_workers_keep_serving() {
    let mut p = spec(4);
    p.retries = Some(3);
    let mut s = Sim::new(p);
    s.ack_all();
    let old = s.acked_pids();
    let id = s.upgrade(UpgradeStrategy::Smooth);
    let mut crashes = 0;
    while s.final_outcome(id).is_none() {
        if let Some(pid) = s.unacked().first() {
            s.exit(*pid);
            crashes += 1;
        } else {
            assert!(s.run_next_deadline(), "stuck");
        }
    }
    assert_eq!(crashes, 3);
    let Some(Err(why)) = s.final_outcome(id) else {
        panic!("expected failure")
    };
    assert!(why.contains("failed 3 time"), "{why}");
    // The reply says why: which pid, how it ended.
    assert!(why.contains("exit status 0 before it acked"), "{why}");
    assert_eq!(s.acked_pids(), old, "old workers untouched");
    assert!(s.draining_pids().is_empty());
    assert_eq!(s.pool.version(), 1, "back to the old version");
    assert!(s.pool.last_upgrade().is_some_and(|o| o.result.is_err()));
    // Steady state again: nothing spawns, nothing is due but nothing.
    assert!(s.unacked().is_empty());
}

#[test]
fn ack_timeout_of_new_workers_abandons_the_upgrade() {
    let mut p = spec(2);
    p.ack = AckMode::Manual;
    p.ack_timeout = 5 * S;
    p.retries = Some(2);
    let mut s = Sim::new(p);
    s.ack_all();
    let old = s.acked_pids();
    let id = s.upgrade(UpgradeStrategy::Smooth);
    while s.final_outcome(id).is_none() {
        if let Some(pid) = s.draining_pids().first() {
            assert_eq!(s.signals[pid], vec![Signal::SIGKILL]);
            s.exit(*pid);
        } else {
            assert!(s.run_next_deadline(), "stuck");
        }
    }
    let Some(Err(why)) = s.final_outcome(id) else {
        panic!("expected failure")
    };
    assert!(why.contains("did not ack within 5s"), "{why}");
    assert_eq!(s.acked_pids(), old);
}

#[test]
fn an_upgrade_during_an_upgrade_supersedes_it_and_ends_on_one_version() {
    let mut s = started(4);
    let first = s.upgrade(UpgradeStrategy::Smooth);
    let n1 = s.unacked()[0];
    s.ack(n1); // one v2 acked, one v1 retired
    s.drain_exit();
    let second = s.upgrade(UpgradeStrategy::Smooth);
    assert!(matches!(s.final_outcome(first), Some(Err(ref m)) if m.contains("superseded")));
    assert_eq!(run_upgrade(&mut s, second, false), Ok(()));
    s.drain_exit();
    assert_eq!(s.versions(), [3].into_iter().collect());
    assert_eq!(s.pool.acked(), 4);
}

#[test]
fn superseding_a_failing_upgrade_falls_back_to_the_original_version() {
    let mut p = spec(2);
    p.retries = Some(1);
    let mut s = Sim::new(p);
    s.ack_all();
    s.upgrade(UpgradeStrategy::Smooth);
    let id = s.upgrade(UpgradeStrategy::Smooth);
    let pid = s.unacked()[0];
    s.exit(pid);
    assert!(matches!(s.final_outcome(id), Some(Err(_))));
    assert_eq!(s.pool.version(), 1);
}

#[test]
fn scale_changes_during_an_upgrade_are_honoured() {
    let mut s = started(4);
    let id = s.upgrade(UpgradeStrategy::Smooth);
    let a = s.pool.set_count(2, s.now).unwrap_or_default();
    s.acked_floor = 2;
    s.apply(a);
    assert_eq!(run_upgrade(&mut s, id, false), Ok(()));
    s.drain_exit();
    assert_eq!(s.pool.acked(), 2);
    let mut s = started(2);
    let id = s.upgrade(UpgradeStrategy::Smooth);
    let a = s.pool.set_count(5, s.now).unwrap_or_default();
    s.apply(a);
    assert_eq!(run_upgrade(&mut s, id, true), Ok(()));
    s.drain_exit();
    assert_eq!(s.pool.acked(), 5);
    assert_eq!(s.versions().len(), 1);
}

#[test]
fn shutdown_during_an_upgrade_ends_it_and_stops_everyone() {
    let mut s = started(3);
    let id = s.upgrade(UpgradeStrategy::Fleet);
    let a = s.pool.shutdown(Shutdown::Graceful, s.now);
    s.apply(a);
    assert!(matches!(s.final_outcome(id), Some(Err(ref m)) if m.contains("shutdown")));
    assert_eq!(s.draining_pids().len(), 6);
    s.drain_exit();
    assert!(s.stopped);
    assert_eq!(s.pool.next_deadline(), None);
}

#[test]
fn old_version_dying_during_an_upgrade_is_replaced_by_a_new_one() {
    let mut s = started(3);
    let id = s.upgrade(UpgradeStrategy::Smooth);
    let old = s.acked_pids()[0];
    s.acked_floor = 0;
    s.exit(old);
    assert_eq!(run_upgrade(&mut s, id, false), Ok(()));
    s.drain_exit();
    assert_eq!(s.pool.acked(), 3);
}

#[test]
fn a_thousand_workers_start_and_upgrade() {
    let mut p = spec(1000);
    p.max_unacked = 8;
    p.max_surge = Some(8);
    let mut s = Sim::new(p);
    assert_eq!(s.unacked().len(), 1000);
    s.ack_all();
    let id = s.upgrade(UpgradeStrategy::Smooth);
    assert_eq!(run_upgrade(&mut s, id, false), Ok(()));
    assert!(s.max_new_unacked_seen <= 8);
}

#[test]
fn backoff_grows_by_half_and_caps() {
    assert_eq!(backoff(S, 0), S);
    assert_eq!(backoff(S, 1), S);
    assert_eq!(backoff(S, 2), Duration::from_millis(1500));
    assert_eq!(backoff(S, 3), Duration::from_millis(2250));
    assert_eq!(backoff(S, 100), MAX_RESPAWN_DELAY);
    assert_eq!(backoff(Duration::ZERO, 5), Duration::ZERO);
}

// ---- ack = "notify": READY, WATCHDOG, STOPPING (crate::systemd::worker_notify) ----------

fn notify_spec(watchdog: Option<Duration>) -> PoolConfig {
    let mut p = spec(1);
    p.ack = AckMode::Notify;
    p.ack_timeout = 10 * S;
    p.watchdog = watchdog;
    p
}

#[test]
fn notify_mode_waits_for_ready_like_manual() -> Result<(), PoolError> {
    let mut sim = Sim::new(notify_spec(None));
    let pid = sim.pids(|_| true)[0];
    sim.advance(5 * S);
    assert_eq!(
        sim.pool.acked(),
        0,
        "time alone does not ack in notify mode"
    );
    let a = sim.pool.ack(pid, sim.now)?;
    sim.apply(a);
    assert_eq!(sim.pool.acked(), 1);
    // No watchdog configured: no deadline left.
    assert_eq!(sim.pool.next_deadline(), None);
    Ok(())
}

#[test]
fn watchdog_pings_keep_a_worker_and_a_miss_replaces_it() -> Result<(), PoolError> {
    let mut sim = Sim::new(notify_spec(Some(2 * S)));
    let pid = sim.pids(|_| true)[0];
    let a = sim.pool.ack(pid, sim.now)?;
    sim.apply(a);
    for _ in 0..5 {
        sim.advance(S);
        sim.pool.watchdog_ping(pid, sim.now)?;
    }
    assert!(sim.pool.worker_by_pid(pid).is_some_and(Worker::is_acked));
    sim.advance(2 * S);
    assert_eq!(sim.signals.get(&pid), Some(&vec![Signal::SIGKILL]));
    assert!(matches!(
        sim.pool.worker_by_pid(pid).map(|w| &w.state),
        Some(WorkerState::Draining {
            reason: StopReason::Watchdog,
            ..
        })
    ));
    // A replacement was spawned at once.
    assert_eq!(sim.pids(|w| !w.is_draining()).len(), 1);
    Ok(())
}

#[test]
fn stopping_drains_without_a_signal_and_starts_a_replacement() -> Result<(), PoolError> {
    let mut sim = Sim::new(notify_spec(None));
    let pid = sim.pids(|_| true)[0];
    let a = sim.pool.ack(pid, sim.now)?;
    sim.apply(a);
    sim.pool.notify_status(pid, "busy".into())?;
    assert_eq!(
        sim.pool
            .worker_by_pid(pid)
            .and_then(|w| w.notify_status.clone()),
        Some("busy".to_string())
    );
    let a = sim.pool.worker_stopping(pid, sim.now)?;
    sim.apply(a);
    assert_eq!(sim.signals.get(&pid), None, "it is stopping already");
    assert_eq!(sim.pids(|w| !w.is_draining()).len(), 1);
    // Still alive after stop_timeout: SIGKILL.
    sim.advance(sim.pool.spec().stop_timeout);
    assert_eq!(sim.signals.get(&pid), Some(&vec![Signal::SIGKILL]));
    assert!(sim.pool.worker_stopping(4242, sim.now).is_err());
    Ok(())
}

// ---- reliability: no pool waits at zero when it could run workers ----------

fn timer_spec(count: usize) -> PoolConfig {
    let mut p = spec(count);
    p.ack = AckMode::Timer;
    p.ack_timer = Duration::from_millis(50);
    p
}

/// The exit of a timer-acked worker and its ack timer can be handled in the
/// same loop turn, exit first: a worker that lived past `ack_timer` counts as
/// acked, not as a crash before ack.
#[test]
fn an_exit_past_the_ack_timer_counts_as_acked_even_before_the_timer_ran() {
    let mut s = Sim::new(timer_spec(4));
    // Time passes beyond ack_timer, but the exits are seen before the tick.
    s.now += Duration::from_millis(200);
    for pid in s.unacked() {
        s.exit(pid);
    }
    assert_eq!(s.pool.failures(), 0, "no crash before ack was counted");
    assert_eq!(s.pool.respawn_at(), None, "no backoff");
    assert_eq!(s.pool.len(), 4, "all replaced at once");
}

/// `-n 64 -m 0.05 -- bash -c 'sleep 0.2; exit 1'`: every worker survives its ack
/// timer and dies; the pool keeps all 64 running and never backs off to 30 s.
#[test]
fn workers_that_ack_then_die_never_push_the_pool_into_backoff() {
    let mut s = Sim::new(timer_spec(64));
    for _round in 0..20 {
        s.advance(Duration::from_millis(60)); // acked by timer
        assert_eq!(s.acked_pids().len(), 64);
        s.now += Duration::from_millis(150);
        for pid in s.acked_pids() {
            s.exit(pid);
        }
        assert_eq!(s.pool.len(), 64, "replaced at once");
        assert_eq!(s.pool.respawn_at(), None);
    }
}

/// A backoff held for one crash-looping worker does not hold back the
/// replacement of acked workers that die (a kill -9 storm under load).
#[test]
fn acked_workers_are_replaced_during_another_workers_backoff() {
    let mut s = started(3);
    // One new worker crashes before acking a few times: backoff grows.
    let victim = s.acked_pids()[0];
    s.exit(victim);
    for _ in 0..4 {
        while s.unacked().is_empty() && s.run_next_deadline() {}
        let pid = s.unacked()[0];
        s.exit(pid);
        assert!(s.pool.respawn_at().is_some());
    }
    let backoff_until = s.pool.respawn_at();
    assert!(backoff_until.is_some(), "the crash loop backs off");
    // Now the acked ones are killed: each is replaced at once.
    for pid in s.acked_pids() {
        s.exit(pid);
        assert!(!s.unacked().is_empty(), "replacement spawned at once");
    }
    assert!(
        s.pool.len() >= 2,
        "the pool is not left at zero: {}",
        s.pool.len()
    );
    assert!(
        s.pool.respawn_at() <= backoff_until,
        "the backoff never grows past its cap because of acked deaths"
    );
}

/// Give-up is about a version that cannot start: an acked worker that dies
/// after the pool gave up on another is still replaced.
#[test]
fn a_pool_that_gave_up_still_replaces_acked_workers() {
    let mut p = spec(2);
    p.retries = Some(1);
    let mut s = Sim::new(p);
    let pids = s.unacked();
    s.ack(pids[0]);
    s.exit(pids[1]); // failure 1 of 1: gives up
    assert!(s.pool.gave_up());
    s.exit(pids[0]); // the acked one dies
    assert_eq!(s.pool.len(), 1, "replaced despite the give-up");
}

/// Spawn failures that are the master's own (out of fds or processes) are not
/// counted against the worker: no growing backoff, no give-up, a retry soon.
#[test]
fn the_masters_own_spawn_failures_are_retried_without_counting() {
    let mut p = spec(1);
    p.retries = Some(1);
    let mut s = Sim::new(p);
    let pid = s.unacked()[0];
    s.exit(pid);
    // (retries = 1: that was the last chance for the worker's own failures.)
    let a = s.pool.set_count(1, s.now).unwrap_or_default();
    // Revived by the operator; now the master runs out of fds on each spawn.
    let mut failed = 0;
    for action in a {
        if let Action::Spawn { worker, .. } = action {
            let out = s.pool.spawned(
                worker,
                Err(SpawnError::Resources("Too many open files".into())),
                s.now,
            );
            failed += 1;
            s.apply(out);
        }
    }
    assert_eq!(failed, 1);
    assert_eq!(s.pool.failures(), 0, "not counted against the worker");
    assert!(!s.pool.gave_up());
    assert_eq!(s.pool.respawn_at(), Some(later(s.now, MASTER_RETRY)));
    s.advance(MASTER_RETRY);
    assert_eq!(s.unacked().len(), 1, "retried after MASTER_RETRY");
    let ev = s.pool.take_events();
    assert!(ev.iter().any(|e| matches!(
        e,
        PoolEvent::SpawnFailed {
            master_side: true,
            ..
        }
    )));
}

/// Deadlines are computed without overflow even for the longest settings.
#[test]
fn the_longest_durations_never_overflow_a_deadline() {
    let mut p = spec(2);
    let max = crate::config::MAX_DURATION;
    p.ack_timeout = max;
    p.stop_timeout = max;
    p.respawn_delay = max;
    let mut s = Sim::new(p);
    s.now += max;
    let a = s.pool.shutdown(Shutdown::Graceful, s.now);
    s.apply(a);
    assert_eq!(later(s.now, Duration::MAX), later(s.now, max));
}

// ---- canaries, promote, rollback, recycling, heartbeat --------------------

/// Let well-behaved workers act (ack when unacked, exit when told to stop)
/// until `done` holds; panics if nothing is left to do before that.
fn drive(s: &mut Sim, ack_newest_first: bool, done: impl Fn(&Sim) -> bool) {
    for _ in 0..10_000 {
        if done(s) {
            return;
        }
        let mut un = s.unacked();
        if ack_newest_first {
            un.reverse();
        }
        if let Some(pid) = un.first() {
            s.ack(*pid);
        } else if let Some(pid) = s.draining_pids().first() {
            s.exit(*pid);
        } else if !s.run_next_deadline() {
            panic!("stuck: {:?}", s.pool);
        }
    }
    panic!("never done");
}

fn holding(s: &Sim) -> bool {
    s.pool.canary().is_some_and(|c| c.holding_since.is_some())
}

fn settled(s: &Sim) -> bool {
    s.pool.upgrading().is_none() && s.draining_pids().is_empty() && s.unacked().is_empty()
}

/// The canary invariants, checked against the pool after every step of a run:
/// canaries are exactly the workers of the canary version, and at most `n`.
fn check_canary(s: &Sim, n: usize) {
    if let Some(c) = s.pool.canary() {
        let canaries = s
            .pool
            .workers
            .values()
            .filter(|w| !w.is_draining() && w.version == c.version)
            .count();
        assert!(canaries <= n, "{canaries} canaries, want at most {n}");
        assert!(s.pool.is_canary_version(c.version));
        assert!(!s.pool.is_canary_version(c.base));
    }
}

fn canary_sim(count: usize, max_unacked: usize, surge: usize) -> Sim {
    let mut p = spec(count);
    p.max_unacked = max_unacked;
    p.max_surge = Some(surge);
    let mut s = Sim::new(p);
    s.ack_all();
    s.acked_floor = count;
    s
}

fn start_canary(s: &mut Sim, n: usize) -> UpgradeId {
    s.max_new_unacked_seen = 0;
    s.max_live_seen = 0;
    match s.pool.upgrade_with(None, None, Some(n), s.now) {
        Ok((id, a)) => {
            s.apply(a);
            id
        }
        Err(e) => panic!("canary: {e}"),
    }
}

#[derive(Debug, Clone, Copy)]
enum Then {
    Promote,
    Rollback,
    /// A canary crashes while holding: automatic rollback.
    CanaryCrashes,
    /// A canary never acks (ack timeout) before the hold: automatic rollback.
    CanaryNeverAcks,
    /// A base worker dies during the hold: replaced by its own version.
    BaseDies,
    /// A new upgrade supersedes the holding canary.
    Supersede,
}

/// Every shape and every way a canary can end: the acked count never drops
/// below `count`, never more than `count + max_surge` live, canaries always
/// identifiable, and the pool ends on one version with `count` acked.
#[test]
fn canaries_hold_their_bounds_through_every_ending() {
    for count in 2..=5usize {
        for n in 1..count {
            for max_unacked in 1..=2usize {
                for surge in 1..=2usize {
                    for then in [
                        Then::Promote,
                        Then::Rollback,
                        Then::CanaryCrashes,
                        Then::CanaryNeverAcks,
                        Then::BaseDies,
                        Then::Supersede,
                    ] {
                        for order in [false, true] {
                            let ctx = format!(
                                "count {count} canary {n} max_unacked {max_unacked} surge {surge} {then:?} newest-first {order}"
                            );
                            canary_case(count, n, max_unacked, surge, then, order, &ctx);
                        }
                    }
                }
            }
        }
    }
}

fn canary_case(
    count: usize,
    n: usize,
    max_unacked: usize,
    surge: usize,
    then: Then,
    order: bool,
    ctx: &str,
) {
    let mut s = canary_sim(count, max_unacked, surge);
    let base = s.pool.version();
    let old: BTreeSet<Pid> = s.acked_pids().into_iter().collect();
    let id = start_canary(&mut s, n);
    let canary_version = s.pool.version();
    if let Then::CanaryNeverAcks = then {
        // The first canary never acks: its ack timeout kills it and the
        // canary rolls back on its own.
        let pid = s.unacked()[0];
        let at = s.now + 3600 * S;
        s.now = at;
        let a = s.pool.tick(s.now);
        s.apply(a);
        check_canary(&s, n);
        s.exit(pid);
        drive(&mut s, order, settled);
        assert_eq!(s.pool.version(), base, "{ctx}: back on the base version");
        let now_acked: BTreeSet<Pid> = s.acked_pids().into_iter().collect();
        assert_eq!(now_acked, old, "{ctx}: the old workers never stopped");
        assert_eq!(s.pool.acked(), count, "{ctx}");
        return;
    }
    drive(&mut s, order, |s| {
        check_canary(s, n);
        holding(s)
    });
    assert!(s.max_live_seen <= count + surge, "{ctx}: surge bound");
    assert!(
        s.max_new_unacked_seen <= max_unacked,
        "{ctx}: unacked bound"
    );
    // Holding: exactly n canaries and count - n base workers, all acked.
    let canaries = s
        .acked_pids()
        .into_iter()
        .filter(|p| {
            s.pool
                .worker_by_pid(*p)
                .is_some_and(|w| w.version == canary_version)
        })
        .count();
    assert_eq!(canaries, n, "{ctx}: canaries");
    assert_eq!(s.pool.acked(), count, "{ctx}: total");
    // Without a hold, the request that started the canary is answered now.
    assert_eq!(s.final_outcome(id), Some(Ok(())), "{ctx}: canary reply");
    let expect = match then {
        Then::Promote => {
            let a = s.pool.promote(s.now).map(|(_, a)| a).unwrap_or_default();
            s.apply(a);
            canary_version
        }
        Then::Rollback => {
            let a = s
                .pool
                .rollback(None, s.now)
                .map(|(_, a)| a)
                .unwrap_or_default();
            s.apply(a);
            base
        }
        Then::CanaryCrashes => {
            let pid = s
                .acked_pids()
                .into_iter()
                .find(|p| {
                    s.pool
                        .worker_by_pid(*p)
                        .is_some_and(|w| w.version == canary_version)
                })
                .unwrap_or_default();
            // A crash costs the pool one acked worker: that is the crash, not
            // the rollout; the floor holds again once it is replaced.
            s.acked_floor = count - 1;
            s.exit(pid);
            base
        }
        Then::BaseDies => {
            let pid = s
                .acked_pids()
                .into_iter()
                .find(|p| s.pool.worker_by_pid(*p).is_some_and(|w| w.version == base))
                .unwrap_or_default();
            s.acked_floor = count - 1;
            s.exit(pid);
            drive(&mut s, order, |s| {
                check_canary(s, n);
                s.pool.acked() == count && s.draining_pids().is_empty()
            });
            assert!(
                holding(&s),
                "{ctx}: still holding after a base worker's death"
            );
            assert_eq!(
                s.pool
                    .workers
                    .values()
                    .filter(|w| w.version == base)
                    .count(),
                count - n,
                "{ctx}: the base worker was replaced by its own version"
            );
            s.acked_floor = count;
            let a = s.pool.promote(s.now).map(|(_, a)| a).unwrap_or_default();
            s.apply(a);
            canary_version
        }
        Then::CanaryNeverAcks => unreachable!("handled above"),
        Then::Supersede => {
            let (_, a) = s
                .pool
                .upgrade_with(None, None, None, s.now)
                .unwrap_or_else(|e| panic!("{e}"));
            s.apply(a);
            s.pool.version()
        }
    };
    drive(&mut s, order, |s| {
        check_canary(s, n);
        settled(s)
    });
    s.drain_exit();
    assert_eq!(s.pool.acked(), count, "{ctx}: end count");
    assert_eq!(
        s.versions().into_iter().collect::<Vec<_>>(),
        vec![expect],
        "{ctx}: one version"
    );
    assert!(s.pool.canary().is_none(), "{ctx}");
    assert!(s.max_live_seen <= count + surge, "{ctx}: surge bound (end)");
}

#[test]
fn a_canary_with_a_hold_promotes_itself_when_healthy() {
    let mut p = spec(4);
    p.canary_hold = Some(600 * S);
    let mut s = Sim::new(p);
    s.ack_all();
    let id = start_canary(&mut s, 1);
    drive(&mut s, false, holding);
    assert_eq!(s.final_outcome(id), None, "the request waits for the hold");
    let v = s.pool.version();
    s.advance(599 * S);
    assert!(holding(&s));
    s.advance(S);
    assert!(s.pool.canary().is_none(), "promoted after the hold");
    drive(&mut s, false, settled);
    assert_eq!(s.final_outcome(id), Some(Ok(())));
    assert_eq!(s.versions().into_iter().collect::<Vec<_>>(), vec![v]);
    let ev = s.pool.take_events();
    assert!(ev.contains(&PoolEvent::CanaryPromoted { id, auto: true }));
}

#[test]
fn a_canary_that_dies_rolls_back_and_tells_why() {
    let mut s = started(3);
    let base = s.pool.version();
    let id = start_canary(&mut s, 1);
    drive(&mut s, false, holding);
    let canary = s
        .acked_pids()
        .into_iter()
        .find(|p| s.pool.worker_by_pid(*p).is_some_and(|w| w.version != base))
        .unwrap_or_default();
    s.exit(canary);
    drive(&mut s, false, settled);
    assert_eq!(s.pool.version(), base);
    let why = s.pool.last_upgrade().map(|o| o.result.clone());
    assert!(
        matches!(&why, Some(Ok(()))) || matches!(&why, Some(Err(e)) if e.contains("canary")),
        "{why:?}"
    );
    let ev = s.pool.take_events();
    assert!(
        ev.iter().any(|e| matches!(e, PoolEvent::CanaryRolledBack { id: i, why } if *i == id && why.contains("exit status"))),
        "{ev:?}"
    );
}

#[test]
fn promote_and_rollback_need_a_canary_or_a_finished_upgrade() {
    let mut s = started(2);
    assert!(matches!(
        s.pool.promote(s.now),
        Err(PoolError::NoCanary { .. })
    ));
    assert!(matches!(
        s.pool.rollback(None, s.now),
        Err(PoolError::NothingToRollBack { .. })
    ));
    assert!(matches!(
        s.pool.upgrade_with(None, None, Some(2), s.now),
        Err(PoolError::BadCanary { .. })
    ));
    // After a finished upgrade, rollback goes back to the version it replaced,
    // smoothly, and a second rollback returns to the newer one.
    let v1 = s.pool.version();
    let v1_spec = s.pool.spec().clone();
    let id = s.upgrade(UpgradeStrategy::Smooth);
    assert_eq!(run_upgrade(&mut s, id, false), Ok(()));
    s.drain_exit();
    assert_eq!(s.pool.previous().map(|p| p.0), Some(v1));
    s.acked_floor = 2;
    let (rid, a) = s
        .pool
        .rollback(None, s.now)
        .unwrap_or_else(|e| panic!("{e}"));
    s.apply(a);
    assert_eq!(run_upgrade(&mut s, rid, false), Ok(()));
    s.drain_exit();
    assert!(
        Arc::ptr_eq(s.pool.spec(), &v1_spec),
        "runs the previous spec again"
    );
    assert_eq!(s.pool.acked(), 2);
}

/// Recycling by age: each worker is replaced through the smooth engine (its
/// successor acks first), at most max_unacked at a time, spread by the jitter.
#[test]
fn over_age_workers_are_recycled_without_a_dip() {
    let mut p = spec(4);
    p.max_age = Some(3600 * S);
    p.max_age_jitter = 600 * S;
    p.max_unacked = 1;
    let mut s = Sim::new(p);
    s.ack_all();
    s.acked_floor = 4;
    let old: BTreeSet<Pid> = s.acked_pids().into_iter().collect();
    // Nothing before max_age.
    s.advance(3599 * S);
    assert!(s.pool.recycling().next().is_none());
    // Over the next jitter window every worker is recycled once; the acked
    // count never drops below 4 (checked after every step by the Sim).
    let mut guard = 0;
    while s.acked_pids().iter().any(|p| old.contains(p)) {
        guard += 1;
        assert!(guard < 10_000, "recycling never finished");
        let mut un = s.unacked();
        if let Some(pid) = un.pop() {
            assert!(un.is_empty(), "more than max_unacked successors at once");
            s.ack(pid);
        } else if let Some(pid) = s.draining_pids().first() {
            s.exit(*pid);
        } else if !s.run_next_deadline() {
            panic!("stuck: {:?}", s.pool);
        }
        assert!(s.pool.acked() >= 4, "dip while recycling");
    }
    let ev = s.pool.take_events();
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(
                e,
                PoolEvent::Recycling {
                    reason: RecycleReason::Age,
                    ..
                }
            ))
            .count(),
        4
    );
}

#[test]
fn the_jitter_spreads_workers_over_the_window() {
    let max = Duration::from_secs(1000);
    let js: Vec<Duration> = (1..=100).map(|id| jitter(id, max)).collect();
    assert!(js.iter().all(|j| *j < max));
    let low = js.iter().filter(|j| **j < max / 2).count();
    assert!(
        (30..=70).contains(&low),
        "not spread: {low} of 100 in the first half"
    );
    assert_eq!(jitter(5, Duration::ZERO), Duration::ZERO);
}

#[test]
fn an_oversized_worker_is_recycled_and_the_others_are_left_alone() {
    let mut p = spec(3);
    p.max_rss = Some(100 << 20);
    let mut s = Sim::new(p);
    s.ack_all();
    s.acked_floor = 3;
    let pids = s.acked_pids();
    let a = s
        .pool
        .over_rss(pids[0], 50 << 20, s.now)
        .unwrap_or_default();
    assert!(a.is_empty() && s.pool.recycling().next().is_none());
    let a = s
        .pool
        .over_rss(pids[1], 200 << 20, s.now)
        .unwrap_or_default();
    s.apply(a);
    assert_eq!(s.unacked().len(), 1, "successor started first");
    assert!(
        s.draining_pids().is_empty(),
        "not stopped before the successor acks"
    );
    let succ = s.unacked()[0];
    s.ack(succ);
    assert_eq!(s.draining_pids(), vec![pids[1]]);
    s.drain_exit();
    assert_eq!(s.pool.acked(), 3);
    assert!(s.pool.recycling().next().is_none());
}

#[test]
fn a_worker_that_stops_pinging_is_replaced() -> Result<(), PoolError> {
    let mut p = spec(1);
    p.heartbeat_timeout = Some(10 * S);
    let mut s = Sim::new(p);
    s.ack_all();
    let pid = s.acked_pids()[0];
    for _ in 0..5 {
        s.advance(9 * S);
        s.pool.ping(pid, None, s.now)?;
    }
    assert!(s.draining_pids().is_empty(), "pings keep it");
    s.advance(10 * S);
    assert_eq!(s.draining_pids(), vec![pid]);
    assert_eq!(
        s.signals.get(&pid).map(|v| v.as_slice()),
        Some(&[Signal::SIGKILL][..])
    );
    s.exit(pid);
    assert_eq!(s.unacked().len(), 1, "replaced");
    assert_eq!(s.pool.failures(), 0, "not a failure to start");
    Ok(())
}

// ---- snapshots for the master's re-exec -----------------------------------

/// A pool restored from its snapshot (through JSON, as across an exec) is the
/// same pool: fed the same events from then on, it makes the same decisions.
#[test]
fn a_restored_pool_decides_exactly_like_the_original() {
    // Mid-canary with a draining worker, a watchdog-free manual pool with a
    // heartbeat and an age, one worker waiting for its fork.
    let mut p = spec(4);
    p.heartbeat_timeout = Some(30 * S);
    p.max_age = Some(7200 * S);
    p.max_age_jitter = 60 * S;
    let mut s = Sim::new(p);
    s.ack_all();
    let (_, a) = s
        .pool
        .upgrade_with(None, None, Some(2), s.now)
        .unwrap_or_else(|e| panic!("{e}"));
    s.apply(a);
    let first = s.unacked()[0];
    s.ack(first); // one old worker is retired (draining) against it
    assert_eq!(s.draining_pids().len(), 1);
    // A spawn the master has not forked yet.
    let (_, a) = s
        .pool
        .set_count(5, s.now)
        .map(|a| ((), a))
        .unwrap_or_else(|e| panic!("{e}"));
    let spawns: Vec<Action> = a
        .iter()
        .filter(|x| matches!(x, Action::Spawn { .. }))
        .cloned()
        .collect();
    let json = serde_json::to_string(&s.pool.snapshot(s.now)).unwrap_or_default();
    let snap: PoolSnapshot = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}\n{json}"));
    let (restored, pending) = Pool::restore(snap, s.now).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pending.len(), spawns.len(), "unforked spawns come back");
    // The same observable state.
    let view = |p: &Pool| {
        p.workers_sorted()
            .iter()
            .map(|w| (w.id, w.pid, w.index, w.version, format!("{:?}", w.state)))
            .collect::<Vec<_>>()
    };
    assert_eq!(view(&restored), view(&s.pool));
    assert_eq!(restored.next_deadline(), s.pool.next_deadline());
    assert_eq!(restored.canary(), s.pool.canary());
    assert_eq!(restored.count(), 5);
    // Then the same decisions, step by step, to the end of the canary's roll.
    let mut twin = Sim {
        pool: restored,
        now: s.now,
        next_pid: s.next_pid,
        signals: s.signals.clone(),
        group_signals: s.group_signals.clone(),
        exited: s.exited.clone(),
        progress: Vec::new(),
        stopped: false,
        fail_spawns: 0,
        acked_floor: 0,
        max_new_unacked_seen: 0,
        max_live_seen: 0,
    };
    s.apply(spawns);
    twin.apply(pending);
    for step in 0..200 {
        assert_eq!(view(&twin.pool), view(&s.pool), "step {step}");
        assert_eq!(
            twin.pool.next_deadline(),
            s.pool.next_deadline(),
            "step {step}"
        );
        if let Some(pid) = s.unacked().first().copied() {
            s.ack(pid);
            twin.ack(pid);
        } else if let Some(pid) = s.draining_pids().first().copied() {
            s.exit(pid);
            twin.exit(pid);
        } else if holding(&s) {
            let a = s.pool.promote(s.now).map(|(_, a)| a).unwrap_or_default();
            s.apply(a);
            let a = twin
                .pool
                .promote(twin.now)
                .map(|(_, a)| a)
                .unwrap_or_default();
            twin.apply(a);
        } else if !s.run_next_deadline() {
            break;
        } else {
            twin.now = s.now;
            let a = twin.pool.tick(twin.now);
            twin.apply(a);
        }
    }
    assert_eq!(view(&twin.pool), view(&s.pool));
}

/// The kill -9 storm: each empty slot waits on its own timer, which a failure
/// elsewhere never pushes later; a slot that keeps failing while others ack
/// backs off on its own streak; an ack anywhere resets the pool's streak, so
/// a first failure after it waits `respawn_delay` again.
#[test]
fn each_slot_backs_off_on_its_own() {
    let mut s = started(4);
    let acked = s.acked_pids();
    s.exit(acked[0]);
    s.exit(acked[1]);
    let fresh = s.unacked();
    assert_eq!(fresh.len(), 2, "acked deaths are replaced at once");
    // Slot A: two deaths before ack in a row.
    s.exit(fresh[0]);
    let t = s.now;
    while s.unacked().len() < 2 {
        assert!(s.run_next_deadline());
    }
    assert_eq!(s.now - t, S);
    let a2 = *s.unacked().iter().find(|p| **p != fresh[1]).unwrap();
    s.exit(a2);
    let a_until = s.now + backoff(S, 2);
    assert_eq!(s.pool.respawn_at(), Some(a_until), "slot A waits 1.5 s");
    // Slot B's worker acks: the pool's streak is reset, slot A's hold stays.
    s.ack(fresh[1]);
    assert_eq!(s.pool.failures(), 0);
    // Another acked worker dies: replaced at once, and its replacement dies
    // before acking: a first failure since the ack waits 1 s, on its own
    // timer, before slot A's 1.5 s.
    s.now += S / 4;
    let b = s.acked_pids()[0];
    s.exit(b);
    let c = *s.unacked().first().unwrap();
    s.exit(c);
    let c_until = s.now + S;
    assert!(c_until < a_until);
    s.advance(c_until - s.now);
    assert_eq!(
        s.unacked().len(),
        1,
        "the later failure refilled first, at 1 s"
    );
    let c2 = s.unacked()[0];
    s.advance(a_until - s.now);
    assert_eq!(
        s.unacked().len(),
        2,
        "slot A refilled at its 1.5 s, not pushed later"
    );
    assert_eq!(s.pool.respawn_at(), None);
    // Slot A fails again: its own streak (3) wins over the pool's (2).
    let a3 = *s.unacked().iter().find(|p| **p != c2).unwrap();
    s.exit(a3);
    assert_eq!(s.pool.respawn_at(), Some(s.now + backoff(S, 3)));
}

/// A version that cannot start: every slot fails before acking and the
/// pool's streak backs them all off as one, to the cap in a few rounds.
#[test]
fn a_version_that_cannot_start_backs_off_in_every_slot_at_once() {
    let mut s = Sim::new(spec(8));
    for pid in s.unacked() {
        s.exit(pid);
    }
    assert_eq!(s.pool.failures(), 8);
    assert_eq!(s.pool.len(), 0);
    // The last slot to fail waits the pool's 8-failure delay.
    let last = s.pool.held.iter().next_back().unwrap().at;
    assert_eq!(last, s.now + backoff(S, 8));
    for _ in 0..3 {
        while s.unacked().len() < 8 {
            assert!(s.run_next_deadline());
        }
        for pid in s.unacked() {
            s.exit(pid);
        }
    }
    assert!(s
        .pool
        .held
        .iter()
        .all(|h| h.at == s.now + MAX_RESPAWN_DELAY));
}

/// More holds than empty slots never hold a pool below its count: a
/// scale-down drops the longest holds.
#[test]
fn a_scale_down_drops_the_holds_it_no_longer_needs() {
    let mut s = Sim::new(spec(3));
    for pid in s.unacked() {
        s.exit(pid);
    }
    assert_eq!(s.pool.len(), 0);
    assert!(s.pool.respawn_at().is_some());
    let a = s.pool.set_count(1, s.now).unwrap();
    s.apply(a);
    assert_eq!(s.unacked().len(), 1, "an operator command revives at once");
    let pid = s.unacked()[0];
    s.exit(pid);
    s.advance(S);
    assert_eq!(s.unacked().len(), 1);
    assert_eq!(s.pool.respawn_at(), None, "no hold left over");
}

mod props;
