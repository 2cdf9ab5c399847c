//! The control socket's transport: a unix stream listener on the mio loop and its
//! connections, each with its own read and write buffer, so a slow or stuck client
//! never blocks the loop or another client. This layer frames lines (at most
//! [`MAX_LINE`] bytes) and moves bytes; what a line means is decided by the master.
//!
//! Bounds, and why each exists (a hostile or careless client must not be able to
//! grow the master's memory, starve the loop, or lock out workers' acks):
//! - **Output.** The master takes a client's next request only while less than
//!   [`WBUF_HIGH`] of its replies is queued, and while all clients together have
//!   less than [`TOTAL_HIGH`] queued; a client that pipelines requests and never
//!   reads therefore holds at most one reply beyond the mark. Its requests stay
//!   in the kernel (its writes block) until it reads. Buffers are consumed by
//!   moving an offset, not by copying what is left, and given back when empty.
//! - **Input.** A line is at most [`MAX_LINE`] bytes; the socket is read only
//!   while no complete request is waiting, so a connection buffers at most one
//!   line and one read. Each turn the master takes at most [`LINES_PER_TURN`]
//!   lines from one connection, then serves the others ([`ControlServer::take_ready`]
//!   says who still has work).
//! - **Connections.** At most [`MAX_CLIENTS`] clients. When a new one arrives
//!   at the limit, the connection that has been idle longest (no complete request
//!   for the longest time, nothing streaming to it) is closed to make room: idle
//!   or slowloris clients cannot lock out `status` or a worker's ack. Only when
//!   every connection is busy is the newcomer refused, with a reply saying so.
//!   Workers' `-g` channels do not count.
//!
//! Startup safety: a live master already on the path is detected by connecting to
//! it (and named by its pid, from SO_PEERCRED) and refused; a stale socket file left
//! by a killed master is replaced. The socket file is created with its final mode
//! (the umask is set for the bind), so there is no moment where others may connect.
//! On exit the file is removed only if it is still ours.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use super::protocol::{self, MAX_LINE};

/// Client connections open at once (workers' `-g` channels not counted).
pub const MAX_CLIENTS: usize = 1024;

/// Tokens at and above this value are control connections.
pub const CONN_BASE: usize = 1 << 20;

pub type ConnId = usize;

/// Replies queued for one client beyond this stop the master taking its requests
/// until it has read them down to [`WBUF_LOW`].
pub const WBUF_HIGH: usize = 1024 * 1024;
/// Queued replies below this resume a throttled client.
pub const WBUF_LOW: usize = 256 * 1024;
/// Replies queued for all clients together beyond this stop the master taking
/// requests from any client (workers' acks and pings need no reply and are
/// still taken from connections with nothing queued).
pub const TOTAL_HIGH: usize = 16 * 1024 * 1024;
/// Lines taken from one connection per loop turn.
pub const LINES_PER_TURN: usize = 64;
/// Bytes read from one connection per read.
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another master (pid {pid}) is already listening on control socket {path}")]
    InUse { path: PathBuf, pid: String },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("could not {op} control socket {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// Bytes waiting to be written: `buf[pos..]`.
#[derive(Default)]
struct OutBuf {
    buf: Vec<u8>,
    pos: usize,
}

impl OutBuf {
    fn len(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn push(&mut self, bytes: &[u8]) {
        // Compact only when the consumed prefix is at least as large as what is
        // left: each byte is moved at most once on average.
        if self.pos > 0 && self.pos >= self.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            // Give back what a large reply made us hold.
            if self.buf.capacity() > 64 * 1024 {
                self.buf = Vec::new();
            }
        }
    }
}

struct Conn {
    stream: UnixStream,
    rbuf: Vec<u8>,
    /// Bytes of `rbuf` already known to hold no newline.
    scanned: usize,
    out: OutBuf,
    /// Close once everything queued is written (after an over-long line, or a
    /// worker:ack).
    close_after_flush: bool,
    /// WRITABLE interest is registered (replies are queued).
    writable_armed: bool,
    /// Not taking requests: too many replies queued (see [`WBUF_HIGH`]).
    throttled: bool,
    uid: Option<u32>,
    pid: Option<i32>,
    /// The peer's ancestors when it connected, nearest first (read at accept,
    /// while the peer is alive: a worker's `nc` may exit right after sending).
    ancestors: Vec<i32>,
    /// `-g`: the worker this channel was made for.
    owner: Option<i32>,
    /// A worker's `-g` channel (EINHORN_SOCK_FD): kept open after worker:ack,
    /// as einhorn does, so the worker can keep using it.
    persistent: bool,
    /// Something is streaming to it (an upgrade's progress, events): never
    /// closed to make room.
    busy: bool,
    /// The peer shut down its writing side.
    peer_eof: bool,
    /// The socket may hold more bytes than we have read (edge-triggered epoll
    /// will not say so again).
    unread: bool,
    /// When its last complete request arrived (or it connected).
    last_request: Instant,
}

impl Conn {
    /// Position just past the first complete line in `rbuf`, if any.
    fn line_end(&mut self) -> Option<usize> {
        let pos = self.rbuf[self.scanned..].iter().position(|&b| b == b'\n');
        match pos {
            Some(p) => Some(self.scanned + p + 1),
            None => {
                self.scanned = self.rbuf.len();
                None
            }
        }
    }
}

/// A connection as data, for a re-executed master: the fd stays open across
/// the exec; what was read and not yet taken, and what was queued and not yet
/// written, go with it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConnParts {
    pub id: ConnId,
    pub fd: i32,
    pub rbuf: Vec<u8>,
    pub out: Vec<u8>,
    pub close_after_flush: bool,
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    pub ancestors: Vec<i32>,
    pub owner: Option<i32>,
    pub persistent: bool,
    pub busy: bool,
    pub peer_eof: bool,
    /// Milliseconds since its last complete request.
    pub idle_ms: u64,
}

