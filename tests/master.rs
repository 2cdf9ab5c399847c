//! The master with real workers: pools, child API, acks, respawn, shutdown.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn two_pools_from_one_toml_serve_on_their_ports() {
    let (p1, p2) = (free_port(), free_port());
    let mut m = Master::with_config(
        "twopools",
        &format!(
            r#"
[control]
socket = "{{sock}}"
[pools.web]
command = ["{{worker}}"]
count = 2
binds = ["127.0.0.1:{p1},r"]
ack = "manual"
[pools.api]
command = ["{{worker}}"]
count = 1
binds = ["127.0.0.1:{p2},r"]
ack_timer = "100ms"
"#
        ),
    );
    let web = m.wait_acked("web", 2);
    let api = m.wait_acked("api", 1);
    let body = http_get(&format!("127.0.0.1:{p2}"), "/").expect("api answers");
    assert!(body.contains(&format!("pid={}", api[0])), "{body}");
    // Both web workers answer on the one shared port.
    let mut seen = std::collections::BTreeSet::new();
    wait_for(
        "both web workers to answer",
        Duration::from_secs(20),
        || {
            let body = http_get(&format!("127.0.0.1:{p1}"), "/").ok()?;
            let pid: i32 = body
                .split_whitespace()
                .next()?
                .strip_prefix("pid=")?
                .parse()
                .ok()?;
            seen.insert(pid);
            (seen.len() == 2).then_some(())
        },
    );
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), web);
    m.signal(libc::SIGINT);
    assert!(m.wait_exit(Duration::from_secs(20)).success());
    for pid in web.iter().chain(&api) {
        assert!(!alive(*pid), "worker {pid} outlived the master");
    }
}
