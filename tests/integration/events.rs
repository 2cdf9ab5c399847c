//! `events -f`: one follower sees a worker's life end to end — spawned,
//! acked, died (status and cause), an upgrade (started, progress, retired,
//! exited, done), a kill after the stop timeout, a watcher trigger and the
//! reload it causes (applied, with the diff; refused, with why). A follower
//! that never reads is dropped with a notice; the master carries on.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const T: Duration = Duration::from_secs(30);

/// A connection following the events.
struct Follower {
    r: BufReader<UnixStream>,
    partial: String,
    seen: Vec<Value>,
    /// Indexes of `seen` already returned by `wait`.
    taken: Vec<usize>,
}

impl Follower {
    fn new(m: &Master) -> Follower {
        let mut s = UnixStream::connect(&m.sock).expect("connect");
        s.write_all(b"{\"command\":\"events\",\"args\":[\"-f\"],\"id\":\"f\"}\n")
            .expect("follow");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Follower {
            r: BufReader::new(s),
            partial: String::new(),
            seen: Vec::new(),
            taken: Vec::new(),
        }
    }

    /// The first event matching `pred` not returned yet: one already read
    /// (events of one step may come in either order), or the next to come.
    fn wait(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) =
            (0..self.seen.len()).find(|i| !self.taken.contains(i) && pred(&self.seen[*i]))
        {
            self.taken.push(i);
            return self.seen[i].clone();
        }
        let end = Instant::now() + T;
        while Instant::now() < end {
            match self.r.read_line(&mut self.partial) {
                Ok(0) => panic!(
                    "the master closed the events stream; seen {:?}",
                    self.kinds()
                ),
                Ok(_) if self.partial.ends_with('\n') => {
                    let reply: Value = serde_json::from_str(self.partial.trim()).expect("reply");
                    self.partial.clear();
                    assert_eq!(reply["wait"], true, "{reply}");
                    assert_eq!(reply["request_id"], "f", "{reply}");
                    let ev: Value = serde_json::from_str(reply["message"].as_str().unwrap_or(""))
                        .expect("event is a JSON line");
                    assert!(ev["ts"].is_string() && ev["event"].is_string(), "{ev}");
                    self.seen.push(ev.clone());
                    if pred(&ev) {
                        self.taken.push(self.seen.len() - 1);
                        return ev;
                    }
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("reading events: {e}"),
            }
        }
        panic!("no {what} event within {T:?}; seen {:?}", self.kinds())
    }

    fn kinds(&self) -> Vec<String> {
        self.seen
            .iter()
            .map(|e| {
                format!(
                    "{}:{}",
                    e["event"].as_str().unwrap_or("?"),
                    e["pool"].as_str().unwrap_or("")
                )
            })
            .collect()
    }
}

fn is(kind: &'static str, pool: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["event"] == kind && (pool.is_empty() || e["pool"] == pool)
}

const CONFIG: &str = r#"
[control]
socket = "{sock}"
[watch]
debounce = "100ms"
[pools.web]
command = ["{worker}"]
count = 1
ack_timer = "100ms"
respawn_delay = "100ms"
[pools.stubborn]
command = ["{worker}", "--ignore-stop"]
count = 1
ack_timer = "100ms"
stop_timeout = "300ms"
"#;

