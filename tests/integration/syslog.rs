//! `[log] syslog = true`: warnings and above reach syslog, INFO does not.

use std::time::Duration;

use crate::support::*;

/// `[log] syslog = true` sends WARN and above to the syslog socket, INFO stays
/// on stderr only. A datagram socket plays the syslog daemon.
#[test]
fn syslog_gets_warnings_and_above_only() {
    let dir = TempDir::new("syslog-sock");
    let path = dir.join("syslog.sock");
    let daemon = std::os::unix::net::UnixDatagram::bind(&path).expect("bind fake syslog");
    daemon
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let _m = MasterBuilder::config(&format!(
        r#"
[control]
socket = "{{sock}}"
[log]
syslog = true
syslog_socket = "{}"
[pools.crashy]
command = ["{{worker}}", "--exit-after-ms", "10"]
respawn_delay = "10s"
"#,
        path.display()
    ))
    .start();
    let mut buf = [0u8; 4096];
    let n = daemon.recv(&mut buf).expect("a syslog message");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    // <28> = facility daemon (3) * 8 + severity warning (4).
    assert!(msg.starts_with("<28>"), "{msg}");
    assert!(msg.contains("died unexpectedly"), "{msg}");
    // The INFO lines before it (listening, spawned) never reached syslog: the
    // first datagram was the warning.
    assert!(!msg.contains("spawned worker"), "{msg}");
}
