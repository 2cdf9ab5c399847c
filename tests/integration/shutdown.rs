//! Shutdown (BRIEF §4): INT, USR2, TERM, `die`, QUIT; the stop_timeout SIGKILL
//! for a worker that ignores its stop signal; `-k` workers when the master is
//! killed.

use std::time::Duration;

use crate::support::*;

/// Start two workers, shut down with `how`, check every worker was stopped with
/// `signal`, reaped by the master, and is gone. The master has exited: only
/// its log tells which signal each worker got.
fn shutdown_leaves_nothing(signal: &str, how: impl FnOnce(&Master)) {
    let mut m = MasterBuilder::cli(&[
        "-n",
        "2",
        "-m",
        "0.1",
        "-b",
        "127.0.0.1:0,r",
        "--",
        "{worker}",
    ])
    .start();
    let pids = m.wait_acked("main", 2);
    how(&m);
    let st = m.wait_exit(Duration::from_secs(20));
    assert!(st.success(), "{st}");
    let log = m.log_text();
    for pid in &pids {
        assert!(
            log.contains(&format!(
                "stopping worker pid {pid} with {signal} (shutdown)"
            )),
            "{log}"
        );
        assert!(log.contains(&format!("worker pid {pid} exited")), "{log}");
        assert!(!alive(*pid), "worker {pid} outlived the master");
    }
}

#[test]
fn sigint_drains_every_worker_with_usr2() {
    shutdown_leaves_nothing("SIGUSR2", |m| m.signal(libc::SIGINT));
}

#[test]
fn sigusr2_drains_every_worker_with_usr2() {
    shutdown_leaves_nothing("SIGUSR2", |m| m.signal(libc::SIGUSR2));
}

#[test]
fn sigterm_terms_every_worker() {
    shutdown_leaves_nothing("SIGTERM", |m| m.signal(libc::SIGTERM));
}

#[test]
fn die_over_the_control_socket_drains() {
    shutdown_leaves_nothing("SIGUSR2", |m| {
        let (msg, err) = m.cmd("die", &[], None);
        assert!(!err && msg.contains("Shutting down"), "{msg}");
    });
}

#[test]
fn a_worker_ignoring_its_stop_signal_is_killed_after_stop_timeout() {
    let mut m =
        MasterBuilder::cli(&["-t", "0.3", "-m", "0.1", "--", "{worker}", "--ignore-stop"]).start();
    let pids = m.wait_acked("main", 1);
    let t0 = std::time::Instant::now();
    m.signal(libc::SIGINT);
    assert!(m.wait_exit(Duration::from_secs(20)).success());
    assert!(t0.elapsed() >= Duration::from_millis(300));
    let log = m.log_text();
    assert!(
        log.contains(&format!(
            "worker pid {} still alive 300ms after its stop signal: sending SIGKILL",
            pids[0]
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "worker pid {} exited (killed by SIGKILL)",
            pids[0]
        )),
        "{log}"
    );
    assert!(!alive(pids[0]));
}

#[test]
fn sigquit_quits_every_worker_and_exits_at_once() {
    // The worker ignores QUIT (an ignored signal stays ignored across exec), so the
    // master exiting while it still runs shows the master does not wait.
    let mut m = MasterBuilder::cli(&[
        "-m",
        "0.1",
        "--",
        "/bin/sh",
        "-c",
        "trap '' QUIT; exec sleep 60",
    ])
    .start();
    let pids = m.wait_acked("main", 1);
    // The trap is set once the shell has exec'd sleep.
    wait_for("the worker to exec sleep", Duration::from_secs(10), || {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", pids[0])).ok()?;
        (comm.trim() == "sleep").then_some(())
    });
    m.signal(libc::SIGQUIT);
    assert!(m.wait_exit(Duration::from_secs(5)).success());
    assert!(m
        .log_text()
        .contains(&format!("stopping worker pid {} with SIGQUIT", pids[0])));
    assert!(alive(pids[0]), "the master waited for its worker");
    // And a worker that honours QUIT is gone.
    let mut m = MasterBuilder::cli(&["-m", "0.1", "--", "{worker}"]).start();
    let pids = m.wait_acked("main", 1);
    m.signal(libc::SIGQUIT);
    assert!(m.wait_exit(Duration::from_secs(5)).success());
    wait_all_dead(&pids, Duration::from_secs(5));
}

#[test]
fn with_k_workers_stop_when_the_master_is_killed() {
    let mut m = MasterBuilder::cli(&["-k", "-n", "2", "-m", "0.1", "--", "{worker}"]).start();
    let pids = m.wait_acked("main", 2);
    m.kill_hard();
    wait_all_dead(&pids, Duration::from_secs(10));
    // They drained on their stop signal, not killed outright.
    for pid in &pids {
        m.wait_log(
            &format!("http_worker pid={pid} drained, exiting 0"),
            Duration::from_secs(5),
        );
    }
}
