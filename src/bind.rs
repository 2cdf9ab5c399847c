//! Address specs (`127.0.0.1:8080,r,n`, `[::1]:80`, `unix:/run/app.sock`) and the
//! listening sockets made from them.
//!
//! The master binds every socket once ([`bind`]) and keeps the
//! [`BoundSocket`] for as long as any pool uses it, across worker generations and
//! config reloads ([`BoundSocket::key`] tells a reload which sockets to keep). Workers
//! never bind: they inherit these fds and call `accept()` themselves, which is what
//! makes rolling restarts lossless.
//!
//! File-descriptor rules, and why:
//!
//! - Every socket is close-on-exec in the master (socket2 creates them with
//!   `SOCK_CLOEXEC`). Only the spawn code clears the flag, in the child between fork
//!   and exec, so a listener never leaks into an unrelated child (a hook script, a
//!   second pool that was not given it).
//! - Listeners are non-blocking unless the spec says `b` / `blocking`. `O_NONBLOCK`
//!   is set here, once, and it lives on the open file description that the master
//!   and *every* worker share: it is not per-process. Non-blocking is the default
//!   because it is what einhorn really hands out (Ruby 3 creates every socket
//!   non-blocking, so einhorn's listeners carry O_NONBLOCK with or without its `n`)
//!   and what servers that poll, then accept, need: with a blocking listener a
//!   draining nginx or Python socketserver that lost the race for a connection to a
//!   sibling sits in accept() until SIGKILL (docs/workers.md). `n` / `o_nonblock` is
//!   still accepted and changes nothing; `b` is for workers that call accept() in a
//!   loop and expect it to block. A worker that flips the flag itself (Go and Node
//!   do, to non-blocking) flips it for all of its siblings. The master never
//!   accepts on these sockets.
//! - `nodelay` sets TCP_NODELAY on the listener: Linux copies it to every accepted
//!   socket, for servers that never set it on their connections.
//! - A unix socket file is created by us and removed by us: a stale file left by a
//!   killed master is replaced, a live one is refused, and anything that is not a
//!   socket is never removed. On drop the file is unlinked only if it is still the
//!   same inode we created (a newer master may have replaced it).

use std::fs;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::{BindAddr, BindSpec, Family};

/// Listen backlog when a spec has no `backlog=N`.
pub const DEFAULT_BACKLOG: i32 = 1024;

