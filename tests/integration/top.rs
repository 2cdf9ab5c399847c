//! `einhyrningsinsctl top` in a real pseudo-terminal (python3's pty module):
//! it shows the pools and their workers, quits on `q`, and leaves the
//! terminal as it found it — also when it is killed with SIGTERM.

use serde_json::Value;

use crate::support::*;

/// Runs `ctl -d SOCK top 200ms` on a pty; waits for every pool name on the
/// screen, then quits it by `q` or SIGTERM (argv[3]); prints a JSON report.
const DRIVER: &str = r#"
import fcntl, json, os, pty, select, signal, struct, subprocess, sys, termios, time
ctl, sock, how, pools = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
master, slave = pty.openpty()
fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 132, 0, 0))
before = termios.tcgetattr(slave)
p = subprocess.Popen([ctl, "-d", sock, "top", "200ms"], stdin=slave, stdout=slave,
                     stderr=slave, start_new_session=True)
buf = b""
def pump(until, secs):
    global buf
    end = time.time() + secs
    while time.time() < end:
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            try:
                buf += os.read(master, 65536)
            except OSError:
                return False
        if until(buf):
            return True
    return False
shown = pump(lambda b: all(("POOL " + n + ":").encode() in b for n in pools) and b"MiB" in b, 20)
raw_during = termios.tcgetattr(slave)
if how == "q":
    os.write(master, b"q")
else:
    p.send_signal(signal.SIGTERM)
try:
    code = p.wait(timeout=10)
except subprocess.TimeoutExpired:
    p.kill()
    code = "hung"
pump(lambda b: b"\x1b[?1049l" in b, 2)
after = termios.tcgetattr(slave)
print(json.dumps({
    "shown": shown, "exit": code,
    "entered_alt": "\x1b[?1049h" in buf.decode("latin-1"),
    "left_alt": buf.decode("latin-1").rstrip().endswith("\x1b[?1049l") or "\x1b[?1049l" in buf.decode("latin-1")[-64:],
    "raw_while_running": raw_during != before,
    "restored": after == before,
    "screen": buf.decode("utf-8", "replace")[-4000:],
}))
"#;

fn drive(m: &Master, how: &str, pools: &str) -> Option<Value> {
    if !have("python3") {
        eprintln!("SKIPPED: top::{how}: python3 (for its pty module) is not installed");
        return None;
    }
    let out = Proc::new("python3")
        .args(["-c", DRIVER, CTL, &m.sock.to_string_lossy(), how, pools])
        .output()
        .expect("run the pty driver");
    assert!(
        out.status.success(),
        "driver failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("driver report"))
}

const TWO_POOLS: &str = r#"
[control]
socket = "{sock}"
[pools.web]
command = ["{worker}"]
count = 2
ack_timer = "100ms"
[pools.api]
command = ["{worker}"]
count = 1
ack_timer = "100ms"
"#;

#[test]
fn top_shows_the_pools_in_a_terminal_and_quits_on_q() {
    let m = MasterBuilder::config(TWO_POOLS).start();
    m.wait_acked("web", 2);
    m.wait_acked("api", 1);
    let Some(r) = drive(&m, "q", "web,api") else {
        return;
    };
    let screen = r["screen"].as_str().unwrap_or("");
    assert_eq!(r["shown"], true, "{screen}");
    assert_eq!(r["exit"], 0, "{screen}");
    assert_eq!(r["entered_alt"], true, "{screen}");
    assert_eq!(r["left_alt"], true, "{screen}");
    assert_eq!(r["raw_while_running"], true);
    assert_eq!(r["restored"], true, "the terminal was not restored");
    assert!(screen.contains("2/2 acked"), "{screen}");
    assert!(screen.contains("acked"), "{screen}");
    for pid in m.pids("web", "acked") {
        assert!(screen.contains(&pid.to_string()), "worker {pid}:\n{screen}");
    }
}

#[test]
fn top_restores_the_terminal_when_killed_by_sigterm() {
    let m = MasterBuilder::config(TWO_POOLS).start();
    m.wait_acked("web", 2);
    let Some(r) = drive(&m, "term", "web,api") else {
        return;
    };
    let screen = r["screen"].as_str().unwrap_or("");
    assert_eq!(r["shown"], true, "{screen}");
    assert_eq!(r["exit"], 0, "{screen}");
    assert_eq!(r["left_alt"], true, "{screen}");
    assert_eq!(r["restored"], true, "the terminal was not restored");
}

#[test]
fn top_without_a_terminal_says_so() {
    let m = MasterBuilder::config(TWO_POOLS).start();
    let out = m.ctl(&["top"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("top needs a terminal"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
