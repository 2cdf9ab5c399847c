//! The control socket's transport: a unix stream listener on the mio loop and its
//! connections, each with its own read and write buffer, so a slow or stuck client
//! never blocks the loop or another client. This layer frames lines (at most
//! [`MAX_LINE`] bytes) and moves bytes; what a line means is decided by the master.
//!
//! Startup safety: a live master already on the path is detected by connecting to
//! it (and named by its pid, from SO_PEERCRED) and refused; a stale socket file left
//! by a killed master is replaced. On exit the file is removed only if it is still
//! ours.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use super::protocol::MAX_LINE;

/// Client connections open at once; more are refused with an error reply, so a
/// misbehaving tool cannot exhaust the master's fds.
pub const MAX_CLIENTS: usize = 1024;

/// Tokens at and above this value are control connections.
pub const CONN_BASE: usize = 1 << 20;

pub type ConnId = usize;

/// Replies queued for a client beyond this stop the master reading its requests
/// (backpressure: its writes block) until it has read them down to
/// [`WBUF_LOW`]. Without it a client that pipelines requests and never reads
/// makes the master buffer replies without bound.
pub const WBUF_HIGH: usize = 1024 * 1024;
/// Queued replies below this resume reading from a throttled client.
pub const WBUF_LOW: usize = 256 * 1024;
/// At most this many lines are taken from one connection per loop turn (checked
/// per 4 KiB read), so one pipelining client can neither starve the others nor
/// queue much more than [`WBUF_HIGH`] before it is throttled.
const LINES_PER_TURN: usize = 64;

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

