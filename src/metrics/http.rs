//! The metrics listener: a minimal HTTP/1.0 and 1.1 responder on the master's
//! mio loop (no thread). One request per connection, answered with
//! `Connection: close`; the master renders the body (GET /metrics), this
//! module moves bytes.
//!
//! A slow or hostile scraper is bounded as a control client is
//! (src/control/server.rs):
//! - **Request.** At most [`MAX_REQUEST`] bytes of request line and headers; more
//!   gets `431` and the connection is closed. A body is never read.
//! - **Output.** A response is written as far as the socket takes it; what is
//!   left waits in the connection's buffer. A response that would bring all
//!   connections together beyond [`TOTAL_OUTPUT`] queued is replaced by a
//!   short `503`.
//! - **Time.** The whole request must arrive within [`IDLE`] of the accept
//!   (a slowloris trickling bytes is not given more time), and a response
//!   the peer stops reading is closed after [`IDLE`] without progress. This
//!   is the only timer, and it is armed only while a connection is open.
//! - **Connections.** At most [`MAX_CONNS`]; a newcomer at the limit closes the
//!   connection idle longest, so a hoarder cannot lock out Prometheus.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use crate::config::MetricsListen;

/// Bytes of request line and headers read at most.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Connections open at once.
pub const MAX_CONNS: usize = 64;
/// Response bytes queued for all connections together, at most.
pub const TOTAL_OUTPUT: usize = 64 * 1024 * 1024;
/// A connection without progress for this long is closed.
pub const IDLE: Duration = Duration::from_secs(10);
/// Tokens of metrics connections: `CONN_BASE .. CONN_BASE + MAX_CONNS`
/// (below the control connections' range).
pub const CONN_BASE: usize = 1 << 19;

pub type ScrapeId = usize;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("could not listen for metrics on {addr}: {source}")]
    Listen { addr: String, source: io::Error },
    #[error("{path} exists and is not a socket; refusing to replace it for metrics")]
    NotASocket { path: PathBuf },
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }
}

struct Conn {
    stream: Stream,
    input: Vec<u8>,
    /// The response, `out[pos..]` still to write; `None` until answered.
    out: Option<Vec<u8>>,
    pos: usize,
    /// Closed if no progress by then.
    deadline: Instant,
}

/// What a request asked for (the master answers [`Request::Metrics`]; this
/// module answers the rest itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `GET /metrics` (`head`: HEAD, no body wanted).
    Metrics { head: bool },
}

/// The outcome of parsing what a connection sent so far.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Incomplete,
    Metrics {
        head: bool,
    },
    /// Answered here: status code and reason.
    Error(u16, &'static str),
}

/// Parse a request head (pure; `buf` is what was read so far).
fn parse(buf: &[u8]) -> Parsed {
    let end = find(buf, b"\r\n\r\n").or_else(|| find(buf, b"\n\n"));
    if end.is_none() {
        return if buf.len() >= MAX_REQUEST {
            Parsed::Error(431, "Request Header Fields Too Large")
        } else {
            Parsed::Incomplete
        };
    }
    let line_end = find(buf, b"\n").unwrap_or(buf.len());
    let Ok(line) = std::str::from_utf8(&buf[..line_end]) else {
        return Parsed::Error(400, "Bad Request");
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parsed::Error(400, "Bad Request");
    };
    if !version.starts_with("HTTP/1.") {
        return Parsed::Error(505, "HTTP Version Not Supported");
    }
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Parsed::Error(405, "Method Not Allowed"),
    };
    let path = target.split(['?', '#']).next().unwrap_or("");
    if path == "/metrics" {
        Parsed::Metrics { head }
    } else {
        Parsed::Error(404, "Not Found")
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A response: status line, headers, body (omitted for HEAD).
pub fn response(code: u16, reason: &str, content_type: &str, body: &[u8], head: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body);
    }
    out
}

pub struct MetricsServer {
    listener: Listener,
    shown: String,
    conns: HashMap<ScrapeId, Conn>,
    /// Ids free for reuse (tokens stay within `CONN_BASE + MAX_CONNS`).
    free: Vec<ScrapeId>,
    queued: usize,
}

