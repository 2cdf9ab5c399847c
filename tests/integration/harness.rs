//! The harness itself: whatever a test starts is gone when the test ends,
//! however it forked, whoever its parent became, and whether the test passed
//! or panicked.

use std::time::Duration;

use crate::support::*;

const T: Duration = Duration::from_secs(20);

#[test]
fn a_tagged_tree_is_killed_with_its_guard_even_processes_that_escaped() {
    // Two sleeps escape: one reparented to PID 1 in a new session, one simply
    // orphaned; the shell itself becomes a third sleep.
    let sh = Proc::new("sh")
        .arg("-c")
        .arg("(setsid sleep 1000 &); (sleep 1000 &); exec sleep 1000")
        .spawn()
        .expect("spawn sh");
    let pids = wait_for("three sleeps", T, || {
        let p = sh.processes();
        let sleeping = p
            .iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            })
            .count();
        (sleeping == 3 && p.len() == 3).then_some(p)
    });
    drop(sh);
    for pid in &pids {
        assert!(!alive(*pid), "process {pid} outlived its guard");
    }
}

#[test]
fn workers_of_a_sigkilled_master_are_killed_when_the_master_is_dropped() {
    // Without -k, workers outlive a SIGKILLed master (reparented to PID 1):
    // what used to leak on every run.
    let mut m = MasterBuilder::cli(&["-n", "2", "--", "{worker}"]).start();
    let pids = m.wait_acked("main", 2);
    m.kill_hard();
    for pid in &pids {
        assert!(alive(*pid), "worker {pid} did not outlive the master");
    }
    assert_eq!(
        {
            let mut p = m.processes();
            p.sort_unstable();
            p
        },
        pids,
        "the workers carry the master's tag"
    );
    drop(m);
    for pid in &pids {
        assert!(!alive(*pid), "worker {pid} outlived the harness");
    }
}

#[test]
fn a_failing_test_leaves_no_process_behind() {
    let seen = std::sync::Mutex::new(Vec::new());
    let outcome = std::panic::catch_unwind(|| {
        let m = MasterBuilder::cli(&["-n", "2", "--", "{worker}"]).start();
        let mut pids = m.wait_acked("main", 2);
        pids.push(m.pid());
        *seen.lock().expect("lock") = pids;
        panic!("a failing assertion");
    });
    assert!(outcome.is_err());
    let pids = seen.into_inner().expect("lock");
    assert_eq!(pids.len(), 3);
    for pid in &pids {
        assert!(!alive(*pid), "process {pid} outlived a failing test");
    }
}