/// The control server as data (see [`ConnParts`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ServerParts {
    pub listener_fd: i32,
    pub path: PathBuf,
    pub ino: Option<(u64, u64)>,
    pub next: ConnId,
    pub conns: Vec<ConnParts>,
}

/// One request line taken from a connection.
#[derive(Debug, PartialEq)]
pub enum Input {
    Line(Vec<u8>),
    /// A line longer than [`MAX_LINE`]: the connection must get an error and close.
    TooLong,
}

pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    ino: Option<(u64, u64)>,
    conns: HashMap<ConnId, Conn>,
    /// How many of `conns` are workers' `-g` channels.
    persistent: usize,
    /// Bytes queued over all connections.
    total_queued: usize,
    /// Connections with a complete request waiting (or bytes left unread), to
    /// serve on the next turn.
    ready: BTreeSet<ConnId>,
    next: ConnId,
}

impl ControlServer {
    /// Bind the control socket at `path` with file mode `mode`.
    pub fn bind(path: &Path, mode: u32) -> Result<ControlServer, ControlError> {
        let io = |op: &'static str| {
            let path = path.to_path_buf();
            move |source| ControlError::Io { op, path, source }
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                use std::os::unix::fs::FileTypeExt;
                if !meta.file_type().is_socket() {
                    return Err(ControlError::NotASocket {
                        path: path.to_path_buf(),
                    });
                }
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(s) => {
                        let pid = nix::sys::socket::getsockopt(
                            &s,
                            nix::sys::socket::sockopt::PeerCredentials,
                        )
                        .map(|c| c.pid().to_string())
                        .unwrap_or_else(|_| "unknown".into());
                        return Err(ControlError::InUse {
                            path: path.to_path_buf(),
                            pid,
                        });
                    }
                    Err(_) => {
                        log::info!("replacing stale control socket {}", path.display());
                        std::fs::remove_file(path).map_err(io("remove stale"))?;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("inspect")(e)),
        }
        let listener = bind_with_mode(path, mode).map_err(io("bind"))?;
        // std listens with a small backlog; a thousand workers acking at once
        // need more. Linux lets listen() be called again to change it.
        // SAFETY: plain syscall on a socket we own.
        unsafe {
            libc::listen(listener.as_raw_fd(), 4096);
        }
        let ino = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
            ino,
            conns: HashMap::new(),
            persistent: 0,
            total_queued: 0,
            ready: BTreeSet::new(),
            next: CONN_BASE,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The server as data, without giving anything up.
    pub fn parts(&self) -> ServerParts {
        let mut conns: Vec<ConnParts> = self
            .conns
            .iter()
            .map(|(id, c)| ConnParts {
                id: *id,
                fd: c.stream.as_raw_fd(),
                rbuf: c.rbuf.clone(),
                out: c.out.pending().to_vec(),
                close_after_flush: c.close_after_flush,
                uid: c.uid,
                pid: c.pid,
                ancestors: c.ancestors.clone(),
                owner: c.owner,
                persistent: c.persistent,
                busy: c.busy,
                peer_eof: c.peer_eof,
                idle_ms: u64::try_from(c.last_request.elapsed().as_millis()).unwrap_or(u64::MAX),
            })
            .collect();
        conns.sort_by_key(|c| c.id);
        ServerParts {
            listener_fd: self.listener.as_raw_fd(),
            path: self.path.clone(),
            ino: self.ino,
            next: self.next,
            conns,
        }
    }

