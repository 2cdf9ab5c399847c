//! `http_worker`: the tiny HTTP server the project runs as its worker in the demo,
//! the integration tests and the benchmarks.
//!
//! It speaks the child side of the einhorn protocol (BRIEF §2, §3): it serves every
//! socket the master passed (`EINHORN_FD_COUNT` / `EINHORN_FD_<n>`, or systemd's
//! `LISTEN_FDS`), acks readiness over `EINHORN_SOCK_FD` or `EINHORN_SOCK_PATH`, and
//! drains gracefully on its stop signal. Its answers expose what a test needs to see
//! from the outside: which worker answered, its slot index, its version, its
//! environment and the fds it inherited.
//!
//! It has to be light (a benchmark runs 1,000 of them on two cores), so it is one
//! thread around one mio poll: no thread per connection, slow requests are timers.
//!
//! Flags: `--no-ack`, `--ack-yaml`, `--ack-delay-ms N`, `--exit-after-ms N`
//! (exit at once: a crash), `--fail-after-ms N` (stop accepting, finish what is
//! in flight, then exit with `--exit-code`: dies unasked, but cleanly),
//! `--exit-code C`, `--ignore-stop`, `--version-tag TAG`, `--drain-idle-ms N`.
//!
//! Endpoints (GET or HEAD):
//! - any path not below: `pid=<pid> index=<EINHORN_CHILD_INDEX> version=<tag>\n`
//! - `/sleep?ms=N`: the same line, after N ms (an in-flight request for drain tests)
//! - `/env/NAME`: the value of env var NAME and `\n`, or 404 if unset
//! - `/fds`: the fds open when the process started (what the master passed), one
//!   line, space-separated; `/fds/live`: the fds open now
//! - `/stats`: `conns=<open connections> sleeping=<requests in /sleep> served=<responses>\n`
//! - `/grow?mb=N`: allocate N MiB more and keep it (a leak, for `max_rss` tests);
//!   answers the body line, so the caller learns which worker grew

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::time::{Duration, Instant};

use mio::event::Source;
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGQUIT, SIGTERM, SIGUSR2};
use signal_hook_mio::v1_0::Signals;

/// One log line on stderr in a single write(2): stderr is unbuffered and
/// `eprintln!` may write a line in pieces, which interleave when a pool of
/// workers shares the master's stderr.
macro_rules! log {
    ($($arg:tt)*) => {{
        let mut line = format!($($arg)*);
        line.push('\n');
        let _ = io::stderr().write_all(line.as_bytes());
    }};
}

const SIGNALS: Token = Token(0);
/// Listener n has token `LISTENER_BASE + n`; connection slot i has `CONN_BASE + i`.
const LISTENER_BASE: usize = 1;
const CONN_BASE: usize = 1024;
const MAX_LISTENERS: usize = CONN_BASE - LISTENER_BASE;
/// A request head larger than this gets 431 (and the connection is closed).
const MAX_HEAD: usize = 16 * 1024;
/// Request bodies are read and thrown away; larger ones get 413.
const MAX_BODY: usize = 1024 * 1024;
/// Longest `/sleep` accepted, so a typo cannot park a connection for days.
const MAX_SLEEP_MS: u64 = 600_000;
/// How long a draining worker keeps idle connections open (`--drain-idle-ms`).
/// A keep-alive client cannot know we are stopping: closing its idle connection
/// at once loses the request it may be writing at that very moment (it sees EOF
/// or a reset, and wrk counts a read error). During this grace a request that
/// arrives is served with `Connection: close`; the client then reconnects to a
/// live worker. Only connections still idle at its end are closed.
const DEFAULT_DRAIN_IDLE: Duration = Duration::from_millis(1000);
const USAGE: &str = "usage: http_worker [--no-ack] [--ack-yaml] [--ack-delay-ms N] \
[--exit-after-ms N] [--fail-after-ms N] [--exit-code C] [--ignore-stop] [--version-tag TAG] [--drain-idle-ms N]";

struct Options {
    ack: bool,
    ack_yaml: bool,
    ack_delay: Duration,
    exit_after: Option<Duration>,
    fail_after: Option<Duration>,
    exit_code: i32,
    ignore_stop: bool,
    version: String,
    drain_idle: Duration,
}