/// A listening socket could not be made. Every variant names the address as the
/// operator wrote it (plus the resolved address when they differ). `Display` is
/// self-contained: it already includes the OS error, which is also `source()`.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot bind {addr}: host lookup failed: {source}")]
    Resolve {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot bind {addr}: the host has no {family} address")]
    NoAddress { addr: String, family: &'static str },
    #[error("{addr} is already in use (EADDRINUSE): another socket is listening there")]
    InUse { addr: String },
    #[error("cannot bind {addr}: permission denied{hint}")]
    PermissionDenied {
        addr: String,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot bind {addr}: {path} is in use by a live process (is another master running?)")]
    UnixInUse { addr: String, path: PathBuf },
    #[error("cannot bind {addr}: {path} exists and is not a socket; refusing to remove it")]
    NotASocket { addr: String, path: PathBuf },
    #[error("cannot bind {addr}: {op}: {source}")]
    Io {
        addr: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl BindError {
    /// How useful this error is to the operator when several addresses of one host
    /// failed: "in use" and "permission denied" say what to fix, the rest less so.
    fn rank(&self) -> u8 {
        match self {
            BindError::InUse { .. } => 2,
            BindError::PermissionDenied { .. } => 1,
            _ => 0,
        }
    }
}

/// Identity of the unix socket file we created, so that we remove only that file.
#[derive(Debug)]
struct UnixOwner {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// A socket as data, to hand it to a re-executed master (the fd stays open
/// across the exec; see src/master/reexec.rs).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SocketParts {
    pub fd: RawFd,
    pub spec: BindSpec,
    pub local_addr: String,
    /// A unix socket's file we created: path, device, inode.
    pub unix_owner: Option<(PathBuf, u64, u64)>,
}

/// A bound, listening socket owned by the master. Close-on-exec; see the module doc.
#[derive(Debug)]
pub struct BoundSocket {
    spec: BindSpec,
    fd: OwnedFd,
    local_addr: String,
    unix_owner: Option<UnixOwner>,
}

impl BoundSocket {
    /// The address actually bound: `127.0.0.1:41234` (the real port when the spec
    /// said 0), `[::1]:80`, or `unix:/path`.
    pub fn local_addr(&self) -> &str {
        &self.local_addr
    }

    /// Identity across config reloads: two specs with the same key share a socket.
    pub fn key(&self) -> String {
        self.spec.addr_text()
    }

    /// Adopt a listening socket handed to us by a service manager (systemd socket
    /// activation, see `crate::systemd::activation`) for `spec`. The fd is made
    /// close-on-exec like every master socket; O_NONBLOCK is set as the spec says
    /// (it is shared with the manager's copy). A unix socket file belongs to the
    /// manager: it is never removed by us.
    pub fn from_inherited(spec: &BindSpec, fd: OwnedFd) -> Result<BoundSocket, BindError> {
        let addr = spec.addr_text();
        let io = |op: &'static str| {
            let addr = addr.clone();
            move |source| BindError::Io { addr, op, source }
        };
        let sock = Socket::from(fd);
        sock.set_cloexec(true).map_err(io("set FD_CLOEXEC"))?;
        if !sock.is_listener().map_err(io("check SO_ACCEPTCONN"))? {
            return Err(io("adopt inherited fd")(io::Error::other(
                "not a listening socket",
            )));
        }
        sock.set_nonblocking(spec.nonblock)
            .map_err(io("set O_NONBLOCK"))?;
        if spec.nodelay {
            sock.set_tcp_nodelay(true).map_err(io("set TCP_NODELAY"))?;
        }
        let local = sock.local_addr().map_err(io("getsockname"))?;
        let local_addr = match (local.as_socket(), local.as_pathname()) {
            (Some(a), _) => a.to_string(),
            (None, Some(p)) => format!("unix:{}", p.display()),
            (None, None) => addr.clone(),
        };
        Ok(BoundSocket {
            spec: spec.clone(),
            fd: OwnedFd::from(sock),
            local_addr,
            unix_owner: None,
        })
    }

    /// The socket as data, without giving it up.
    pub fn parts(&self) -> SocketParts {
        SocketParts {
            fd: self.fd.as_raw_fd(),
            spec: self.spec.clone(),
            local_addr: self.local_addr.clone(),
            unix_owner: self
                .unix_owner
                .as_ref()
                .map(|o| (o.path.clone(), o.dev, o.ino)),
        }
    }

    /// The socket a previous image of this master held at `parts.fd`.
    ///
    /// # Safety
    /// `parts.fd` must be an open listening socket this process owns and that
    /// nothing else will close (each fd is taken once).
    pub unsafe fn from_parts(parts: SocketParts) -> BoundSocket {
        // SAFETY: the caller hands over the fd (see above).
        let fd = unsafe { OwnedFd::from_raw_fd(parts.fd) };
        BoundSocket {
            spec: parts.spec,
            fd,
            local_addr: parts.local_addr,
            unix_owner: parts
                .unix_owner
                .map(|(path, dev, ino)| UnixOwner { path, dev, ino }),
        }
    }

    /// A second handle on the same listening socket (dup, close-on-exec) that
    /// never unlinks a unix socket file: the original stays its owner.
    pub fn try_clone_disowned(&self) -> io::Result<BoundSocket> {
        Ok(BoundSocket {
            spec: self.spec.clone(),
            fd: self.fd.try_clone()?,
            local_addr: self.local_addr.clone(),
            unix_owner: None,
        })
    }
}

impl AsRawFd for BoundSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for BoundSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        let Some(owner) = &self.unix_owner else {
            return;
        };
        // While our socket is open it pins its inode, so (dev, ino) cannot have been
        // reused: a match really is our file, anything else belongs to someone else.
        match fs::symlink_metadata(&owner.path) {
            Ok(m) if m.file_type().is_socket() && m.dev() == owner.dev && m.ino() == owner.ino => {
                if let Err(e) = fs::remove_file(&owner.path) {
                    log::warn!("could not remove socket {}: {e}", owner.path.display());
                }
            }
            Ok(_) => log::debug!(
                "not removing {}: it was replaced since we bound it",
                owner.path.display()
            ),
            Err(_) => {}
        }
    }
}

/// Bind and listen on one spec. The result is close-on-exec; non-blocking unless
/// the spec says `b`. `default_backlog` applies when the spec has no `backlog=`.
pub fn bind(spec: &BindSpec, default_backlog: i32) -> Result<BoundSocket, BindError> {
    let backlog = spec.backlog.unwrap_or(default_backlog);
    match &spec.addr {
        BindAddr::Inet { host, port } => bind_inet(spec, host, *port, backlog),
        BindAddr::Unix(path) => bind_unix(spec, path, backlog),
    }
}

fn bind_inet(
    spec: &BindSpec,
    host: &str,
    port: u16,
    backlog: i32,
) -> Result<BoundSocket, BindError> {
    let label = spec.addr_text();
    let resolved = (host, port)
        .to_socket_addrs()
        .map_err(|source| BindError::Resolve {
            addr: label.clone(),
            source,
        })?;
    let mut candidates: Vec<SocketAddr> = Vec::new();
    for sa in resolved {
        let allowed = match spec.family {
            Family::Any => true,
            Family::V4Only => sa.is_ipv4(),
            Family::V6Only => sa.is_ipv6(),
        };
        if allowed && !candidates.contains(&sa) {
            candidates.push(sa);
        }
    }
    let mut worst: Option<BindError> = None;
    for sa in candidates {
        match bind_inet_one(spec, &label, sa, backlog) {
            Ok(s) => return Ok(s),
            Err(e) => {
                log::debug!("{e}; trying the next address of {label}");
                if worst.as_ref().is_none_or(|w| e.rank() > w.rank()) {
                    worst = Some(e);
                }
            }
        }
    }
    Err(worst.unwrap_or(BindError::NoAddress {
        addr: label,
        family: match spec.family {
            Family::Any => "IPv4 or IPv6",
            Family::V4Only => "IPv4",
            Family::V6Only => "IPv6",
        },
    }))
}

fn bind_inet_one(
    spec: &BindSpec,
    label: &str,
    sa: SocketAddr,
    backlog: i32,
) -> Result<BoundSocket, BindError> {
    let shown = sa.to_string();
    let addr = if shown == label {
        shown
    } else {
        format!("{label} ({shown})")
    };
    let io = |op: &'static str| {
        let addr = addr.clone();
        move |source| BindError::Io { addr, op, source }
    };
    let sock = Socket::new(Domain::for_address(sa), Type::STREAM, None).map_err(io("socket"))?;
    // With -6 the socket must not silently accept IPv4 too; otherwise the system
    // default (net.ipv6.bindv6only) decides, as it does for every other server.
    if sa.is_ipv6() && spec.family == Family::V6Only {
        sock.set_only_v6(true).map_err(io("set IPV6_V6ONLY"))?;
    }
    if spec.reuseaddr {
        sock.set_reuse_address(true)
            .map_err(io("set SO_REUSEADDR"))?;
    }
    if spec.reuseport {
        sock.set_reuse_port(true).map_err(io("set SO_REUSEPORT"))?;
    }
    sock.bind(&sa.into())
        .map_err(|e| classify_bind_error(e, &addr, Some(sa.port())))?;
    sock.listen(backlog).map_err(io("listen"))?;
    sock.set_nonblocking(spec.nonblock)
        .map_err(io("set O_NONBLOCK"))?;
    if spec.nodelay {
        sock.set_tcp_nodelay(true).map_err(io("set TCP_NODELAY"))?;
    }
    let local_addr = match sock.local_addr().map(|a| a.as_socket()) {
        Ok(Some(a)) => a.to_string(),
        Ok(None) => sa.to_string(),
        Err(e) => return Err(io("getsockname")(e)),
    };
    Ok(BoundSocket {
        spec: spec.clone(),
        fd: sock.into(),
        local_addr,
        unix_owner: None,
    })
}

