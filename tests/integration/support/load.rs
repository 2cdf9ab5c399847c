//! Clients for "no request is lost" tests: a request loop over new
//! connections or one keep-alive connection, and a `state` sampler.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use super::http::http_get;
use super::state::state_at;
use super::wait::wait_for;

const WAIT: Duration = Duration::from_secs(30);

/// A request that came back, or why not.
pub type Outcome = Result<String, String>;

/// Read one HTTP/1.1 response; the body and whether the server closes.
pub fn read_response(r: &mut BufReader<TcpStream>) -> Result<(String, bool), String> {
    let mut status = String::new();
    match r.read_line(&mut status) {
        Ok(0) => return Err("connection closed before any response byte".into()),
        Ok(_) => {}
        Err(e) => return Err(format!("reading the status line: {e}")),
    }
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status {status:?}"));
    }
    let (mut len, mut close) = (0usize, false);
    loop {
        let mut h = String::new();
        match r.read_line(&mut h) {
            Ok(0) => return Err("connection closed inside the headers".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading headers: {e}")),
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                len = v.parse().map_err(|_| format!("bad content-length {v:?}"))?;
            } else if k.eq_ignore_ascii_case("connection") {
                close = v.eq_ignore_ascii_case("close");
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok((String::from_utf8_lossy(&body).into_owned(), close))
}

/// A keep-alive client: one connection, reused until the server says
/// `Connection: close`. Strict like wrk: a reused connection that the server
/// closes under a request is a failed request, not retried.
pub struct KeepAlive {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
    connects: Arc<AtomicU64>,
}

impl KeepAlive {
    pub fn get(&mut self) -> Outcome {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr).map_err(|e| format!("connect: {e}"))?;
            self.connects.fetch_add(1, Ordering::SeqCst);
            s.set_read_timeout(Some(Duration::from_secs(10))).ok();
            self.conn = Some(BufReader::new(s));
        }
        let Some(r) = self.conn.as_mut() else {
            return Err("no connection".into());
        };
        let sent = r
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .map_err(|e| format!("write: {e}"));
        let res = sent.and_then(|()| read_response(r));
        match res {
            Ok((body, close)) => {
                if close {
                    self.conn = None;
                }
                Ok(body)
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

/// A client thread making requests back to back until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    /// Connections opened by the keep-alive client.
    pub connects: Arc<AtomicU64>,
    /// Version tags seen in answers.
    versions: Arc<Mutex<BTreeSet<String>>>,
    handle: Option<JoinHandle<Vec<String>>>,
    pub what: &'static str,
}

impl Load {
    /// `keep_alive`: reuse connections; otherwise a new connection per request
    /// (`Connection: close`).
    pub fn start(addr: &str, keep_alive: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let versions = Arc::new(Mutex::new(BTreeSet::new()));
        let connects = Arc::new(AtomicU64::new(0));
        let (s, o, v, addr) = (stop.clone(), ok.clone(), versions.clone(), addr.to_string());
        let c = connects.clone();
        let handle = std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut ka = KeepAlive {
                addr: addr.clone(),
                conn: None,
                connects: c,
            };
            while !s.load(Ordering::SeqCst) {
                let res = if keep_alive {
                    ka.get()
                } else {
                    http_get(&addr, "/").map_err(|e| e.to_string())
                };
                match res {
                    Ok(body) => {
                        o.fetch_add(1, Ordering::SeqCst);
                        if let Some(tag) = body.trim().split("version=").nth(1) {
                            v.lock().expect("versions lock").insert(tag.to_string());
                        }
                    }
                    Err(e) => failures.push(e),
                }
            }
            failures
        });
        Load {
            stop,
            ok,
            connects,
            versions,
            handle: Some(handle),
            what: if keep_alive {
                "keep-alive client"
            } else {
                "new-connection client"
            },
        }
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Wait until `n` more requests succeeded.
    pub fn wait_more(&self, n: u64) {
        let base = self.ok();
        wait_for(format!("{n} requests of the {}", self.what), WAIT, || {
            (self.ok() >= base + n).then_some(())
        });
    }

    pub fn wait_version(&self, tag: &str) {
        wait_for(format!("the {} to see {tag}", self.what), WAIT, || {
            self.versions
                .lock()
                .expect("versions lock")
                .contains(tag)
                .then_some(())
        });
    }

    /// Stop the thread; (successful requests, failures).
    pub fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let failures = self
            .handle
            .take()
            .map(|h| h.join().expect("load thread panicked"))
            .unwrap_or_default();
        (self.ok(), failures)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A thread taking `state` snapshots back to back until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Value>>>,
}

impl Sampler {
    pub fn start(sock: PathBuf) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut out = Vec::new();
            while !s.load(Ordering::SeqCst) {
                out.push(state_at(&sock));
            }
            out
        });
        Sampler {
            stop,
            handle: Some(handle),
        }
    }

    pub fn finish(mut self) -> Vec<Value> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .map(|h| h.join().expect("sampler panicked"))
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