fn parse_args() -> Result<Options, String> {
    let mut opts = Options {
        ack: true,
        ack_yaml: false,
        ack_delay: Duration::ZERO,
        exit_after: None,
        fail_after: None,
        exit_code: 1,
        ignore_stop: false,
        drain_idle: DEFAULT_DRAIN_IDLE,
        version: std::env::var("WORKER_VERSION").unwrap_or_else(|_| "-".to_string()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--no-ack" => opts.ack = false,
            "--ack-yaml" => opts.ack_yaml = true,
            "--ignore-stop" => opts.ignore_stop = true,
            "--ack-delay-ms" => opts.ack_delay = Duration::from_millis(number(&arg, value(&arg)?)?),
            "--fail-after-ms" => {
                opts.fail_after = Some(Duration::from_millis(number(&arg, value(&arg)?)?))
            }
            "--exit-after-ms" => {
                opts.exit_after = Some(Duration::from_millis(number(&arg, value(&arg)?)?))
            }
            "--exit-code" => {
                let v = value(&arg)?;
                opts.exit_code = v
                    .parse()
                    .map_err(|_| format!("--exit-code: {v:?} is not an integer"))?;
            }
            "--version-tag" => opts.version = value(&arg)?,
            "--drain-idle-ms" => {
                opts.drain_idle = Duration::from_millis(number(&arg, value(&arg)?)?)
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(opts)
}

fn number(flag: &str, v: String) -> Result<u64, String> {
    v.parse()
        .map_err(|_| format!("{flag}: {v:?} is not a non-negative integer"))
}

/// The inherited listening sockets, from einhorn's variables or systemd's.
fn inherited_fds() -> Result<Vec<RawFd>, String> {
    if let Ok(count) = std::env::var("EINHORN_FD_COUNT") {
        let count: usize = count
            .trim()
            .parse()
            .map_err(|_| format!("EINHORN_FD_COUNT={count:?} is not a number"))?;
        return (0..count)
            .map(|n| {
                let name = format!("EINHORN_FD_{n}");
                let v = std::env::var(&name).map_err(|_| format!("{name} is not set"))?;
                v.trim()
                    .parse()
                    .map_err(|_| format!("{name}={v:?} is not an fd number"))
            })
            .collect();
    }
    if let Ok(count) = std::env::var("LISTEN_FDS") {
        // systemd semantics: the fds are meant for LISTEN_PID only, if it is set.
        if let Ok(pid) = std::env::var("LISTEN_PID") {
            if pid.trim() != std::process::id().to_string() {
                return Ok(Vec::new());
            }
        }
        let count: RawFd = count
            .trim()
            .parse()
            .map_err(|_| format!("LISTEN_FDS={count:?} is not a number"))?;
        return Ok((3..3 + count).collect());
    }
    Ok(Vec::new())
}

/// Open fd numbers of this process, from /proc/self/fd.
fn open_fds() -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let listed: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // The directory handle itself was one of them; it is closed now, so keep only
    // the fds that are still valid.
    let mut fds: Vec<RawFd> = listed
        .into_iter()
        // SAFETY: F_GETFD only queries the flags of an fd number; no memory involved.
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1)
        .collect();
    fds.sort_unstable();
    fds
}

fn fd_line(fds: &[RawFd]) -> String {
    let mut s = fds
        .iter()
        .map(|fd| fd.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    s.push('\n');
    s
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Takes ownership of an inherited listening socket, TCP or unix.
    fn adopt(fd: RawFd) -> Result<Listener, String> {
        // SAFETY: sockaddr_storage is plain data; getsockname writes at most `len` bytes.
        let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: addr/len point to a live, correctly sized sockaddr_storage.
        let rc = unsafe { libc::getsockname(fd, (&raw mut addr).cast(), &mut len) };
        if rc != 0 {
            return Err(format!(
                "fd {fd} is not a socket: {}",
                io::Error::last_os_error()
            ));
        }
        // O_NONBLOCK is set on the open file description, which this process shares
        // with the master and every other worker of the pool. That is fine here: every
        // worker of a pool runs this same program and wants non-blocking accept (a
        // worker that loses the race for a connection gets WouldBlock, not a hang);
        // the master never accepts on these sockets.
        match i32::from(addr.ss_family) {
            libc::AF_UNIX => {
                // SAFETY: the master handed this fd to us; nothing else in this
                // process owns it, so the listener becomes its only owner.
                let std = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
                std.set_nonblocking(true)
                    .map_err(|e| format!("fd {fd}: cannot set O_NONBLOCK: {e}"))?;
                Ok(Listener::Unix(UnixListener::from_std(std)))
            }
            libc::AF_INET | libc::AF_INET6 => {
                // SAFETY: as above, sole owner of an inherited fd.
                let std = unsafe { std::net::TcpListener::from_raw_fd(fd) };
                std.set_nonblocking(true)
                    .map_err(|e| format!("fd {fd}: cannot set O_NONBLOCK: {e}"))?;
                Ok(Listener::Tcp(TcpListener::from_std(std)))
            }
            family => Err(format!("fd {fd}: unsupported socket family {family}")),
        }
    }

    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
        }
    }

    fn source(&mut self) -> &mut dyn Source {
        match self {
            Listener::Tcp(l) => l,
            Listener::Unix(l) => l,
        }
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn source(&mut self) -> &mut dyn Source {
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
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for (the rest of) a request.
    Reading,
    /// A `/sleep` request is parked on a timer; the response is not built yet.
    Sleeping { keep_alive: bool, head: bool },
    /// A response is in `wbuf`.
    Writing,
}

struct Conn {
    stream: Stream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    state: State,
    close_after_write: bool,
    peer_eof: bool,
    /// Distinguishes this connection from a later one in the same slot, so a
    /// timer left behind by a closed connection is ignored.
    generation: u64,
}

impl Conn {
    /// Reads everything the socket has (edge-triggered: until WouldBlock), up to
    /// what one request may hold. Returns Err on a socket error.
    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        while !self.peer_eof && self.rbuf.len() < MAX_HEAD + MAX_BODY {
            match self.stream.read(&mut chunk) {
                Ok(0) => self.peer_eof = true,
                Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes what it can; Ok(true) once the whole response is out.
    fn flush(&mut self) -> io::Result<bool> {
        while self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        Ok(true)
    }
}

/// A parsed request head (the body, if any, is skipped).
struct Request {
    method: String,
    target: String,
    keep_alive: bool,
    /// Bytes of `rbuf` this request used, head and body.
    len: usize,
}

enum Parsed {
    Incomplete,
    /// Answer with this status and close.
    Bad(u16),
    Done(Request),
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Request line: `METHOD SP TARGET SP HTTP/1.x`. Returns the keep-alive default.
fn parse_request_line(line: &str) -> Option<(String, String, bool)> {
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !is_token(method) || !target.starts_with('/') {
        return None;
    }
    if target.bytes().any(|b| !b.is_ascii_graphic()) {
        return None;
    }
    let keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return None,
    };
    Some((method.to_string(), target.to_string(), keep_alive))
}

fn parse(buf: &[u8]) -> Parsed {
    let Some(head_end) = find_head_end(buf) else {
        // Reject garbage as soon as the first line shows it, rather than waiting
        // for a blank line that may never come.
        let first = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => &buf[..i],
            None => buf,
        };
        let valid = first
            .iter()
            .all(|&b| b == b'\r' || (0x20..0x7f).contains(&b));
        let complete = first.len() < buf.len();
        if !valid {
            return Parsed::Bad(400);
        }
        if complete {
            let line = String::from_utf8_lossy(first);
            if parse_request_line(line.trim_end_matches('\r')).is_none() {
                return Parsed::Bad(400);
            }
        }
        return if buf.len() > MAX_HEAD {
            Parsed::Bad(431)
        } else {
            Parsed::Incomplete
        };
    };
    if head_end > MAX_HEAD {
        return Parsed::Bad(431);
    }
    let Ok(head) = std::str::from_utf8(&buf[..head_end]) else {
        return Parsed::Bad(400);
    };
    let mut lines = head.split('\n').map(|l| l.trim_end_matches('\r'));
    let Some((method, target, mut keep_alive)) = lines.next().and_then(parse_request_line) else {
        return Parsed::Bad(400);
    };
    let mut body_len = 0usize;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Parsed::Bad(400);
        };
        if !is_token(name) {
            return Parsed::Bad(400);
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(str::trim) {
                if option.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if option.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            match value.parse::<usize>() {
                Ok(n) if n > MAX_BODY => return Parsed::Bad(413),
                Ok(n) => body_len = n,
                Err(_) => return Parsed::Bad(400),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Bad(501);
        }
    }
    if buf.len() < head_end + body_len {
        return Parsed::Incomplete;
    }
    Parsed::Done(Request {
        method,
        target,
        keep_alive,
        len: head_end + body_len,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        _ => "Unknown",
    }
}

/// What to do with a connection after running it.
enum Next {
    Keep,
    Close,
}

struct Worker {
    poll: Poll,
    listeners: Vec<Option<Listener>>,
    /// Connection slots; a slot is `None` when free, or while its connection is
    /// taken out to be driven (so the rest of the worker stays borrowable).
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    live: usize,
    /// Min-heap of (deadline, slot, generation) for `/sleep` requests; entries of
    /// closed connections are skipped when they fire (lazy cancellation).
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    next_generation: u64,
    draining: bool,
    /// While draining: idle connections stay open until then (see
    /// [`DEFAULT_DRAIN_IDLE`]); `None` once it has passed.
    drain_idle_until: Option<Instant>,
    drain_idle: Duration,
    sleeping: usize,
    served: u64,
    /// What `/grow` allocated (kept for the life of the worker).
    leak: Vec<Vec<u8>>,
    pid: u32,
    body_line: String,
    fds_at_start: String,
}

impl Worker {
    fn accept_all(&mut self, n: usize) {
        loop {
            let Some(listener) = self.listeners.get(n).and_then(Option::as_ref) else {
                return;
            };
            match listener.accept() {
                Ok(stream) => self.add_conn(stream),
                // Another worker may have taken the connection: that is normal.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // EMFILE and friends: the connection stays in the backlog for
                    // another worker, or for us at the next readiness edge.
                    log!("http_worker pid={} accept failed: {e}", self.pid);
                    return;
                }
            }
        }
    }

    fn add_conn(&mut self, stream: Stream) {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        self.next_generation += 1;
        let mut conn = Conn {
            stream,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
            state: State::Reading,
            close_after_write: false,
            peer_eof: false,
            generation: self.next_generation,
        };
        // Both interests, edge-triggered: registration reports the socket writable
        // at once, and that first event drives the first read too.
        let interest = Interest::READABLE | Interest::WRITABLE;
        let token = Token(CONN_BASE + slot);
        if let Err(e) = self
            .poll
            .registry()
            .register(conn.stream.source(), token, interest)
        {
            log!(
                "http_worker pid={} cannot register connection: {e}",
                self.pid
            );
            self.free.push(slot);
            return;
        }
        self.conns[slot] = Some(conn);
        self.live += 1;
    }

    /// Runs one connection as far as it goes without blocking.
    fn drive(&mut self, slot: usize) {
        let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        match self.step(slot, &mut conn) {
            Next::Keep => self.conns[slot] = Some(conn),
            Next::Close => self.close(slot, conn),
        }
    }

    fn close(&mut self, slot: usize, mut conn: Conn) {
        let _ = self.poll.registry().deregister(conn.stream.source());
        if matches!(conn.state, State::Sleeping { .. }) {
            self.sleeping -= 1;
        }
        self.free.push(slot);
        self.live -= 1;
        // `conn` drops here and its socket closes: a FIN, so the peer reads a
        // clean EOF (we never close with unread request bytes we know of).
    }

    fn step(&mut self, slot: usize, conn: &mut Conn) -> Next {
        loop {
            if !conn.wbuf.is_empty() {
                match conn.flush() {
                    Ok(true) if conn.close_after_write => return Next::Close,
                    Ok(true) => conn.state = State::Reading,
                    Ok(false) => return Next::Keep,
                    Err(_) => return Next::Close,
                }
            }
            if conn.state != State::Reading {
                return Next::Keep;
            }
            if conn.fill().is_err() {
                return Next::Close;
            }
            // Blank lines before a request line are to be ignored (RFC 9112 §2.2);
            // some clients send a stray CRLF after a body.
            let blank = conn
                .rbuf
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            conn.rbuf.drain(..blank);
            if conn.rbuf.is_empty()
                && (conn.peer_eof || (self.draining && self.drain_idle_until.is_none()))
            {
                // Idle: the client hung up, or we are draining, nothing is in
                // flight and the idle grace is over.
                return Next::Close;
            }
            match parse(&conn.rbuf) {
                Parsed::Incomplete if conn.peer_eof => return Next::Close,
                Parsed::Incomplete => return Next::Keep,
                Parsed::Bad(status) => {
                    let body = format!("{}\n", reason(status));
                    self.respond(conn, status, &body, false, false);
                }
                Parsed::Done(req) => {
                    conn.rbuf.drain(..req.len);
                    self.handle(slot, conn, req);
                }
            }
        }
    }

    fn respond(&mut self, conn: &mut Conn, status: u16, body: &str, keep_alive: bool, head: bool) {
        let keep_alive = keep_alive && !self.draining;
        let connection = if keep_alive { "keep-alive" } else { "close" };
        conn.wbuf.clear();
        conn.wpos = 0;
        let _ = write!(
            conn.wbuf,
            "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: {connection}\r\n\r\n",
            reason(status),
            body.len()
        );
        if !head {
            conn.wbuf.extend_from_slice(body.as_bytes());
        }
        conn.close_after_write = !keep_alive;
        conn.state = State::Writing;
        self.served += 1;
    }

    fn handle(&mut self, slot: usize, conn: &mut Conn, req: Request) {
        let head = req.method == "HEAD";
        let ka = req.keep_alive;
        if req.method != "GET" && !head {
            self.respond(conn, 405, "only GET and HEAD\n", ka, false);
            return;
        }
        let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
        if path == "/sleep" {
            let ms = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("ms="))
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|&ms| ms <= MAX_SLEEP_MS);
            match ms {
                Some(ms) => {
                    conn.state = State::Sleeping {
                        keep_alive: ka,
                        head,
                    };
                    self.sleeping += 1;
                    let at = Instant::now() + Duration::from_millis(ms);
                    self.timers.push(Reverse((at, slot, conn.generation)));
                }
                None => {
                    let body = format!("/sleep needs ms=0..{MAX_SLEEP_MS}\n");
                    self.respond(conn, 400, &body, ka, head);
                }
            }
            return;
        }
        if path == "/grow" {
            let mb = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("mb="))
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|&mb| mb <= 1024);
            let (status, body) = match mb {
                Some(mb) => {
                    // Touched, so it is resident, not just reserved.
                    self.leak.push(vec![1u8; mb << 20]);
                    (200, self.body_line.clone())
                }
                None => (400, "/grow needs mb=0..1024\n".to_string()),
            };
            self.respond(conn, status, &body, ka, head);
            return;
        }
        let (status, body) = match path {
            "/fds" => (200, self.fds_at_start.clone()),
            "/fds/live" => (200, fd_line(&open_fds())),
            "/stats" => (
                200,
                // The request being answered is counted in `conns`, not in `served`.
                format!(
                    "conns={} sleeping={} served={}\n",
                    self.live, self.sleeping, self.served
                ),
            ),
            _ => match path.strip_prefix("/env/") {
                Some(name) => match std::env::var_os(name).filter(|_| !name.is_empty()) {
                    Some(value) => (200, format!("{}\n", value.to_string_lossy())),
                    None => (404, format!("{name} is not set\n")),
                },
                None => (200, self.body_line.clone()),
            },
        };
        self.respond(conn, status, &body, ka, head);
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((at, slot, generation))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            if let (true, State::Sleeping { keep_alive, head }) =
                (conn.generation == generation, conn.state)
            {
                self.sleeping -= 1;
                let body = self.body_line.clone();
                self.respond(&mut conn, 200, &body, keep_alive, head);
                match self.step(slot, &mut conn) {
                    Next::Keep => self.conns[slot] = Some(conn),
                    Next::Close => self.close(slot, conn),
                }
            } else {
                self.conns[slot] = Some(conn);
            }
        }
    }

    fn begin_drain(&mut self, signal: &str) {
        if self.draining {
            return;
        }
        self.draining = true;
        self.drain_idle_until =
            (!self.drain_idle.is_zero()).then(|| Instant::now() + self.drain_idle);
        for listener in self.listeners.iter_mut() {
            if let Some(mut l) = listener.take() {
                let _ = self.poll.registry().deregister(l.source());
                // `l` drops here: our copy of the fd closes. The socket itself
                // lives on in the master and the other workers.
            }
        }
        log!(
            "http_worker pid={} stopping on {signal}: listeners closed, {} connection(s) open",
            self.pid,
            self.live
        );
        // Driving every connection once in draining mode marks those in flight to
        // end with `Connection: close` (and closes the idle ones at once when
        // there is no idle grace).
        for slot in 0..self.conns.len() {
            if let Some(conn) = self.conns[slot].as_mut() {
                conn.close_after_write = true;
            }
            self.drive(slot);
        }
    }
}

