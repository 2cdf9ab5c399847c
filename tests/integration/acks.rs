//! Readiness (BRIEF §2, §3): timer acks, manual acks in JSON and in einhorn's
//! YAML, `worker:ack` and `worker:ping` sent on a worker's behalf, and a worker
//! that never acks.

use std::io::Write;
use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[test]
fn classic_m_is_manual_ack_and_a_worker_acks_in_json() {
    let m = MasterBuilder::cli(&["-m", "-n", "2", "{worker}"]).start();
    m.wait_acked("main", 2);
    let (status, err) = m.cmd("status", &[], None);
    assert!(!err && status.contains("manual ack"), "{status}");
    // Manual mode: each worker is acked because the master took its ack.
    let st = m.state();
    let ws = workers(&st, "main");
    assert_eq!(ws.len(), 2, "{st}");
    for w in &ws {
        assert!(
            w["state"] == "acked" && w["acked"] == true && w["acked_secs_ago"].is_f64(),
            "no ack recorded for worker {w}"
        );
    }
}

#[test]
fn timer_ack_comes_after_ack_timer_even_if_the_worker_acks_itself() {
    // Pool `quiet` never sends worker:ack; pool `eager` does at once, which in
    // timer mode is ignored (as einhorn): only surviving ack_timer counts.
    let m = MasterBuilder::config(
        r#"
[control]
socket = "{sock}"
[pools.quiet]
command = ["{worker}", "--no-ack"]
ack_timer = "600ms"
[pools.eager]
command = ["{worker}"]
ack_timer = "600ms"
"#,
    )
    .start();
    for pool in ["quiet", "eager"] {
        m.wait_acked(pool, 1);
        let w = m.state()["pools"][pool]["workers"][0].clone();
        let spawned = w["spawned_secs_ago"].as_f64().expect("spawned_secs_ago");
        let acked = w["acked_secs_ago"].as_f64().expect("acked_secs_ago");
        assert!(
            spawned - acked >= 0.599,
            "pool {pool}: acked {:.3}s after spawn",
            spawned - acked
        );
    }
}

#[test]
fn manual_ack_in_json_and_in_einhorn_yaml() {
    let m = MasterBuilder::config(
        r#"
[control]
socket = "{sock}"
[pools.json]
command = ["{worker}"]
ack = "manual"
[pools.yaml]
command = ["{worker}", "--ack-yaml"]
ack = "manual"
"#,
    )
    .start();
    let j = m.wait_acked("json", 1);
    let y = m.wait_acked("yaml", 1);
    let log = m.log_text();
    assert!(log.contains(&format!("http_worker pid={} fds=[] ack=path:", j[0])));
    assert!(log.contains(&format!("pid={} fds=[] ack=path:", y[0])) && log.contains("(yaml)"));
    assert!(!log.contains("unparsable"), "{log}");
}

