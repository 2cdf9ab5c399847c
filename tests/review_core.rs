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