fn classify_bind_error(source: io::Error, addr: &str, port: Option<u16>) -> BindError {
    let addr = addr.to_string();
    match source.raw_os_error() {
        Some(libc::EADDRINUSE) => BindError::InUse { addr },
        Some(libc::EACCES) | Some(libc::EPERM) => BindError::PermissionDenied {
            addr,
            hint: match port {
                Some(p) if p > 0 && p < 1024 => {
                    " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
                }
                Some(_) => "",
                None => " (check the permissions of the socket's directory)",
            },
            source,
        },
        _ => BindError::Io {
            addr,
            op: "bind",
            source,
        },
    }
}

/// What is at a unix socket path that already exists.
enum Probe {
    /// Something accepts (or would, once its backlog drains) connections there.
    Live,
    /// A socket file with nobody listening: left by a process that died.
    Stale,
    /// The file vanished while we looked.
    Gone,
}

fn probe_unix(path: &Path) -> io::Result<Probe> {
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    // Non-blocking so that a live server with a full backlog answers EAGAIN
    // instead of making us wait for it.
    sock.set_nonblocking(true)?;
    match sock.connect(&SockAddr::unix(path)?) {
        Ok(()) => Ok(Probe::Live),
        Err(e) => match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => Ok(Probe::Stale),
            Some(libc::ENOENT) => Ok(Probe::Gone),
            // EAGAIN: live, backlog full. EPROTOTYPE: a live socket of another type.
            Some(libc::EAGAIN) | Some(libc::EPROTOTYPE) => Ok(Probe::Live),
            _ => Err(e),
        },
    }
}