impl Worker {
    /// The drain's idle grace is over: a last read on every connection, then the
    /// ones with nothing in flight are closed.
    fn end_idle_grace(&mut self) {
        self.drain_idle_until = None;
        for slot in 0..self.conns.len() {
            if self.conns[slot]
                .as_ref()
                .is_some_and(|c| c.state == State::Reading)
            {
                self.drive(slot);
            }
        }
    }
}

fn ack_line(pid: u32, yaml: bool) -> String {
    if yaml {
        // einhorn's own transport: a YAML document with `%` and newlines escaped.
        format!("---%0Acommand: worker:ack%0Apid: {pid}%0A\n")
    } else {
        format!("{{\"command\":\"worker:ack\",\"pid\":{pid}}}\n")
    }
}

/// Where the ack goes, as the master told us (BRIEF §2: `-g` fd first).
enum AckTo {
    Fd(RawFd),
    Path(String),
    Nowhere,
}

fn ack_target() -> AckTo {
    if let Some(fd) = std::env::var("EINHORN_SOCK_FD")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        AckTo::Fd(fd)
    } else if let Ok(path) = std::env::var("EINHORN_SOCK_PATH") {
        AckTo::Path(path)
    } else {
        AckTo::Nowhere
    }
}

/// Writes a whole line to a possibly non-blocking fd, waiting at most 5 s.
fn write_line_fd(fd: RawFd, line: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut done = 0;
    while done < line.len() {
        let rest = &line[done..];
        // SAFETY: rest is a live byte slice; write reads at most rest.len() bytes.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n >= 0 {
            done += n as usize;
            continue;
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(5000) as i32) };
            }
            _ => return Err(err),
        }
    }
    Ok(())
}

