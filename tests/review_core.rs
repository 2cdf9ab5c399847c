//! Regression tests for defects found in a review of the runtime core (master
//! loop, pools, control commands). Each test names the defect it pins down.
//!
//! Nothing sleeps to synchronise: every wait polls a condition with a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use serde_json::{json, Value};

use common::*;

fn messages(replies: &[Value]) -> Vec<String> {
    replies
        .iter()
        .map(|r| r["message"].as_str().unwrap_or("").to_string())
        .collect()
}

/// `upgrade` of every pool used to answer "Upgrade done" as soon as the first pool
/// (by name) finished, which a pool with no workers does at once: the client was
/// told the upgrade was over while the other pools had not even started theirs.
#[test]
fn upgrading_every_pool_waits_for_all_even_when_one_has_no_workers() {
    let mut m = Master::with_config(
        "upall0",
        r#"
[control]
socket = "{sock}"
[pools.a]
command = ["{worker}"]
count = 0
binds = ["127.0.0.1:0"]
ack = "manual"
[pools.b]
command = ["{worker}"]
count = 1
binds = ["127.0.0.1:0"]
ack = "manual"
"#,
    );
    m.wait_acked("b", 1);
    let msgs = messages(&m.request(json!({"command": "upgrade", "id": 1})));
    assert_eq!(
        msgs.last().map(String::as_str),
        Some("Upgrade done"),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|s| s.contains("pool b: upgrade done")),
        "the final reply came before pool b's upgrade finished: {msgs:?}"
    );
}

const TWO_POOLS: &str = r#"
[control]
socket = "{sock}"
[pools.web]
command = ["{worker}"]
count = 1
binds = ["127.0.0.1:0"]
ack = "manual"
[pools.api]
command = ["{worker}", "--ignore-stop"]
count = 1
binds = ["127.0.0.1:0"]
ack = "manual"
stop_timeout = "5s"
"#;

const WEB_ONLY: &str = r#"
[control]
socket = "{sock}"
[pools.web]
command = ["{worker}"]
count = 1
binds = ["127.0.0.1:0"]
ack = "manual"
"#;

/// A pool removed by a reload drains under its name; putting it back before it
/// had stopped used to be reported as "added" while the draining pool swallowed
/// the new config (it refused to start workers and was then dropped): the
/// configured pool silently never ran. And `upgrade` of the draining pool
/// answered "Upgrade done". Now the draining pool moves aside (`api~old`) and
/// the re-added one starts at once.
#[test]
fn a_pool_readded_while_it_still_drains_starts_at_once() {
    let mut m = Master::with_config("readd", TWO_POOLS);
    m.wait_acked("web", 1);
    let old = m.wait_acked("api", 1);
    m.write_config(WEB_ONLY);
    let (msg, err) = m.cmd("reload", &[], None);
    assert!(!err, "{msg}");
    let (msg, err) = m.cmd("upgrade", &[], Some("api"));
    assert!(err, "upgrade of a removed, draining pool succeeded: {msg}");
    assert!(msg.contains("api"), "{msg}");

    // The old api worker ignores its stop signal: it is still draining.
    m.write_config(TWO_POOLS);
    let (msg, err) = m.cmd("reload", &[], None);
    assert!(!err, "re-adding a draining pool was refused: {msg}");
    let new = m.wait_acked("api", 1);
    assert_ne!(new, old);
    let st = m.state();
    let aside = &st["pools"]["api~old"];
    assert_eq!(
        aside["workers"][0]["pid"].as_i64(),
        Some(i64::from(old[0])),
        "{st}"
    );
    assert_eq!(aside["workers"][0]["state"], "draining", "{st}");
    // It finishes draining (SIGKILL after stop_timeout) and disappears.
    wait_for(
        "the moved-aside pool to be gone",
        std::time::Duration::from_secs(30),
        || m.state()["pools"]["api~old"].is_null().then_some(()),
    );
    assert!(!alive(old[0]));
    assert_eq!(m.wait_acked("api", 1), new);
}

/// A Type=notify worker in Python: READY=1 at once, then WATCHDOG=1 every 50 ms.
const NOTIFY_WORKER: &str = r#"
import os, socket, time
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", addr)
while True:
    s.sendto(b"WATCHDOG=1", addr)
    time.sleep(0.05)
"#;

fn notify_then(ack: &str) -> String {
    format!(
        r#"
[control]
socket = "{{sock}}"
[pools.n]
command = ["python3", "{{dir}}/{}"]
count = 1
ack = "{ack}"
ack_timeout = "60s"
{}
"#,
        if ack == "notify" { "nw.py" } else { "slow.sh" },
        if ack == "notify" {
            "watchdog = \"300ms\""
        } else {
            ""
        }
    )
}

/// The notify socket used to accept messages only when the pool's *current*
/// spec said `ack = "notify"`. During a roll from notify to manual ack, the old
/// workers' WATCHDOG=1 pings were dropped and the old workers, still serving,
/// were SIGKILLed by their watchdog before their replacements were ready.
#[test]
fn old_notify_workers_keep_their_watchdog_during_a_roll_to_manual_ack() {
    let mut m = Master::with_config_files(
        "nroll",
        &notify_then("notify"),
        &[
            ("nw.py", NOTIFY_WORKER),
            // The new version never acks: the roll stays in progress.
            ("slow.sh", "import time\ntime.sleep(60)\n"),
        ],
    );
    let old = m.wait_acked("n", 1);
    m.write_config(&notify_then("manual"));
    let (msg, err) = m.cmd("reload", &[], None);
    assert!(!err, "{msg}");
    wait_for(
        "the new version's worker",
        std::time::Duration::from_secs(20),
        || (m.pids("n", "unacked").len() == 1).then_some(()),
    );
    // Several watchdog periods: the old worker must stay acked and alive.
    let until = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    while std::time::Instant::now() < until {
        assert_eq!(m.pids("n", "acked"), old, "log:\n{}", m.log_text());
    }
    assert!(
        !m.log_text().contains("sent no WATCHDOG=1"),
        "{}",
        m.log_text()
    );
}
