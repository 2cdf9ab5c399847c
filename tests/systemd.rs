//! systemd and containers, with real processes: a fake service manager (a
//! test-side NOTIFY_SOCKET), socket activation with fds passed by LISTEN_*, workers
//! speaking systemd's socket and notify protocols, and PID-1 style reaping.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A test-side NOTIFY_SOCKET: collects every datagram the master sends.
struct FakeSystemd {
    sock: UnixDatagram,
    msgs: Vec<String>,
}

impl FakeSystemd {
    fn bind(path: &Path) -> FakeSystemd {
        let sock = UnixDatagram::bind(path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        FakeSystemd {
            sock,
            msgs: Vec::new(),
        }
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            self.msgs
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }

    /// Wait for a datagram containing the line `line` (or starting with it when
    /// it ends with `=`), received after message index `from`; its index.
    fn wait_line(&mut self, from: usize, line: &str, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            let found = self.msgs.iter().enumerate().skip(from).find(|(_, m)| {
                m.lines().any(|l| {
                    if line.ends_with('=') {
                        l.starts_with(line)
                    } else {
                        l == line
                    }
                })
            });
            if let Some((i, _)) = found {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no {line:?} from the master within {timeout:?}; got {:?}",
                self.msgs
            );
        }
    }
}

fn master_cmd(cfg: &Path) -> Command {
    let mut c = Command::new(MASTER);
    c.arg("--config").arg(cfg);
    for v in [
        "NOTIFY_SOCKET",
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
    ] {
        c.env_remove(v);
    }
    c
}

#[test]
fn master_notifies_ready_status_watchdog_reload_and_stopping() {
    let port = free_port();
    let (dir, sock, cfg) = Master::prepare_config(
        "sdnotify",
        &format!(
            r#"
[control]
socket = "{{sock}}"
[pools.web]
command = ["{{worker}}"]
count = 2
max_unacked = 1
ack_timer = "150ms"
binds = ["127.0.0.1:{port},r"]
"#
        ),
    );
    let notify_path = dir.join("notify");
    let mut sd = FakeSystemd::bind(&notify_path);
    let mut cmd = master_cmd(&cfg);
    cmd.env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000");
    let mut m = Master::from_command(dir, sock, cmd);
    let t = Duration::from_secs(20);

    // One worker acked, one to go: the start is progressing, so it asks for time.
    let extend = sd.wait_line(0, "EXTEND_TIMEOUT_USEC=", t);
    let ready = sd.wait_line(0, "READY=1", t);
    assert!(extend < ready, "{:?}", sd.msgs);
    assert!(
        sd.msgs[ready].contains("STATUS=web 2/2 acked"),
        "{:?}",
        sd.msgs
    );
    m.wait_acked("web", 2);
    // READY=1 only once at start.
    let w1 = sd.wait_line(ready + 1, "WATCHDOG=1", t);
    sd.wait_line(w1 + 1, "WATCHDOG=1", t);
    assert_eq!(
        sd.msgs
            .iter()
            .filter(|m| m.lines().any(|l| l == "READY=1"))
            .count(),
        1,
        "{:?}",
        sd.msgs
    );

    // Workers never see the master's service-manager variables.
    let addr = format!("127.0.0.1:{port}");
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC"] {
        let (code, body) = http_get_status(&addr, &format!("/env/{var}")).expect("worker answers");
        assert_eq!(code, 404, "{var} leaked into a worker: {body}");
    }

    // A reload: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
    let before = sd.msgs.len();
    m.signal(libc::SIGHUP);
    let reloading = sd.wait_line(before, "RELOADING=1", t);
    assert!(
        sd.msgs[reloading].contains("MONOTONIC_USEC="),
        "{:?}",
        sd.msgs[reloading]
    );
    sd.wait_line(reloading + 1, "READY=1", t);
    // STATUS follows the upgrade and comes back to the steady line.
    let status = sd.wait_line(reloading + 1, "STATUS=web 2/2 acked", t);

    m.signal(libc::SIGINT);
    sd.wait_line(status, "STOPPING=1", t);
    assert!(m.wait_exit(t).success());
}