/// Make room for our socket at `path`: remove a stale socket file, refuse anything else.
fn clear_unix_path(label: &str, path: &Path) -> Result<(), BindError> {
    let io = |op: &'static str| {
        move |source| BindError::Io {
            addr: label.to_string(),
            op,
            source,
        }
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("stat the existing path")(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket {
            addr: label.to_string(),
            path: path.to_path_buf(),
        });
    }
    match probe_unix(path).map_err(io("connect to the existing socket"))? {
        Probe::Live => Err(BindError::UnixInUse {
            addr: label.to_string(),
            path: path.to_path_buf(),
        }),
        Probe::Gone => Ok(()),
        Probe::Stale => {
            log::info!("removing stale socket file {}", path.display());
            match fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io("remove the stale socket file")(e)),
            }
        }
    }
}

fn bind_unix(spec: &BindSpec, path: &Path, backlog: i32) -> Result<BoundSocket, BindError> {
    let label = spec.addr_text();
    let io = |op: &'static str| {
        let addr = label.clone();
        move |source| BindError::Io { addr, op, source }
    };
    let sa = SockAddr::unix(path).map_err(io("unix socket address (path too long?)"))?;
    clear_unix_path(&label, path)?;
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(io("socket"))?;
    sock.bind(&sa).map_err(|e| match e.raw_os_error() {
        // Someone bound the path between our check and our bind.
        Some(libc::EADDRINUSE) => BindError::UnixInUse {
            addr: label.clone(),
            path: path.to_path_buf(),
        },
        _ => classify_bind_error(e, &label, None),
    })?;
    let meta = fs::symlink_metadata(path).map_err(io("stat the new socket file"))?;
    // From here on `bound` owns the file: any early return drops it, which closes
    // the socket and unlinks the file.
    let bound = BoundSocket {
        spec: spec.clone(),
        fd: sock.into(),
        local_addr: label.clone(),
        unix_owner: Some(UnixOwner {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        }),
    };
    // chmod before listen: until listen, connects are refused, so no client can
    // get in through the umask-derived mode.
    if let Some(mode) = spec.mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(io("chmod the socket file"))?;
    }
    let sock = socket2::SockRef::from(&bound);
    sock.listen(backlog).map_err(io("listen"))?;
    sock.set_nonblocking(spec.nonblock)
        .map_err(io("set O_NONBLOCK"))?;
    Ok(bound)
}

#[cfg(test)]
mod socket_tests {
    use super::*;
    use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
    use std::error::Error;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::net::{UnixListener, UnixStream};

    type TestResult = Result<(), Box<dyn Error>>;

    use crate::config::BindSpecError;
    use crate::testutil::TempDir;

    fn unix_spec(
        dir: &TempDir,
        name: &str,
        opts: &str,
    ) -> Result<(PathBuf, BindSpec), BindSpecError> {
        let p = dir.join(name);
        let s = BindSpec::parse(&format!("unix:{}{opts}", p.display()))?;
        Ok((p, s))
    }

    fn spec(s: &str) -> Result<BindSpec, BindSpecError> {
        BindSpec::parse(s)
    }