    /// Every fd the server holds (to keep across an exec).
    pub fn raw_fds(&self) -> Vec<i32> {
        let mut v = vec![self.listener.as_raw_fd()];
        v.extend(self.conns.values().map(|c| c.stream.as_raw_fd()));
        v
    }

    /// The server a previous image of this master held, registered on
    /// `registry` (the listener with `token`, each connection with its id).
    ///
    /// # Safety
    /// The fds in `parts` must be open sockets this process owns, each taken
    /// once.
    pub unsafe fn from_parts(
        parts: ServerParts,
        registry: &Registry,
        token: Token,
    ) -> io::Result<ControlServer> {
        use std::os::fd::FromRawFd;
        // SAFETY: the caller hands over every fd (see above).
        let std_listener =
            unsafe { std::os::unix::net::UnixListener::from_raw_fd(parts.listener_fd) };
        std_listener.set_nonblocking(true)?;
        let mut listener = UnixListener::from_std(std_listener);
        registry.register(&mut listener, token, Interest::READABLE)?;
        let mut s = ControlServer {
            listener,
            path: parts.path,
            ino: parts.ino,
            conns: HashMap::new(),
            persistent: 0,
            total_queued: 0,
            ready: BTreeSet::new(),
            next: parts.next,
        };
        let now = Instant::now();
        for c in parts.conns {
            // SAFETY: as above.
            let std_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(c.fd) };
            std_stream.set_nonblocking(true)?;
            let mut stream = UnixStream::from_std(std_stream);
            registry.register(&mut stream, Token(c.id), Interest::READABLE)?;
            let mut out = OutBuf::default();
            out.push(&c.out);
            s.total_queued += c.out.len();
            if c.persistent {
                s.persistent += 1;
            }
            s.conns.insert(
                c.id,
                Conn {
                    stream,
                    rbuf: c.rbuf,
                    scanned: 0,
                    out,
                    close_after_flush: c.close_after_flush,
                    writable_armed: false,
                    throttled: false,
                    uid: c.uid,
                    pid: c.pid,
                    ancestors: c.ancestors,
                    owner: c.owner,
                    persistent: c.persistent,
                    busy: c.busy,
                    peer_eof: c.peer_eof,
                    // Bytes may have arrived during the exec: look.
                    unread: true,
                    last_request: now
                        .checked_sub(Duration::from_millis(c.idle_ms))
                        .unwrap_or(now),
                },
            );
            s.ready.insert(c.id);
            s.flush(registry, c.id);
        }
        Ok(s)
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.listener, token, Interest::READABLE)
    }

    /// Accept pending connections; returns the new ids. The flag is true when
    /// accepting failed (EMFILE, ENFILE, ENOBUFS): clients may still be queued,
    /// and with edge-triggered epoll nothing reports them again, so the caller
    /// retries on a timer.
    pub fn accept(&mut self, registry: &Registry) -> (Vec<ConnId>, bool) {
        let mut ids = Vec::new();
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) if self.clients() >= MAX_CLIENTS => {
                    if let Some(victim) = self.idlest() {
                        self.evict(registry, victim);
                    } else {
                        // Every connection is busy: say why instead of leaving
                        // the client hanging (best effort: a fresh socket's
                        // buffer takes a short reply).
                        log::warn!(
                            "control: refused a client: {MAX_CLIENTS} connections open, all busy"
                        );
                        let reply = protocol::Reply::failure(
                            format!(
                                "too many control connections ({MAX_CLIENTS}); try again later"
                            ),
                            None,
                        );
                        let _ = stream.write(&protocol::encode(&reply, protocol::Encoding::Json));
                        continue;
                    }
                    match self.adopt(registry, stream) {
                        Ok(id) => ids.push(id),
                        Err(e) => log::warn!("control: could not register a connection: {e}"),
                    }
                }
                Ok((stream, _)) => match self.adopt(registry, stream) {
                    Ok(id) => ids.push(id),
                    Err(e) => log::warn!("control: could not register a connection: {e}"),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!(
                        "control: accept failed ({} connections open): {e}; retrying shortly",
                        self.conns.len()
                    );
                    return (ids, true);
                }
            }
        }
        (ids, false)
    }

    /// Open client connections (workers' `-g` channels not counted).
    fn clients(&self) -> usize {
        self.conns.len() - self.persistent
    }

    /// The client connection that has waited longest without a complete
    /// request and has nothing streaming to it.
    fn idlest(&self) -> Option<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| !c.persistent && !c.busy)
            .min_by_key(|(id, c)| (c.last_request, **id))
            .map(|(id, _)| *id)
    }

    fn evict(&mut self, registry: &Registry, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id) {
            log::info!(
                "control: closing connection of pid {} (idle {:.1?}) to make room for a new client",
                c.pid.map_or("unknown".into(), |p| p.to_string()),
                c.last_request.elapsed()
            );
            let reply = protocol::Reply::failure(
                "closing this idle connection: the master needs room for other clients",
                None,
            );
            // Best effort, straight to the socket: the connection goes now.
            let _ = c
                .stream
                .write(&protocol::encode(&reply, protocol::Encoding::Json));
        }
        self.close(registry, id);
    }

    /// Take an already-connected stream (a `-g` socketpair end, or an accepted one).
    pub fn adopt(&mut self, registry: &Registry, mut stream: UnixStream) -> io::Result<ConnId> {
        let id = self.next;
        self.next += 1;
        registry.register(&mut stream, Token(id), Interest::READABLE)?;
        let cred =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials).ok();
        self.conns.insert(
            id,
            Conn {
                stream,
                rbuf: Vec::new(),
                scanned: 0,
                out: OutBuf::default(),
                close_after_flush: false,
                writable_armed: false,
                throttled: false,
                uid: cred.map(|c| c.uid()),
                pid: cred.map(|c| c.pid()),
                ancestors: cred.map_or_else(Vec::new, |c| {
                    crate::procfs::ancestors(c.pid(), std::process::id() as i32, 32)
                }),
                owner: None,
                persistent: false,
                busy: false,
                peer_eof: false,
                unread: false,
                last_request: Instant::now(),
            },
        );
        Ok(id)
    }

    /// Mark a connection as the persistent channel (`-g`) of worker `owner`.
    pub fn set_persistent(&mut self, id: ConnId, owner: i32) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.owner = Some(owner);
            if !c.persistent {
                c.persistent = true;
                self.persistent += 1;
            }
        }
    }

    /// Something streams to this connection (it is never evicted for room).
    pub fn set_busy(&mut self, id: ConnId, busy: bool) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.busy = busy;
        }
    }

    /// The peer has shut down its writing side (it only waits for replies).
    pub fn peer_eof(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_some_and(|c| c.peer_eof)
    }

    pub fn is_persistent(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_some_and(|c| c.persistent)
    }

    /// The worker whose `-g` channel this connection is.
    pub fn owner(&self, id: ConnId) -> Option<i32> {
        self.conns.get(&id).and_then(|c| c.owner)
    }

    /// May this connection speak for worker `pid` (`worker:ack`, `worker:ping`)?
    /// Its `-g` channel may, for that worker only; otherwise the peer must be
    /// the worker itself or one of its descendants.
    pub fn speaks_for(&self, id: ConnId, pid: i32) -> Result<(), String> {
        let Some(c) = self.conns.get(&id) else {
            return Err("the connection is gone".into());
        };
        if let Some(owner) = c.owner {
            return if owner == pid {
                Ok(())
            } else {
                Err(format!(
                    "the -g channel of worker {owner} spoke for pid {pid}"
                ))
            };
        }
        match c.pid {
            Some(peer) if peer == pid || c.ancestors.contains(&pid) => Ok(()),
            Some(peer) if c.ancestors.is_empty() && !crate::procfs::exists(peer) => Err(format!(
                "pid {peer} spoke for pid {pid} and had exited before the master could check \
                 whose process it was"
            )),
            Some(peer) => Err(format!(
                "pid {peer} is neither pid {pid} nor one of its descendants"
            )),
            None => Err("the peer's credentials are unknown".into()),
        }
    }

    /// Peer uid and pid (SO_PEERCRED) of a connection.
    pub fn peer(&self, id: ConnId) -> (Option<u32>, Option<i32>) {
        self.conns.get(&id).map_or((None, None), |c| (c.uid, c.pid))
    }

    pub fn is_open(&self, id: ConnId) -> bool {
        self.conns.contains_key(&id)
    }

    /// Bytes queued for a connection and not yet written.
    pub fn queued(&self, id: ConnId) -> usize {
        self.conns.get(&id).map_or(0, |c| c.out.len())
    }

    /// The socket became readable: read what is available, as long as no
    /// complete request is already waiting. Returns `false` if the connection
    /// failed and is gone.
    pub fn read(&mut self, registry: &Registry, id: ConnId) -> bool {
        let Some(conn) = self.conns.get_mut(&id) else {
            return false;
        };
        conn.unread = true;
        match fill(conn) {
            Ok(()) => {
                self.ready.insert(id);
                true
            }
            Err(()) => {
                self.close(registry, id);
                false
            }
        }
    }

    /// May the master take another request from this connection now?
    pub fn may_take(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_some_and(|c| {
            !c.throttled
                && c.out.len() < WBUF_HIGH
                && (self.total_queued < TOTAL_HIGH || c.out.len() == 0)
        })
    }

    /// The next request line of a connection, reading more from the socket if
    /// none is buffered. `None`: nothing complete yet (or the connection is gone
    /// or closing). At the peer's EOF a last line without its newline is taken
    /// as a line.
    pub fn next_line(&mut self, registry: &Registry, id: ConnId) -> Option<Input> {
        loop {
            let conn = self.conns.get_mut(&id)?;
            if conn.close_after_flush {
                return None;
            }
            if conn.out.len() >= WBUF_HIGH {
                conn.throttled = true;
                return None;
            }
            if let Some(end) = conn.line_end() {
                let mut line: Vec<u8> = conn.rbuf.drain(..end).collect();
                conn.scanned = 0;
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                conn.last_request = Instant::now();
                if line.len() > MAX_LINE {
                    conn.close_after_flush = true;
                    conn.rbuf = Vec::new();
                    return Some(Input::TooLong);
                }
                return Some(Input::Line(line));
            }
            if conn.rbuf.len() > MAX_LINE {
                conn.close_after_flush = true;
                conn.rbuf = Vec::new();
                return Some(Input::TooLong);
            }
            if conn.peer_eof {
                let line = std::mem::take(&mut conn.rbuf);
                conn.scanned = 0;
                if line.iter().all(u8::is_ascii_whitespace) {
                    return None;
                }
                conn.last_request = Instant::now();
                return Some(Input::Line(line));
            }
            if !conn.unread {
                return None;
            }
            // Each fill ends with a line, EOF, an over-long buffer or nothing
            // left to read: the loop ends.
            if fill(conn).is_err() {
                self.close(registry, id);
                return None;
            }
        }
    }

    /// After the master took its share of lines: keep the connection on the
    /// ready list if it has more to give (served again next turn).
    pub fn still_ready(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id) {
            let more = c.unread || c.line_end().is_some() || (c.peer_eof && !c.rbuf.is_empty());
            if more && !c.close_after_flush {
                self.ready.insert(id);
            }
        }
    }

    /// The peer closed its side and every request it sent has been taken.
    pub fn finished(&self, id: ConnId) -> bool {
        self.conns
            .get(&id)
            .is_some_and(|c| c.peer_eof && c.rbuf.is_empty())
    }

    /// Connections to serve this turn (each taken off the list).
    pub fn take_ready(&mut self) -> Vec<ConnId> {
        let ids: Vec<ConnId> = self
            .ready
            .iter()
            .copied()
            .filter(|id| self.may_take(*id))
            .collect();
        for id in &ids {
            self.ready.remove(id);
        }
        ids
    }

    /// Whether a connection waits to be served (the loop must not sleep).
    pub fn has_ready(&self) -> bool {
        self.ready.iter().any(|id| self.may_take(*id))
    }

    /// Queue bytes for a connection and write what the socket takes now.
    pub fn write(&mut self, registry: &Registry, id: ConnId, bytes: &[u8]) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.out.push(bytes);
        self.total_queued += bytes.len();
        self.flush(registry, id);
    }

    /// Close once the queued replies are written.
    pub fn close_after_flush(&mut self, registry: &Registry, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.close_after_flush = true;
        }
        self.flush(registry, id);
    }

    /// Write queued bytes; arm WRITABLE while some remain; close when asked and done.
    pub fn flush(&mut self, registry: &Registry, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let mut failed = false;
        let mut written = 0;
        while conn.out.len() > 0 {
            match conn.stream.write(conn.out.pending()) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => {
                    conn.out.consume(n);
                    written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        self.total_queued = self.total_queued.saturating_sub(written);
        if failed || (conn.out.len() == 0 && conn.close_after_flush) {
            self.close(registry, id);
            return;
        }
        let want = conn.out.len() > 0;
        if conn.throttled && conn.out.len() < WBUF_LOW {
            conn.throttled = false;
            // Serve what it sent while we were not taking its requests.
            self.ready.insert(id);
        }
        if want != conn.writable_armed {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if registry
                .reregister(&mut conn.stream, Token(id), interest)
                .is_ok()
            {
                conn.writable_armed = want;
            }
        }
    }

    pub fn close(&mut self, registry: &Registry, id: ConnId) {
        if let Some(mut conn) = self.conns.remove(&id) {
            if conn.persistent {
                self.persistent -= 1;
            }
            self.total_queued = self.total_queued.saturating_sub(conn.out.len());
            self.ready.remove(&id);
            let _ = registry.deregister(&mut conn.stream);
        }
    }
}

/// Read from the socket until it would block, EOF, or one chunk beyond a
/// complete line or [`MAX_LINE`] (the rest waits: `unread` stays set).
fn fill(conn: &mut Conn) -> Result<(), ()> {
    let mut buf = [0u8; READ_CHUNK];
    let mut discarded = 0;
    loop {
        if conn.close_after_flush {
            if discarded == 16 {
                // Enough for one turn; the rest can wait in the kernel.
                return Ok(());
            }
            discarded += 1;
            // Discarding: we are about to close; drain what the peer sends.
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    conn.peer_eof = true;
                    conn.unread = false;
                    return Ok(());
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.unread = false;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(()),
            }
        }
        if conn.line_end().is_some() || conn.rbuf.len() > MAX_LINE {
            return Ok(());
        }
        match conn.stream.read(&mut buf) {
            Ok(0) => {
                conn.peer_eof = true;
                conn.unread = false;
                return Ok(());
            }
            Ok(n) => conn.rbuf.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.unread = false;
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(()),
        }
    }
}