#[test]
fn a_follower_sees_spawn_ack_crash_upgrade_kill_watch_and_reloads() {
    let m = MasterBuilder::config(CONFIG).start();
    m.wait_acked("web", 1);
    m.wait_acked("stubborn", 1);
    let mut f = Follower::new(&m);

    // Spawn and ack.
    let (msg, err) = m.cmd("inc", &[], Some("web"));
    assert!(!err, "{msg}");
    let sp = f.wait("spawned", is("spawned", "web"));
    assert!(sp["pid"].as_i64().is_some() && sp["version"] == 1, "{sp}");
    let ack = f.wait("acked", |e| e["event"] == "acked" && e["pid"] == sp["pid"]);
    assert!(ack["after_ms"].as_f64().unwrap_or(0.0) >= 100.0, "{ack}");

    // A crash after the ack: its status and cause, then the replacement.
    let pid = sp["pid"].as_i64().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let died = f.wait("died", is("died", "web"));
    assert_eq!(died["pid"], pid, "{died}");
    assert_eq!(died["cause"], "crash after ack", "{died}");
    assert!(
        died["status"].as_str().unwrap_or("").contains("SIGKILL"),
        "{died}"
    );
    f.wait("the replacement", is("spawned", "web"));
    m.wait_acked("web", 2);

    // An upgrade: started, progress, old workers retired and exited, done.
    let (msg, err) = m.cmd("upgrade", &[], Some("web"));
    assert!(!err, "{msg}");
    let st = f.wait("upgrade_started", is("upgrade_started", "web"));
    assert_eq!(st["version"], 2, "{st}");
    f.wait("upgrade_progress", is("upgrade_progress", "web"));
    let ret = f.wait("retired", is("retired", "web"));
    assert_eq!(ret["reason"], "retired", "{ret}");
    let ex = f.wait("exited", |e| {
        e["event"] == "exited" && e["pid"] == ret["pid"]
    });
    assert_eq!(ex["cause"], "retired", "{ex}");
    let done = f.wait("upgrade_done", is("upgrade_done", "web"));
    assert_eq!(done["version"], 2, "{done}");

    // A worker that ignores its stop signal: killed after stop_timeout.
    let (msg, err) = m.cmd("dec", &[], Some("stubborn"));
    assert!(!err, "{msg}");
    f.wait("stopping", is("stopping", "stubborn"));
    let k = f.wait("killed", is("killed", "stubborn"));
    assert_eq!(k["signal"], "SIGKILL", "{k}");
    let ex = f.wait("exited", is("exited", "stubborn"));
    assert_eq!(ex["pid"], k["pid"], "{ex}");

    // The config file changes: a watcher trigger, then the reload with its diff.
    m.write_config(&CONFIG.replace(
        "count = 1\nack_timer = \"100ms\"\nrespawn",
        "count = 3\nack_timer = \"100ms\"\nrespawn",
    ));
    let w = f.wait("watch_triggered", is("watch_triggered", ""));
    assert_eq!(w["pool"], "config", "{w}");
    let r = f.wait("reload_applied", is("reload_applied", ""));
    assert_eq!(r["ok"], true, "{r}");
    let scaled = r["diff"]["scaled"].as_array().cloned().unwrap_or_default();
    assert!(
        scaled.iter().any(|s| s["pool"] == "web" && s["to"] == 3),
        "{r}"
    );
    assert!(r["diff"]["unchanged"].as_array().is_some(), "{r}");

    // A broken file: refused, with why.
    m.write_config("[pools.web]\ncount = \"many\"\n");
    let r = f.wait("reload_refused", is("reload_refused", ""));
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["message"].as_str().unwrap_or("").contains("count"), "{r}");
}

#[test]
fn a_follower_that_never_reads_is_dropped_and_the_master_carries_on() {
    let m = MasterBuilder::config(
        r#"
[control]
socket = "{sock}"
[pools.web]
command = ["{worker}"]
count = 0
ack_timer = "50ms"
stop_timeout = "5s"
"#,
    )
    .start();
    let mut lazy = UnixStream::connect(&m.sock).unwrap();
    lazy.write_all(b"{\"command\":\"events\",\"args\":[\"-f\"],\"id\":1}\n")
        .unwrap();
    // Thousands of events (each worker: spawned, acked, stopping, exited),
    // until the master gives up on the follower.
    let mut rounds = 0;
    while m.log_count("events: dropping a follower that does not read") == 0 {
        assert!(
            rounds < 20,
            "the follower was never dropped:\n{}",
            m.log_text()
        );
        for n in ["200", "0"] {
            let (msg, err) = m.cmd("set_workers", &[n], Some("web"));
            assert!(!err, "{msg}");
        }
        m.wait_state("the pool to drain", T, |st| {
            st["pools"]["web"]["workers"]
                .as_array()
                .is_some_and(Vec::is_empty)
                .then_some(())
        });
        rounds += 1;
    }
    // The master still answers, and its memory did not keep the backlog.
    let (msg, err) = m.cmd("status", &[], None);
    assert!(!err, "{msg}");
    let rss = std::fs::read_to_string(format!("/proc/{}/status", m.pid())).unwrap();
    let kb: u64 = rss
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(kb < 64 * 1024, "master RSS {kb} kB");
    // The dropped follower sees the end of its stream.
    lazy.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let end = read_to_eof(&mut lazy);
    assert!(!end.is_empty());
    // A new follower works.
    let mut f = Follower::new(&m);
    m.cmd("inc", &[], Some("web"));
    f.wait("spawned", is("spawned", "web"));
}