struct Conn {
    stream: UnixStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Close once everything queued is written (after an over-long line, or a
    /// worker:ack).
    close_after_flush: bool,
    /// WRITABLE interest is registered (replies are queued).
    writable_armed: bool,
    /// Not reading: too many replies queued (see [`WBUF_HIGH`]).
    throttled: bool,
    uid: Option<u32>,
    pid: Option<i32>,
    /// A worker's `-g` channel (EINHORN_SOCK_FD): kept open after worker:ack,
    /// as einhorn does, so the worker can keep using it.
    persistent: bool,
    /// The peer shut down its writing side.
    peer_eof: bool,
}

/// What a readable connection produced.
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
        // Create it private, then widen to `mode`: no window where others can connect.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let listener = UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let listener = listener.map_err(io("bind"))?;
        // std listens with a small backlog; a thousand workers acking at once
        // need more. Linux lets listen() be called again to change it.
        // SAFETY: plain syscall on a socket we own.
        unsafe {
            libc::listen(listener.as_raw_fd(), 4096);
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io("chmod"))?;
        let ino = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
            ino,
            conns: HashMap::new(),
            persistent: 0,
            next: CONN_BASE,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.listener, token, Interest::READABLE)
    }

    /// Accept every pending connection; returns the new ids.
    /// Accept pending connections. The flag is true when accepting failed
    /// (EMFILE, ENFILE, ENOBUFS): clients may still be queued, and with
    /// edge-triggered epoll nothing reports them again, so the caller retries
    /// on a timer.
    pub fn accept(&mut self, registry: &Registry) -> (Vec<ConnId>, bool) {
        let mut ids = Vec::new();
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) if self.clients() >= MAX_CLIENTS => {
                    // Say why instead of leaving the client hanging; best effort,
                    // the socket is fresh so a short reply fits its buffer.
                    log::warn!("control: refused a client: {MAX_CLIENTS} connections already open");
                    let reply = super::protocol::Reply::failure(
                        format!("too many control connections ({MAX_CLIENTS}); try again later"),
                        None,
                    );
                    let _ = stream.write(&super::protocol::encode(
                        &reply,
                        super::protocol::Encoding::Json,
                    ));
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
                wbuf: Vec::new(),
                close_after_flush: false,
                writable_armed: false,
                throttled: false,
                uid: cred.map(|c| c.uid()),
                pid: cred.map(|c| c.pid()),
                persistent: false,
                peer_eof: false,
            },
        );
        Ok(id)
    }

    /// Mark a connection as a worker's persistent channel (`-g`).
    pub fn set_persistent(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id) {
            if !c.persistent {
                c.persistent = true;
                self.persistent += 1;
            }
        }
    }

    /// The peer has shut down its writing side (it only waits for replies).
    pub fn peer_eof(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_some_and(|c| c.peer_eof)
    }

    pub fn is_persistent(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_some_and(|c| c.persistent)
    }

    /// Peer uid and pid (SO_PEERCRED) of a connection.
    pub fn peer(&self, id: ConnId) -> (Option<u32>, Option<i32>) {
        self.conns.get(&id).map_or((None, None), |c| (c.uid, c.pid))
    }

    pub fn is_open(&self, id: ConnId) -> bool {
        self.conns.contains_key(&id)
    }

    /// Read what is available and split it into lines. The flag is true when the
    /// peer has shut down its writing side (EOF): the master decides when to close,
    /// since a client that half-closed may still wait for streamed replies.
    /// Returns `None` if the connection failed and is gone.
    pub fn read(&mut self, registry: &Registry, id: ConnId) -> Option<(Vec<Input>, bool)> {
        let conn = self.conns.get_mut(&id)?;
        let mut out = Vec::new();
        if conn.wbuf.len() >= WBUF_HIGH && !conn.close_after_flush {
            // Leave its requests in the kernel; `flush` resumes us.
            conn.throttled = true;
            return Some((out, false));
        }
        let mut buf = [0u8; 4 * 1024];
        let mut reads = 0;
        loop {
            reads += 1;
            // Bounded by reads too: after an over-long line the bytes are
            // discarded, so a client streaming garbage produces no lines and
            // would otherwise keep the loop here as long as it writes.
            if out.len() >= LINES_PER_TURN || reads > LINES_PER_TURN {
                // More may be waiting in the socket (`rbuf` holds at most an
                // incomplete line). Re-registering makes epoll
                // report it again on the next turn, after other clients.
                let interest = if conn.writable_armed {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                if registry
                    .reregister(&mut conn.stream, Token(id), interest)
                    .is_err()
                {
                    self.close(registry, id);
                    return None;
                }
                return Some((out, false));
            }
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    conn.peer_eof = true;
                    return Some((out, true));
                }
                Ok(n) => {
                    if conn.close_after_flush {
                        continue; // discarding: we are about to close
                    }
                    conn.rbuf.extend_from_slice(&buf[..n]);
                    let mut start = 0;
                    while let Some(pos) = conn.rbuf[start..].iter().position(|&b| b == b'\n') {
                        let line = &conn.rbuf[start..start + pos];
                        if line.len() > MAX_LINE {
                            break;
                        }
                        out.push(Input::Line(line.to_vec()));
                        start += pos + 1;
                    }
                    conn.rbuf.drain(..start);
                    if conn.rbuf.len() > MAX_LINE {
                        out.push(Input::TooLong);
                        conn.close_after_flush = true;
                        conn.rbuf = Vec::new();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some((out, false)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(registry, id);
                    return None;
                }
            }
        }
    }

    /// Queue bytes for a connection and write what the socket takes now.
    pub fn write(&mut self, registry: &Registry, id: ConnId, bytes: &[u8]) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.wbuf.extend_from_slice(bytes);
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
        while !conn.wbuf.is_empty() {
            match conn.stream.write(&conn.wbuf) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => {
                    conn.wbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed || (conn.wbuf.is_empty() && conn.close_after_flush) {
            self.close(registry, id);
            return;
        }
        let want = !conn.wbuf.is_empty();
        let resume = conn.throttled && conn.wbuf.len() < WBUF_LOW;
        if resume {
            // Re-registering re-arms the edge: requests that arrived while we
            // were not reading are reported on the next turn.
            conn.throttled = false;
        }
        if want != conn.writable_armed || resume {
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
            let _ = registry.deregister(&mut conn.stream);
        }
    }
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