fn send_ack(to: &AckTo, pid: u32, yaml: bool) -> Result<(), String> {
    let line = ack_line(pid, yaml);
    match to {
        AckTo::Fd(fd) => {
            let res = write_line_fd(*fd, line.as_bytes());
            // The master answers nothing to an ack and closes its side; our end
            // has no further use.
            // SAFETY: the fd was given to us for this purpose; nothing else uses it.
            unsafe { libc::close(*fd) };
            res.map_err(|e| format!("EINHORN_SOCK_FD={fd}: {e}"))
        }
        AckTo::Path(path) => {
            let mut s = std::os::unix::net::UnixStream::connect(path)
                .map_err(|e| format!("connect to EINHORN_SOCK_PATH={path}: {e}"))?;
            s.set_write_timeout(Some(Duration::from_secs(5)))
                .and_then(|()| s.write_all(line.as_bytes()))
                .map_err(|e| format!("write to EINHORN_SOCK_PATH={path}: {e}"))
        }
        AckTo::Nowhere => Ok(()),
    }
}

fn main() {
    // First thing, before this process opens anything: what the master passed.
    let fds_at_start = fd_line(&open_fds());
    let pid = std::process::id();
    let opts = match parse_args() {
        Ok(opts) => opts,
        Err(e) => {
            log!("http_worker: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    match run(opts, pid, fds_at_start) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            log!("http_worker pid={pid}: {e}");
            std::process::exit(2);
        }
    }
}

fn run(opts: Options, pid: u32, fds_at_start: String) -> Result<i32, String> {
    let started = Instant::now();
    let fds = inherited_fds()?;
    if fds.len() > MAX_LISTENERS {
        return Err(format!(
            "{} sockets passed, at most {MAX_LISTENERS} supported",
            fds.len()
        ));
    }
    let poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
    let mut listeners = Vec::with_capacity(fds.len());
    for (n, &fd) in fds.iter().enumerate() {
        let mut l = Listener::adopt(fd)?;
        poll.registry()
            .register(l.source(), Token(LISTENER_BASE + n), Interest::READABLE)
            .map_err(|e| format!("cannot register fd {fd}: {e}"))?;
        listeners.push(Some(l));
    }
    let mut signals = Signals::new([SIGUSR2, SIGTERM, SIGINT, SIGQUIT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .map_err(|e| format!("cannot register signals: {e}"))?;

    let index = std::env::var("EINHORN_CHILD_INDEX").unwrap_or_else(|_| "-".to_string());
    let mut w = Worker {
        poll,
        listeners,
        conns: Vec::new(),
        free: Vec::new(),
        live: 0,
        timers: BinaryHeap::new(),
        next_generation: 0,
        draining: false,
        drain_idle_until: None,
        drain_idle: opts.drain_idle,
        sleeping: 0,
        served: 0,
        leak: Vec::new(),
        pid,
        body_line: format!("pid={pid} index={index} version={}\n", opts.version),
        fds_at_start,
    };

    let ack_to = ack_target();
    let ack_desc = match (&ack_to, opts.ack) {
        (_, false) => "disabled".to_string(),
        (AckTo::Fd(fd), true) => format!("fd:{fd}"),
        (AckTo::Path(p), true) => format!("path:{p}"),
        (AckTo::Nowhere, true) => "none".to_string(),
    };
    let encoding = if opts.ack_yaml { "yaml" } else { "json" };
    log!("http_worker pid={pid} fds={fds:?} ack={ack_desc} ({encoding}) index={index}");
    let mut ack_at =
        (opts.ack && !matches!(ack_to, AckTo::Nowhere)).then(|| started + opts.ack_delay);
    let exit_at = opts.exit_after.map(|d| started + d);
    let mut fail_at = opts.fail_after.map(|d| started + d);
    let mut drained_status = 0;

    let mut events = Events::with_capacity(256);
    loop {
        let now = Instant::now();
        if ack_at.is_some_and(|at| at <= now) {
            ack_at = None;
            if let Err(e) = send_ack(&ack_to, pid, opts.ack_yaml) {
                log!("http_worker pid={pid} ack failed (carrying on): {e}");
            }
        }
        if exit_at.is_some_and(|at| at <= now) {
            log!(
                "http_worker pid={pid} exiting with {} (--exit-after-ms)",
                opts.exit_code
            );
            return Ok(opts.exit_code);
        }
        if fail_at.is_some_and(|at| at <= now) {
            fail_at = None;
            drained_status = opts.exit_code;
            w.begin_drain("--fail-after-ms");
        }
        w.fire_timers(now);
        if w.drain_idle_until.is_some_and(|at| at <= now) {
            w.end_idle_grace();
        }
        if w.draining && w.live == 0 {
            log!("http_worker pid={pid} drained, exiting {drained_status}");
            return Ok(drained_status);
        }
        let deadline = [
            w.timers.peek().map(|Reverse((at, _, _))| *at),
            w.drain_idle_until,
            ack_at,
            exit_at,
            fail_at,
        ]
        .into_iter()
        .flatten()
        .min();
        // Round up to whole milliseconds so a timer never wakes us a hair early
        // and spins.
        let timeout = deadline.map(|at| {
            let d = at.saturating_duration_since(Instant::now());
            Duration::from_millis(
                d.as_millis() as u64 + u64::from(d.subsec_nanos() % 1_000_000 != 0),
            )
        });
        match w.poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("poll failed: {e}")),
        }
        for event in events.iter() {
            match event.token() {
                SIGNALS => {
                    for sig in signals.pending() {
                        let name = match sig {
                            SIGUSR2 => "SIGUSR2",
                            SIGTERM => "SIGTERM",
                            SIGINT => "SIGINT",
                            _ => "SIGQUIT",
                        };
                        if sig == SIGQUIT {
                            log!("http_worker pid={pid} SIGQUIT: exiting at once");
                            return Ok(0);
                        }
                        if opts.ignore_stop {
                            log!(
                                "http_worker pid={pid} ignoring stop signal {name} (--ignore-stop)"
                            );
                        } else {
                            w.begin_drain(name);
                        }
                    }
                }
                Token(t) if t >= CONN_BASE => w.drive(t - CONN_BASE),
                Token(t) => w.accept_all(t - LISTENER_BASE),
            }
        }
    }
}
