//! Regression tests for defects found in a review of the runtime core (master
//! loop, pools, control commands). Each test names the defect it pins down.
//!
//! Nothing sleeps to synchronise: every wait polls a condition with a deadline.

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
/// answered "Upgrade done".
#[test]
fn a_pool_readded_while_it_still_drains_is_refused_not_lost() {
    let mut m = Master::with_config("readd", TWO_POOLS);
    m.wait_acked("web", 1);
    let old = m.wait_acked("api", 1);
    m.write_config(WEB_ONLY);
    let (msg, err) = m.cmd("reload", &[], None);
    assert!(!err, "{msg}");
    let (msg, err) = m.cmd("upgrade", &[], Some("api"));
    assert!(err, "upgrade of a removed, draining pool succeeded: {msg}");
    assert!(msg.contains("api"), "{msg}");

    m.write_config(TWO_POOLS);
    let (msg, err) = m.cmd("reload", &[], None);
    assert!(err, "re-adding a draining pool was accepted: {msg}");
    assert!(msg.contains("api") && msg.contains("drain"), "{msg}");

    // Once the old worker is gone (SIGKILL after stop_timeout), the same reload works.
    wait_for(
        "the removed pool to be gone",
        std::time::Duration::from_secs(30),
        || m.state()["pools"]["api"].is_null().then_some(()),
    );
    assert!(!alive(old[0]));
    let (msg, err) = m.cmd("reload", &[], None);
    assert!(!err, "{msg}");
    m.wait_acked("api", 1);
}
