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

#[test]
fn worker_ack_and_ping_in_both_encodings() {
    let m = MasterBuilder::config(
        r#"
[control]
socket = "{sock}"
[pools.web]
command = ["{worker}", "--no-ack"]
count = 2
ack = "manual"
ack_timeout = "60s"
"#,
    )
    .start();
    let log = m.log.clone();
    let pids = wait_for(
        format!("2 unacked workers (log {})", log.display()),
        Duration::from_secs(20),
        || {
            let p = m.pids("web", "unacked");
            (p.len() == 2).then_some(p)
        },
    );
    let (a, b) = (pids[0], pids[1]);

    // JSON ack on a worker's behalf: no reply, the master hangs up.
    let mut s = connect(&m);
    s.write_all(format!("{{\"command\":\"worker:ack\",\"pid\":{a}}}\n").as_bytes())
        .expect("send ack");
    assert_eq!(lossy(&read_to_eof(&mut s)), "", "worker:ack got a reply");
    wait_for("pid a acked", Duration::from_secs(10), || {
        m.pids("web", "acked").contains(&a).then_some(())
    });
    assert_eq!(m.pids("web", "unacked"), vec![b]);

    // einhorn's own ack (Einhorn::Worker.ack!), byte for byte.
    let mut s = connect(&m);
    s.write_all(format!("---%0Acommand: worker:ack%0Apid: {b}%0A\n").as_bytes())
        .expect("send ack");
    assert_eq!(lossy(&read_to_eof(&mut s)), "", "worker:ack got a reply");
    assert_eq!(m.wait_acked("web", 2), vec![a, b]);

    // worker:ping, YAML with a string request_id and JSON with a number.
    let mut s = connect(&m);
    s.write_all(
        format!("---%0Acommand: worker:ping%0Apid: {a}%0Arequest_id: req-17%0A\n").as_bytes(),
    )
    .expect("send ping");
    assert_eq!(lossy(&read_to_eof(&mut s)), "", "worker:ping got a reply");
    let mut s = connect(&m);
    s.write_all(
        format!("{{\"command\":\"worker:ping\",\"pid\":{b},\"request_id\":\"job-9\"}}\n")
            .as_bytes(),
    )
    .expect("send ping");
    assert_eq!(lossy(&read_to_eof(&mut s)), "", "worker:ping got a reply");
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