#[test]
fn manual_mode_worker_that_never_acks_is_killed_and_replaced() {
    let m = MasterBuilder::config(
        r#"
[control]
socket = "{sock}"
[pools.slow]
command = ["{worker}", "--no-ack"]
ack = "manual"
ack_timeout = "300ms"
respawn_delay = "50ms"
"#,
    )
    .start();
    let first = wait_for("a first worker", Duration::from_secs(10), || {
        m.pids("slow", "unacked").first().copied()
    });
    let second = wait_for("a replacement worker", Duration::from_secs(20), || {
        m.pids("slow", "unacked").into_iter().find(|p| *p != first)
    });
    assert!(!alive(first));
    // Why it went, which only the log says: the operator's warning, and the
    // kill (both written before the replacement was spawned).
    let log = m.log_text();
    assert!(
        log.contains(&format!(
            "worker pid {first} did not ack within 300ms: killing it"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("worker pid {first} exited (killed by SIGKILL)")),
        "{log}"
    );
    assert!(alive(second));
    let st = m.state();
    assert!(st["pools"]["slow"]["consecutive_failures"].as_u64() >= Some(1));
    assert_eq!(st["pools"]["slow"]["acked"], 0);
}

/// The acker worker (tests/workers/acker.sh): sends what the test puts in
/// `{dir}/msg-PID` from a child process when it gets SIGUSR1.
fn acker() -> String {
    format!("{}/tests/workers/acker.sh", env!("CARGO_MANIFEST_DIR"))
}

/// Have worker `pid` (an acker) send `msg` through its child; returns the size
/// of the reply its child got before the master hung up.
fn send_as(m: &Master, pid: i32, msg: &str) -> usize {
    let sent = m.dir.join(format!("sent-{pid}"));
    let ready = m.dir.join(format!("ready-{pid}"));
    wait_for(
        format!("worker {pid} to be ready for SIGUSR1"),
        Duration::from_secs(10),
        || ready.exists().then_some(()),
    );
    let _ = std::fs::remove_file(&sent);
    std::fs::write(m.dir.join(format!("msg-{pid}")), msg).expect("write message");
    // SAFETY: kill(2) on a pid the test just read from state.
    unsafe {
        libc::kill(pid, libc::SIGUSR1);
    }
    let got = wait_for(
        format!("worker {pid} to send its message"),
        Duration::from_secs(10),
        || std::fs::read_to_string(&sent).ok(),
    );
    got.trim().parse().expect("reply size")
}

fn acker_master(extra: &str) -> Master {
    MasterBuilder::config(&format!(
        r#"
[control]
socket = "{{sock}}"
[pools.web]
command = ["sh", "{acker}"]
env = {{ ACKER_DIR = "{{dir}}" }}
count = 2
ack = "manual"
ack_timeout = "60s"
{extra}
"#,
        acker = acker()
    ))
    .start()
}

#[test]
fn worker_ack_and_ping_in_both_encodings() {
    if !have("python3") {
        eprintln!("SKIPPED: python3 not found (the acking child of the test worker)");
        return;
    }
    let m = acker_master("");
    let pids = wait_for("2 unacked workers", Duration::from_secs(20), || {
        let p = m.pids("web", "unacked");
        (p.len() == 2).then_some(p)
    });
    let (a, b) = (pids[0], pids[1]);

    // A JSON ack, sent as a shell worker sends it (from a child): no reply,
    // the master hangs up.
    let reply = send_as(
        &m,
        a,
        &format!("{{\"command\":\"worker:ack\",\"pid\":{a}}}\n"),
    );
    assert_eq!(reply, 0, "worker:ack got a reply");
    wait_for("pid a acked", Duration::from_secs(10), || {
        m.pids("web", "acked").contains(&a).then_some(())
    });
    assert_eq!(m.pids("web", "unacked"), vec![b]);

    // einhorn's own ack (Einhorn::Worker.ack!), byte for byte.
    let reply = send_as(&m, b, &format!("---%0Acommand: worker:ack%0Apid: {b}%0A\n"));
    assert_eq!(reply, 0, "worker:ack got a reply");
    assert_eq!(m.wait_acked("web", 2), vec![a, b]);

    // worker:ping, YAML with a string request_id and JSON with a number.
    let reply = send_as(
        &m,
        a,
        &format!("---%0Acommand: worker:ping%0Apid: {a}%0Arequest_id: req-17%0A\n"),
    );
    assert_eq!(reply, 0, "worker:ping got a reply");
    let reply = send_as(
        &m,
        b,
        &format!("{{\"command\":\"worker:ping\",\"pid\":{b},\"request_id\":\"job-9\"}}\n"),
    );
    assert_eq!(reply, 0, "worker:ping got a reply");
    let st = m.state();
    let ws = st["pools"]["web"]["workers"].as_array().expect("workers");
    let ping = |pid: i32| {
        ws.iter()
            .find(|w| w["pid"] == pid)
            .map(|w| w["last_ping"]["request_id"].clone())
    };
    assert_eq!(ping(a), Some(json!("req-17")), "{st}");
    assert_eq!(ping(b), Some(json!("job-9")), "{st}");
    let status = m.cmd("status", &[], None).0;
    assert!(
        status.contains("req-17"),
        "status should show the ping: {status}"
    );
}

/// worker:ack and worker:ping are taken only from the worker itself or one of
/// its descendants: not from another pool's worker, not from a client that is
/// neither. Refused ones are counted in `state`.
#[test]
fn a_worker_cannot_ack_or_ping_for_another_and_strangers_cannot_either() {
    if !have("python3") {
        eprintln!("SKIPPED: python3 not found (the acking child of the test worker)");
        return;
    }
    let m = acker_master(&format!(
        r#"[pools.other]
command = ["sh", "{acker}"]
env = {{ ACKER_DIR = "{{dir}}" }}
count = 1
ack = "manual"
ack_timeout = "60s"
"#,
        acker = acker()
    ));
    let web = wait_for("2 unacked web workers", Duration::from_secs(20), || {
        let p = m.pids("web", "unacked");
        (p.len() == 2).then_some(p)
    });
    let other = wait_for("1 unacked other worker", Duration::from_secs(20), || {
        let p = m.pids("other", "unacked");
        (p.len() == 1).then_some(p[0])
    });
    // The worker of pool `other` acks and pings for a worker of pool `web`.
    send_as(
        &m,
        other,
        &format!("{{\"command\":\"worker:ack\",\"pid\":{}}}\n", web[0]),
    );
    send_as(
        &m,
        other,
        &format!(
            "{{\"command\":\"worker:ping\",\"pid\":{},\"request_id\":\"x\"}}\n",
            web[1]
        ),
    );
    // The test process (no worker at all) acks for the other one.
    let mut s = connect(&m);
    s.write_all(format!("{{\"command\":\"worker:ack\",\"pid\":{}}}\n", web[1]).as_bytes())
        .expect("send ack");
    assert_eq!(
        lossy(&read_to_eof(&mut s)),
        "",
        "a refused ack gets no reply either"
    );
    let st = m.wait_state("3 refused messages", Duration::from_secs(10), |st| {
        (st["master"]["rejected_worker_messages"]["count"] == 3).then(|| st.clone())
    });
    assert_eq!(m.pids("web", "unacked").len(), 2, "nothing was acked: {st}");
    let recent = st["master"]["rejected_worker_messages"]["recent"]
        .as_array()
        .expect("recent")
        .clone();
    assert!(
        recent.iter().any(|r| r["why"]
            .as_str()
            .unwrap_or("")
            .contains("nor one of its descendants")),
        "{recent:?}"
    );
    assert!(
        workers(&st, "web").iter().all(|w| w["last_ping"].is_null()),
        "the ping for another worker was recorded: {st}"
    );
    // The worker itself still may.
    send_as(
        &m,
        web[0],
        &format!("{{\"command\":\"worker:ack\",\"pid\":{}}}\n", web[0]),
    );
    wait_for("web[0] acked", Duration::from_secs(10), || {
        m.pids("web", "acked").contains(&web[0]).then_some(())
    });
}
