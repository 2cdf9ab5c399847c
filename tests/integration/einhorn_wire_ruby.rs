//! einhorn's own wire format, spoken by real Ruby (Psych) against a real master:
//! ehlo, status (a multi-line reply), a streamed upgrade, an error, worker:ack.
//! Skipped with a note when `ruby` is not installed (.ci/run installs it).

use crate::support::*;

fn ruby(sock: &std::path::Path, args: &[&str]) -> Option<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ruby/einhorn_client.rb");
    let out = Proc::new("ruby")
        .arg(script)
        .arg(sock)
        .args(args)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "ruby client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn einhorns_ruby_transport_talks_to_the_master() {
    if Proc::new("ruby").arg("-v").output().is_err() {
        eprintln!("note: ruby not installed; skipping the Ruby interop test");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ruby/einhorn_client.rb");
    let m = MasterBuilder::config(
        &r#"
[control]
socket = "{sock}"
[pools.web]
command = ["ruby", "RUBY_CLIENT", "{sock}", "worker"]
env = { READY_DIR = "{dir}" }
count = 2
ack = "manual"
ack_timeout = "30s"
binds = ["127.0.0.1:0"]
[pools.api]
command = ["{worker}", "--no-ack"]
count = 2
ack_timer = "50ms"
"#
        .replace("RUBY_CLIENT", script),
    )
    .start();
    let ehlo = ruby(&m.sock, &["ehlo"]).unwrap_or_default();
    assert!(ehlo.starts_with("final: Hello"), "{ehlo}");

    // The workers (Ruby) ack when told, the way Einhorn::Worker.ack! does.
    let unacked = wait_for(
        "two unacked workers",
        std::time::Duration::from_secs(10),
        || {
            let p = m.pids("web", "unacked");
            (p.len() == 2).then_some(p)
        },
    );
    // An ack framed the same way from a process that is not the worker (this
    // test) is refused: the master hangs up and acks nothing.
    let out = ruby(&m.sock, &["worker:ack", &unacked[0].to_string()]).unwrap_or_default();
    assert_eq!(out.trim(), "closed");
    m.wait_state(
        "the stray ack refused",
        std::time::Duration::from_secs(10),
        |st| (st["master"]["rejected_worker_messages"]["count"] == 1).then_some(()),
    );
    assert_eq!(m.pids("web", "unacked").len(), 2);
    for pid in &unacked {
        let ready = m.dir.join(format!("ready-{pid}"));
        wait_for(
            "the ruby worker's trap",
            std::time::Duration::from_secs(10),
            || ready.exists().then_some(()),
        );
        // SAFETY: kill(2) on a worker pid the test just read from state.
        unsafe {
            libc::kill(*pid, libc::SIGUSR1);
        }
    }
    assert_eq!(m.wait_acked("web", 2), unacked);

    // A multi-line reply (block scalar) read back by Psych.
    let status = ruby(&m.sock, &["status"]).unwrap_or_default();
    assert!(status.starts_with("final: einhyrningsins"), "{status}");
    for pid in &unacked {
        assert!(status.contains(&pid.to_string()), "{status}");
    }

    // An error reply, and arguments as a YAML sequence.
    let bad = ruby(&m.sock, &["set_workers", "many"]).unwrap_or_default();
    assert!(bad.starts_with("final error: set_workers"), "{bad}");
    let ok = ruby(&m.sock, &["set_workers", "1", "web"]).unwrap_or_default();
    assert!(ok.contains("count is now 1"), "{ok}");

    // A streamed upgrade: "wait: true" replies, then the final one.
    m.wait_acked("api", 2);
    let up = ruby(&m.sock, &["upgrade", "api"]).unwrap_or_default();
    let lines: Vec<&str> = up.lines().collect();
    assert!(lines.len() >= 4, "{up}");
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|l| l.starts_with("wait: ")),
        "{up}"
    );
    assert!(up.contains("new workers acked"), "{up}");
    assert_eq!(lines.last().copied(), Some("final: Upgrade done"), "{up}");
}