    fn cloexec(fd: impl AsFd) -> nix::Result<bool> {
        Ok(FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD)?).contains(FdFlag::FD_CLOEXEC))
    }

    fn nonblocking(fd: impl AsFd) -> nix::Result<bool> {
        Ok(OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?).contains(OFlag::O_NONBLOCK))
    }

    /// Connect to a bound TCP socket, accept on it as a worker would, and pass a byte.
    fn tcp_roundtrip(s: &BoundSocket) -> TestResult {
        let mut client = TcpStream::connect(s.local_addr())?;
        let listener = TcpListener::from(s.as_fd().try_clone_to_owned()?);
        let (mut conn, _) = listener.accept()?;
        client.write_all(b"x")?;
        let mut buf = [0u8; 1];
        conn.read_exact(&mut buf)?;
        assert_eq!(&buf, b"x");
        Ok(())
    }

    fn unix_roundtrip(s: &BoundSocket, path: &Path) -> TestResult {
        let mut client = UnixStream::connect(path)?;
        let listener = UnixListener::from(s.as_fd().try_clone_to_owned()?);
        let (mut conn, _) = listener.accept()?;
        client.write_all(b"y")?;
        let mut buf = [0u8; 1];
        conn.read_exact(&mut buf)?;
        assert_eq!(&buf, b"y");
        Ok(())
    }

    fn port_of(s: &BoundSocket) -> Result<u16, Box<dyn Error>> {
        Ok(s.local_addr().parse::<SocketAddr>()?.port())
    }

    #[test]
    fn v4_binds_reports_real_port_and_accepts() -> TestResult {
        let s = bind(&spec("127.0.0.1:0")?, DEFAULT_BACKLOG)?;
        assert!(
            s.local_addr().starts_with("127.0.0.1:"),
            "{}",
            s.local_addr()
        );
        assert_ne!(port_of(&s)?, 0);
        assert_eq!(s.key(), "127.0.0.1:0");
        assert_eq!(s.spec.raw, "127.0.0.1:0");
        assert_eq!(s.as_raw_fd(), AsRawFd::as_raw_fd(&s));
        tcp_roundtrip(&s)
    }

    #[test]
    fn v6_loopback_binds() -> TestResult {
        if TcpListener::bind("[::1]:0").is_err() {
            eprintln!("note: no IPv6 loopback on this machine; skipping [::1] test");
            return Ok(());
        }
        let s = bind(&spec("[::1]:0")?, DEFAULT_BACKLOG)?;
        assert!(s.local_addr().starts_with("[::1]:"), "{}", s.local_addr());
        assert_ne!(port_of(&s)?, 0);
        assert!(cloexec(&s)?);
        tcp_roundtrip(&s)?;

        let mut v6 = spec("[::1]:0")?;
        v6.family = Family::V6Only;
        let s = bind(&v6, DEFAULT_BACKLOG)?;
        assert!(
            socket2::SockRef::from(&s).only_v6()?,
            "-6 must set IPV6_V6ONLY"
        );
        Ok(())
    }

    #[test]
    fn port_in_use_is_reported_with_the_address() -> TestResult {
        let held = bind(&spec("127.0.0.1:0,r")?, DEFAULT_BACKLOG)?;
        // SO_REUSEADDR does not let a second socket onto a listening port.
        match bind(&spec(&format!("{},r", held.local_addr()))?, DEFAULT_BACKLOG) {
            Err(e @ BindError::InUse { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(held.local_addr()), "{msg}");
                assert!(msg.contains("EADDRINUSE"), "{msg}");
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn reuseport_lets_two_sockets_share_a_port() -> TestResult {
        let a = bind(&spec("127.0.0.1:0,reuseport")?, DEFAULT_BACKLOG)?;
        let b = bind(
            &spec(&format!("{},reuseport", a.local_addr()))?,
            DEFAULT_BACKLOG,
        )?;
        assert_eq!(a.local_addr(), b.local_addr());
        assert!(socket2::SockRef::from(&b).reuse_port()?);
        // Without the option on the newcomer the port is still taken.
        assert!(matches!(
            bind(&spec(a.local_addr())?, DEFAULT_BACKLOG),
            Err(BindError::InUse { .. })
        ));
        Ok(())
    }

    #[test]
    fn family_filters_resolved_addresses() -> TestResult {
        let mut v4 = spec("localhost:0")?;
        v4.family = Family::V4Only;
        let s = bind(&v4, DEFAULT_BACKLOG)?;
        assert!(
            s.local_addr().starts_with("127.0.0.1:"),
            "{}",
            s.local_addr()
        );

        let mut v6 = spec("localhost:0")?;
        v6.family = Family::V6Only;
        match bind(&v6, DEFAULT_BACKLOG) {
            Ok(s) => assert!(s.local_addr().starts_with("[::1]:"), "{}", s.local_addr()),
            Err(e @ BindError::NoAddress { .. }) => {
                assert!(e.to_string().contains("IPv6"), "{e}");
                eprintln!("note: localhost has no IPv6 address here: {e}");
            }
            Err(BindError::Io { source, .. })
                if source.raw_os_error() == Some(libc::EADDRNOTAVAIL) =>
            {
                eprintln!("note: localhost resolves to ::1 but there is no IPv6 loopback");
            }
            Err(e) => return Err(e.into()),
        }

        // A literal of the wrong family has nothing to offer.
        let mut lit = spec("127.0.0.1:0")?;
        lit.family = Family::V6Only;
        match bind(&lit, DEFAULT_BACKLOG) {
            Err(e @ BindError::NoAddress { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("127.0.0.1:0") && msg.contains("IPv6"), "{msg}");
            }
            other => panic!("expected NoAddress, got {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn nonblock_unless_asked_and_cloexec_always() -> TestResult {
        let dir = TempDir::new("nb");
        let (_, unix_plain) = unix_spec(&dir, "p.sock", "")?;
        let (_, unix_b) = unix_spec(&dir, "b.sock", ",b")?;
        for (s, want_nb) in [
            (spec("127.0.0.1:0")?, true),
            (spec("127.0.0.1:0,r")?, true),
            (spec("127.0.0.1:0,n")?, true),
            (spec("127.0.0.1:0,o_nonblock,r")?, true),
            (spec("127.0.0.1:0,b")?, false),
            (spec("127.0.0.1:0,r,blocking")?, false),
            (unix_plain, true),
            (unix_b, false),
        ] {
            let b = bind(&s, DEFAULT_BACKLOG)?;
            assert_eq!(nonblocking(&b)?, want_nb, "O_NONBLOCK for {}", s.raw);
            assert!(cloexec(&b)?, "FD_CLOEXEC for {}", s.raw);
        }
        // The flag is what a worker sees: accept on the non-blocking one returns at once.
        let b = bind(&spec("127.0.0.1:0")?, DEFAULT_BACKLOG)?;
        let l = TcpListener::from(b.as_fd().try_clone_to_owned()?);
        match l.accept() {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            Ok(c) => panic!("unexpected connection {c:?}"),
        }
        Ok(())
    }

    #[test]
    fn nodelay_on_the_listener_reaches_accepted_sockets() -> TestResult {
        for (opts, want) in [("", false), (",nodelay", true)] {
            let b = bind(&spec(&format!("127.0.0.1:0{opts}"))?, DEFAULT_BACKLOG)?;
            assert_eq!(socket2::SockRef::from(&b).tcp_nodelay()?, want, "{opts}");
            let _client = TcpStream::connect(b.local_addr())?;
            let listener = TcpListener::from(b.as_fd().try_clone_to_owned()?);
            listener.set_nonblocking(false)?;
            let (conn, _) = listener.accept()?;
            assert_eq!(conn.nodelay()?, want, "accepted socket, {opts}");
        }
        Ok(())
    }

    #[test]
    fn unix_binds_and_accepts_and_drop_removes_file() -> TestResult {
        let dir = TempDir::new("ux");
        let (path, s) = unix_spec(&dir, "a.sock", "")?;
        let b = bind(&s, DEFAULT_BACKLOG)?;
        assert_eq!(b.local_addr(), format!("unix:{}", path.display()));
        assert_eq!(b.key(), b.local_addr());
        assert!(fs::symlink_metadata(&path)?.file_type().is_socket());
        unix_roundtrip(&b, &path)?;
        drop(b);
        assert!(!path.exists(), "drop must remove our socket file");
        Ok(())
    }

    #[test]
    fn unix_stale_socket_is_replaced() -> TestResult {
        let dir = TempDir::new("st");
        let (path, s) = unix_spec(&dir, "s.sock", "")?;
        // std's listener leaves its file behind when dropped: a killed master's leftovers.
        drop(UnixListener::bind(&path)?);
        assert!(path.exists());
        let b = bind(&s, DEFAULT_BACKLOG)?;
        unix_roundtrip(&b, &path)
    }

    #[test]
    fn unix_live_socket_is_refused() -> TestResult {
        let dir = TempDir::new("lv");
        let (path, s) = unix_spec(&dir, "l.sock", "")?;
        let live = UnixListener::bind(&path)?;
        match bind(&s, DEFAULT_BACKLOG) {
            Err(e @ BindError::UnixInUse { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&path.display().to_string()), "{msg}");
                assert!(msg.contains("live process"), "{msg}");
            }
            other => panic!("expected UnixInUse, got {other:?}"),
        }
        // The live server's file is untouched: it still accepts.
        let _c = UnixStream::connect(&path)?;
        live.accept()?;
        Ok(())
    }

    #[test]
    fn unix_regular_file_is_refused_and_left_intact() -> TestResult {
        let dir = TempDir::new("rf");
        let (path, s) = unix_spec(&dir, "data", "")?;
        fs::write(&path, b"precious")?;
        match bind(&s, DEFAULT_BACKLOG) {
            Err(e @ BindError::NotASocket { .. }) => {
                assert!(e.to_string().contains("not a socket"), "{e}")
            }
            other => panic!("expected NotASocket, got {other:?}"),
        }
        assert_eq!(fs::read(&path)?, b"precious");
        Ok(())
    }

    #[test]
    fn unix_mode_is_applied() -> TestResult {
        let dir = TempDir::new("md");
        for (name, mode) in [("a.sock", 0o600), ("b.sock", 0o666), ("c.sock", 0o640)] {
            let (path, s) = unix_spec(&dir, name, &format!(",mode={mode:o}"))?;
            let _b = bind(&s, DEFAULT_BACKLOG)?;
            assert_eq!(
                fs::metadata(&path)?.permissions().mode() & 0o777,
                mode,
                "{name}"
            );
        }
        Ok(())
    }

    #[test]
    fn unix_drop_leaves_a_replacement_alone() -> TestResult {
        let dir = TempDir::new("rp");
        let (path, s) = unix_spec(&dir, "r.sock", "")?;
        let ours = bind(&s, DEFAULT_BACKLOG)?;
        // A newer master takes the path over while we still hold the old socket.
        fs::remove_file(&path)?;
        let newer = UnixListener::bind(&path)?;
        drop(ours);
        assert!(
            path.exists(),
            "drop removed a socket file that was not ours"
        );
        let _c = UnixStream::connect(&path)?;
        newer.accept()?;

        let (kept, s) = unix_spec(&dir, "k.sock", "")?;
        let b = bind(&s, DEFAULT_BACKLOG)?;
        drop(b.try_clone_disowned()?);
        assert!(kept.exists(), "a disowned duplicate must keep the file");
        drop(b);
        assert!(!kept.exists(), "the owner removes it");
        Ok(())
    }

    #[test]
    fn unix_path_too_long_is_an_error() -> TestResult {
        let long = format!("unix:/tmp/{}", "x".repeat(200));
        match bind(&spec(&long)?, DEFAULT_BACKLOG) {
            Err(e @ BindError::Io { .. }) => assert!(e.to_string().contains("xxxx"), "{e}"),
            other => panic!("expected Io error, got {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn permission_denied_hints_at_low_ports() {
        let e = classify_bind_error(
            io::Error::from_raw_os_error(libc::EACCES),
            "0.0.0.0:80",
            Some(80),
        );
        assert!(matches!(e, BindError::PermissionDenied { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("0.0.0.0:80") && msg.contains("CAP_NET_BIND_SERVICE"),
            "{msg}"
        );
        let e = classify_bind_error(
            io::Error::from_raw_os_error(libc::EACCES),
            "0.0.0.0:8080",
            Some(8080),
        );
        assert!(!e.to_string().contains("CAP_NET_BIND_SERVICE"), "{e}");
    }
}