/// Bind a unix listener whose file is created with `mode` (umask set for the
/// call: the file never exists with looser permissions).
pub(crate) fn bind_with_mode(path: &Path, mode: u32) -> io::Result<UnixListener> {
    let mask = nix::sys::stat::Mode::from_bits_truncate(!mode & 0o777);
    let old = nix::sys::stat::umask(mask);
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    listener
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let ours = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.ino {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_buffer_moves_an_offset_and_compacts_rarely() {
        let mut b = OutBuf::default();
        b.push(b"hello ");
        b.push(b"world");
        assert_eq!(b.pending(), b"hello world");
        b.consume(6);
        assert_eq!((b.pending(), b.pos), (&b"world"[..], 6));
        // The consumed prefix (6) is larger than what is left (5): compacted.
        b.push(b"!");
        assert_eq!((b.pending(), b.pos), (&b"world!"[..], 0));
        b.consume(6);
        assert_eq!(b.len(), 0);
        assert_eq!(b.pos, 0);
    }

    #[test]
    fn the_socket_file_is_created_with_its_final_mode() -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let d = crate::testutil::TempDir::new("ctlmode");
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let l = bind_with_mode(&d.join("s"), 0o600);
        nix::sys::stat::umask(old);
        let _l = l?;
        let m = std::fs::metadata(d.join("s"))?.permissions().mode() & 0o777;
        assert_eq!(m, 0o600);
        Ok(())
    }
}