impl MetricsServer {
    /// Listen on `addr`. A unix socket file left by a previous master (or the
    /// image before a re-exec) is replaced; anything else at the path is not.
    pub fn bind(addr: &MetricsListen) -> Result<MetricsServer, MetricsError> {
        let err = |source| MetricsError::Listen {
            addr: addr.to_string(),
            source,
        };
        let listener = match addr {
            MetricsListen::Tcp(a) => Listener::Tcp(TcpListener::bind(*a).map_err(err)?),
            MetricsListen::Unix(p) => {
                use std::os::unix::fs::FileTypeExt;
                if let Ok(m) = std::fs::symlink_metadata(p) {
                    if !m.file_type().is_socket() {
                        return Err(MetricsError::NotASocket { path: p.clone() });
                    }
                    let _ = std::fs::remove_file(p);
                }
                Listener::Unix(UnixListener::bind(p).map_err(err)?, p.clone())
            }
        };
        Ok(MetricsServer::around(listener, addr))
    }

    /// The listening fd, for a re-exec to keep.
    pub fn listener_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match &self.listener {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l, _) => l.as_raw_fd(),
        }
    }

    /// Take over the listener a previous image kept (`fd`, listening on `addr`).
    ///
    /// # Safety
    /// `fd` must be an open listening socket of `addr`'s kind, owned by nobody else.
    pub unsafe fn from_listener_fd(fd: std::os::fd::RawFd, addr: &MetricsListen) -> MetricsServer {
        use std::os::fd::FromRawFd;
        // SAFETY: the caller's promise.
        let listener = match addr {
            MetricsListen::Tcp(_) => Listener::Tcp(unsafe { TcpListener::from_raw_fd(fd) }),
            MetricsListen::Unix(p) => {
                Listener::Unix(unsafe { UnixListener::from_raw_fd(fd) }, p.clone())
            }
        };
        MetricsServer::around(listener, addr)
    }

    fn around(listener: Listener, addr: &MetricsListen) -> MetricsServer {
        let shown = match &listener {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| addr.to_string(), |a| a.to_string()),
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
        };
        MetricsServer {
            listener,
            shown,
            conns: HashMap::new(),
            free: (CONN_BASE..CONN_BASE + MAX_CONNS).rev().collect(),
            queued: 0,
        }
    }

    /// Where it listens (with the port the kernel chose for `:0`).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        match &mut self.listener {
            Listener::Tcp(l) => registry.register(l, token, Interest::READABLE),
            Listener::Unix(l, _) => registry.register(l, token, Interest::READABLE),
        }
    }

    /// Accept every waiting connection; false if accepting failed for another
    /// reason than having taken them all (e.g. out of fds: try later).
    pub fn accept(&mut self, registry: &Registry, now: Instant) -> bool {
        loop {
            let stream = match &self.listener {
                Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
                Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
            };
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("metrics: accept on {} failed: {e}", self.shown);
                    return false;
                }
            };
            if self.free.is_empty() {
                // Make room: the connection that has made no progress longest.
                if let Some(oldest) = self
                    .conns
                    .iter()
                    .min_by_key(|(_, c)| c.deadline)
                    .map(|(id, _)| *id)
                {
                    log::debug!("metrics: {MAX_CONNS} connections open; closing the idlest");
                    self.close(registry, oldest);
                }
            }
            let Some(id) = self.free.pop() else {
                continue;
            };
            if let Err(e) = registry.register(stream.source(), Token(id), Interest::READABLE) {
                log::warn!("metrics: cannot register a connection: {e}");
                self.free.push(id);
                continue;
            }
            self.conns.insert(
                id,
                Conn {
                    stream,
                    input: Vec::new(),
                    out: None,
                    pos: 0,
                    deadline: now + IDLE,
                },
            );
        }
    }

    /// The connection is readable or writable. Returns a request for the
    /// master to answer (with [`MetricsServer::respond`]); errors and other
    /// paths are answered here (their status code is the second value).
    pub fn on_event(
        &mut self,
        registry: &Registry,
        id: ScrapeId,
        now: Instant,
    ) -> (Option<Request>, Option<u16>) {
        let Some(c) = self.conns.get_mut(&id) else {
            return (None, None);
        };
        if c.out.is_some() {
            self.flush(registry, id, now);
            return (None, None);
        }
        let mut chunk = [0u8; 4096];
        let mut eof = false;
        loop {
            let room = MAX_REQUEST.saturating_sub(c.input.len()).min(chunk.len());
            if room == 0 {
                break;
            }
            match c.stream.read(&mut chunk[..room]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    c.input.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        match parse(&c.input) {
            Parsed::Incomplete if eof => {
                self.close(registry, id);
                (None, None)
            }
            Parsed::Incomplete => (None, None),
            Parsed::Metrics { head } => (Some(Request::Metrics { head }), None),
            Parsed::Error(code, reason) => {
                let body = format!("{code} {reason}\n");
                let r = response(
                    code,
                    reason,
                    "text/plain; charset=utf-8",
                    body.as_bytes(),
                    false,
                );
                self.respond(registry, id, r, now);
                (None, Some(code))
            }
        }
    }

    /// Whether a response of `len` bytes may be queued now.
    pub fn has_room(&self, len: usize) -> bool {
        self.queued + len <= TOTAL_OUTPUT
    }

    /// Queue the whole response and write what the socket takes.
    pub fn respond(&mut self, registry: &Registry, id: ScrapeId, bytes: Vec<u8>, now: Instant) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        self.queued += bytes.len();
        c.out = Some(bytes);
        c.pos = 0;
        c.input = Vec::new();
        self.flush(registry, id, now);
    }

    fn flush(&mut self, registry: &Registry, id: ScrapeId, now: Instant) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(out) = &c.out else {
            return;
        };
        let mut done = false;
        let mut failed = false;
        while c.pos < out.len() {
            match c.stream.write(&out[c.pos..]) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => {
                    c.pos += n;
                    self.queued -= n;
                    c.deadline = now + IDLE;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if c.pos >= out.len() {
            done = true;
        }
        if done || failed {
            c.stream.shutdown();
            self.close(registry, id);
        } else {
            let _ = registry.reregister(c.stream.source(), Token(id), Interest::WRITABLE);
        }
    }

    pub fn close(&mut self, registry: &Registry, id: ScrapeId) {
        if let Some(mut c) = self.conns.remove(&id) {
            let _ = registry.deregister(c.stream.source());
            if let Some(out) = &c.out {
                self.queued -= out.len() - c.pos.min(out.len());
            }
            self.free.push(id);
        }
    }

    /// The earliest idle deadline (`None` with no connection: no timer).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns.values().map(|c| c.deadline).min()
    }

    /// Close connections past their deadline; returns how many.
    pub fn expire(&mut self, registry: &Registry, now: Instant) -> usize {
        let due: Vec<ScrapeId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            self.close(registry, *id);
        }
        due.len()
    }

    pub fn is_conn(id: usize) -> bool {
        (CONN_BASE..CONN_BASE + MAX_CONNS).contains(&id)
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = &self.listener {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed_and_bad_ones_answered() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Parsed::Metrics { head: false }
        );
        assert_eq!(
            parse(b"HEAD /metrics?x=1 HTTP/1.0\n\n"),
            Parsed::Metrics { head: true }
        );
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Incomplete
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Parsed::Error(404, "Not Found")
        );
        assert!(matches!(
            parse(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Parsed::Error(405, _)
        ));
        assert!(matches!(
            parse(b"GET /metrics SPDY/3\r\n\r\n"),
            Parsed::Error(505, _)
        ));
        assert!(matches!(parse(b"garbage\r\n\r\n"), Parsed::Error(400, _)));
        assert!(matches!(
            parse(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"),
            Parsed::Error(400, _)
        ));
        let huge = vec![b'a'; MAX_REQUEST];
        assert!(matches!(parse(&huge), Parsed::Error(431, _)));
    }

    #[test]
    fn a_response_has_its_length_and_head_has_no_body() {
        let r = response(200, "OK", "text/plain", b"abc", false);
        let t = String::from_utf8(r).unwrap();
        assert!(t.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(t.contains("Content-Length: 3\r\n"));
        assert!(t.ends_with("\r\n\r\nabc"));
        let h = response(200, "OK", "text/plain", b"abc", true);
        assert!(String::from_utf8(h)
            .unwrap()
            .ends_with("Content-Length: 3\r\nConnection: close\r\n\r\n"));
    }
}
