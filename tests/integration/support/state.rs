//! Talking to a master's control socket, and reading its `state` dump: the
//! machine-readable truth tests wait on.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::master::Master;
use super::wait::wait_for;

/// One JSON request to the control socket at `sock`; every reply line up to the
/// final one. Usable from threads that do not own the [`Master`].
pub fn request_at(sock: &Path, req: &Value) -> Vec<Value> {
    let mut s = UnixStream::connect(sock).expect("connect control socket");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut line = req.to_string();
    line.push('\n');
    s.write_all(line.as_bytes()).expect("send request");
    let mut out = Vec::new();
    let mut r = BufReader::new(s);
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap_or(0) == 0 {
            return out;
        }
        let v: Value = serde_json::from_str(&l).expect("reply is JSON");
        let more = v.get("wait").and_then(Value::as_bool).unwrap_or(false);
        out.push(v);
        if !more {
            return out;
        }
    }
}

/// The `state` dump from the control socket at `sock` (for sampler threads).
pub fn state_at(sock: &Path) -> Value {
    let replies = request_at(sock, &serde_json::json!({"command": "state"}));
    let msg = replies
        .last()
        .and_then(|v| v["message"].as_str())
        .expect("state reply has a message");
    serde_json::from_str(msg).expect("state is JSON")
}

/// The messages of a list of replies.
pub fn messages(replies: &[Value]) -> Vec<String> {
    replies
        .iter()
        .map(|r| r["message"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Workers of `pool` in a state dump.
pub fn workers(st: &Value, pool: &str) -> Vec<Value> {
    st["pools"][pool]["workers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Every worker pid of every pool in a state dump.
pub fn all_pids(st: &Value) -> Vec<i32> {
    st["pools"]
        .as_object()
        .into_iter()
        .flat_map(|p| p.values())
        .flat_map(|p| p["workers"].as_array().cloned().unwrap_or_default())
        .filter_map(|w| w["pid"].as_i64().map(|p| p as i32))
        .collect()
}

/// Versions of a pool's workers in a given state.
pub fn versions(st: &Value, pool: &str, state: &str) -> Vec<u64> {
    st["pools"][pool]["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["state"] == state)
        .filter_map(|w| w["version"].as_u64())
        .collect()
}

impl Master {
    /// One JSON request, all reply lines until the final one (no `wait`).
    pub fn request(&self, req: Value) -> Vec<Value> {
        request_at(&self.sock, &req)
    }

    /// Send a command (optionally to a pool); the final reply's message, and
    /// whether it was an error.
    pub fn cmd(&self, command: &str, args: &[&str], pool: Option<&str>) -> (String, bool) {
        let mut req = serde_json::json!({"command": command, "args": args, "id": 1});
        if let Some(p) = pool {
            req["pool"] = Value::from(p);
        }
        let replies = self.request(req);
        let last = replies.last().cloned().unwrap_or(Value::Null);
        (
            last["message"].as_str().unwrap_or("").to_string(),
            last["error"].as_bool().unwrap_or(false),
        )
    }

    /// The `state` dump.
    pub fn state(&self) -> Value {
        let (msg, err) = self.cmd("state", &[], None);
        assert!(!err, "state failed: {msg}");
        serde_json::from_str(&msg).expect("state is JSON")
    }

    /// One pool of the `state` dump.
    pub fn pool(&self, pool: &str) -> Value {
        self.state()["pools"][pool].clone()
    }

    /// Pids of a pool's workers in a given state ("acked", "unacked", "draining").
    pub fn pids(&self, pool: &str, state: &str) -> Vec<i32> {
        let st = self.state();
        let mut v: Vec<i32> = st["pools"][pool]["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| w["state"] == state)
            .filter_map(|w| w["pid"].as_i64().map(|p| p as i32))
            .collect();
        v.sort_unstable();
        v
    }

    /// Wait until `pool` has exactly `n` acked workers and nothing else.
    pub fn wait_acked(&self, pool: &str, n: usize) -> Vec<i32> {
        wait_for(
            format!(
                "{n} acked workers in pool {pool} (log: {})",
                self.log.display()
            ),
            Duration::from_secs(30),
            || {
                let st = self.state();
                let ws = st["pools"][pool]["workers"].as_array()?.clone();
                let acked: Vec<i32> = ws
                    .iter()
                    .filter(|w| w["state"] == "acked")
                    .filter_map(|w| w["pid"].as_i64().map(|p| p as i32))
                    .collect();
                (acked.len() == n && ws.len() == n).then_some(acked)
            },
        )
    }

    /// Wait until `state` satisfies `f`; what `f` returned.
    pub fn wait_state<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Value) -> Option<T>,
    ) -> T {
        wait_for(
            format!("{what} in state (log: {})", self.log.display()),
            timeout,
            || f(&self.state()),
        )
    }

    /// A pool's version (bumped by each upgrade), from `state`.
    pub fn version(&self, pool: &str) -> u64 {
        self.state()["pools"][pool]["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("pool {pool} has no version in state"))
    }

    /// The first bound address of `pool`, as `state` reports it (after port 0
    /// resolution).
    pub fn addr(&self, pool: &str) -> String {
        let st = self.state();
        st["pools"][pool]["binds"][0]
            .as_str()
            .unwrap_or_else(|| panic!("pool {pool} has no bind in state: {st}"))
            .to_string()
    }
}
