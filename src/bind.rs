//! Address specs (`127.0.0.1:8080,r,n`, `[::1]:80`, `unix:/run/app.sock`) and the
//! listening sockets made from them.
//!
//! The master binds every socket once ([`bind`], [`bind_all`]) and keeps the
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
//! - `O_NONBLOCK` (the `n` / `o_nonblock` option) is set here, once, and it lives on
//!   the open file description that the master and *every* worker share: it is not
//!   per-process. Without the option the socket stays blocking, as in einhorn, and
//!   every worker sees a blocking listener; with it, every worker sees a non-blocking
//!   one. A worker that flips the flag itself flips it for all of its siblings. The
//!   master never accepts on these sockets.
//! - A unix socket file is created by us and removed by us: a stale file left by a
//!   killed master is replaced, a live one is refused, and anything that is not a
//!   socket is never removed. On drop the file is unlinked only if it is still the
//!   same inode we created (a newer master may have replaced it).

use std::fs;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

/// Which address families a host name may resolve to (`-4` / `-6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    #[default]
    Any,
    V4Only,
    V6Only,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindAddr {
    /// Host name or literal address, and port.
    Inet { host: String, port: u16 },
    /// Unix-domain stream socket path.
    Unix(PathBuf),
}

/// One `-b` / `binds` entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSpec {
    /// The text as written, for messages.
    pub raw: String,
    pub addr: BindAddr,
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub nonblock: bool,
    pub family: Family,
    pub backlog: Option<i32>,
    /// File mode for unix sockets.
    pub mode: Option<u32>,
    /// `name=NAME`: matched against systemd's LISTEN_FDNAMES when the socket is
    /// inherited, and passed in a systemd-protocol worker's LISTEN_FDNAMES.
    pub name: Option<String>,
}

/// A bind spec that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindSpecError {
    #[error("bind {spec:?}: expected HOST:PORT, [IPV6]:PORT or unix:PATH")]
    NoPort { spec: String },
    #[error("bind {spec:?}: {port:?} is not a port number (0-65535)")]
    BadPort { spec: String, port: String },
    #[error("bind {spec:?}: empty host")]
    EmptyHost { spec: String },
    #[error("bind {spec:?}: unknown option {option:?} (known: r/so_reuseaddr, n/o_nonblock, reuseport/so_reuseport, backlog=N, mode=OCTAL, name=NAME)")]
    UnknownOption { spec: String, option: String },
    #[error("bind {spec:?}: bad value in {option:?}")]
    BadValue { spec: String, option: String },
}

impl BindSpec {
    /// Parse `ADDR[,OPT...]`.
    ///
    /// ADDR is `host:port`, `[v6addr]:port`, or `unix:/path` (a bare absolute
    /// path also means a unix socket). OPT is einhorn's `r`/`so_reuseaddr`,
    /// `n`/`o_nonblock`, `reuseport`/`so_reuseport`, plus `backlog=N` and
    /// `mode=OCTAL` (unix sockets).
    pub fn parse(spec: &str) -> Result<BindSpec, BindSpecError> {
        let spec_s = spec.trim();
        let mut parts = spec_s.split(',');
        let addr_s = parts.next().unwrap_or("").trim();
        let addr = parse_addr(spec_s, addr_s)?;
        let mut out = BindSpec {
            raw: spec_s.to_string(),
            addr,
            reuseaddr: false,
            reuseport: false,
            nonblock: false,
            family: Family::Any,
            backlog: None,
            mode: None,
            name: None,
        };
        for opt in parts {
            let opt = opt.trim();
            let bad = || BindSpecError::BadValue {
                spec: spec_s.to_string(),
                option: opt.to_string(),
            };
            // einhorn lower-cases option names (`,R` and `,SO_REUSEADDR` work
            // there), so only a `name=` value keeps its case.
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v)),
                None => (opt.to_ascii_lowercase(), None),
            };
            match (key.as_str(), value) {
                ("", None) => {}
                ("r" | "so_reuseaddr", None) => out.reuseaddr = true,
                ("n" | "o_nonblock", None) => out.nonblock = true,
                ("reuseport" | "so_reuseport", None) => out.reuseport = true,
                ("backlog", Some(v)) => {
                    out.backlog = Some(v.trim().parse().ok().filter(|b| *b > 0).ok_or_else(bad)?)
                }
                ("mode", Some(v)) => {
                    out.mode = Some(u32::from_str_radix(v.trim(), 8).map_err(|_| bad())?)
                }
                // systemd's FileDescriptorName= rules: printable, no ':'.
                ("name", Some(v)) => {
                    let v = v.trim();
                    let ok = !v.is_empty()
                        && v.len() <= 255
                        && v.chars().all(|c| c.is_ascii_graphic() && c != ':');
                    out.name = Some(Some(v.to_string()).filter(|_| ok).ok_or_else(bad)?);
                }
                _ => {
                    return Err(BindSpecError::UnknownOption {
                        spec: spec_s.to_string(),
                        option: opt.to_string(),
                    })
                }
            }
        }
        Ok(out)
    }

    /// The address part as written, for messages and for comparing binds.
    pub fn addr_text(&self) -> String {
        match &self.addr {
            BindAddr::Inet { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            BindAddr::Inet { host, port } => format!("{host}:{port}"),
            BindAddr::Unix(p) => format!("unix:{}", p.display()),
        }
    }
}

fn parse_addr(spec: &str, addr: &str) -> Result<BindAddr, BindSpecError> {
    if let Some(path) = addr.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(BindSpecError::NoPort {
                spec: spec.to_string(),
            });
        }
        return Ok(BindAddr::Unix(PathBuf::from(path)));
    }
    if addr.starts_with('/') {
        return Ok(BindAddr::Unix(PathBuf::from(addr)));
    }
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(|| BindSpecError::NoPort {
            spec: spec.to_string(),
        })?;
        let p = after
            .strip_prefix(':')
            .ok_or_else(|| BindSpecError::NoPort {
                spec: spec.to_string(),
            })?;
        (h, p)
    } else {
        addr.rsplit_once(':').ok_or_else(|| BindSpecError::NoPort {
            spec: spec.to_string(),
        })?
    };
    if host.is_empty() {
        return Err(BindSpecError::EmptyHost {
            spec: spec.to_string(),
        });
    }
    let port = port.parse::<u16>().map_err(|_| BindSpecError::BadPort {
        spec: spec.to_string(),
        port: port.to_string(),
    })?;
    Ok(BindAddr::Inet {
        host: host.to_string(),
        port,
    })
}

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

/// A bound, listening socket owned by the master. Close-on-exec; see the module doc.
#[derive(Debug)]
pub struct BoundSocket {
    spec: BindSpec,
    fd: OwnedFd,
    local_addr: String,
    unix_owner: Option<UnixOwner>,
}

impl BoundSocket {
    /// The spec this socket was bound from.
    pub fn spec(&self) -> &BindSpec {
        &self.spec
    }

    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

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
    /// activation, see `crate::activation`) for `spec`. The fd is made
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

    /// Leave the unix socket file in place on drop. For handing the socket to a
    /// process that outlives us (e.g. a re-executed master) which then owns the path.
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

    pub fn disown_path(&mut self) {
        self.unix_owner = None;
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

/// Bind and listen on one spec. The result is close-on-exec; non-blocking only with
/// the spec's `n` option. `default_backlog` applies when the spec has no `backlog=`.
pub fn bind(spec: &BindSpec, default_backlog: i32) -> Result<BoundSocket, BindError> {
    let backlog = spec.backlog.unwrap_or(default_backlog);
    match &spec.addr {
        BindAddr::Inet { host, port } => bind_inet(spec, host, *port, backlog),
        BindAddr::Unix(path) => bind_unix(spec, path, backlog),
    }
}

/// Bind every spec, in order, or none: on the first failure the sockets already
/// bound are closed (and their unix socket files removed) before the error returns.
pub fn bind_all(specs: &[BindSpec], default_backlog: i32) -> Result<Vec<BoundSocket>, BindError> {
    specs.iter().map(|s| bind(s, default_backlog)).collect()
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
    if spec.nonblock {
        sock.set_nonblocking(true).map_err(io("set O_NONBLOCK"))?;
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
    if spec.nonblock {
        sock.set_nonblocking(true).map_err(io("set O_NONBLOCK"))?;
    }
    Ok(bound)
}

#[cfg(test)]
mod spec_tests {
    use super::*;

    #[test]
    fn parses_einhorn_forms() -> Result<(), BindSpecError> {
        let s = BindSpec::parse("127.0.0.1:8080,r,n")?;
        assert_eq!(
            s.addr,
            BindAddr::Inet {
                host: "127.0.0.1".into(),
                port: 8080
            }
        );
        assert!(s.reuseaddr && s.nonblock && !s.reuseport);
        let s = BindSpec::parse("[::1]:80,so_reuseaddr,o_nonblock,so_reuseport")?;
        assert_eq!(
            s.addr,
            BindAddr::Inet {
                host: "::1".into(),
                port: 80
            }
        );
        assert!(s.reuseaddr && s.nonblock && s.reuseport);
        assert_eq!(s.addr_text(), "[::1]:80");
        let s = BindSpec::parse("unix:/tmp/x.sock,mode=660,backlog=64")?;
        assert_eq!(s.addr, BindAddr::Unix("/tmp/x.sock".into()));
        assert_eq!((s.mode, s.backlog), (Some(0o660), Some(64)));
        assert_eq!(BindSpec::parse("localhost:0")?.addr_text(), "localhost:0");
        // einhorn lower-cases option names before matching them.
        let s = BindSpec::parse("127.0.0.1:1,R,N")?;
        assert!(s.reuseaddr && s.nonblock);
        let s = BindSpec::parse("127.0.0.1:1,SO_REUSEADDR,O_NonBlock,Backlog=9,NAME=Web")?;
        assert!(s.reuseaddr && s.nonblock);
        assert_eq!((s.backlog, s.name.as_deref()), (Some(9), Some("Web")));
        Ok(())
    }

    #[test]
    fn rejects_bad_specs_naming_them() {
        for bad in [
            "8080",
            "127.0.0.1:http",
            ":80",
            "[::1]80",
            "1.2.3.4:70000",
            "h:1,x",
            "h:1,backlog=0",
            "unix:",
        ] {
            let e = match BindSpec::parse(bad) {
                Err(e) => e.to_string(),
                Ok(s) => panic!("{bad} parsed as {s:?}"),
            };
            let addr = bad.split(',').next().unwrap_or(bad);
            assert!(e.contains(addr), "{bad}: {e}");
        }
    }
}

#[cfg(test)]
mod socket_tests {
    use super::*;
    use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
    use std::error::Error;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::atomic::{AtomicUsize, Ordering};

    type TestResult = Result<(), Box<dyn Error>>;

    /// A fresh directory per test, short enough for unix socket paths.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> io::Result<TempDir> {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("ehb-{}-{n}-{tag}", std::process::id()));
            fs::create_dir(&p)?;
            Ok(TempDir(p))
        }

        fn spec(&self, name: &str, opts: &str) -> Result<(PathBuf, BindSpec), BindSpecError> {
            let p = self.0.join(name);
            let s = BindSpec::parse(&format!("unix:{}{opts}", p.display()))?;
            Ok((p, s))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
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
        assert_eq!(s.spec().raw, "127.0.0.1:0");
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
    fn nonblock_only_when_asked_and_cloexec_always() -> TestResult {
        let dir = TempDir::new("nb")?;
        let (_, unix_plain) = dir.spec("p.sock", "")?;
        let (_, unix_nb) = dir.spec("n.sock", ",n")?;
        for (s, want_nb) in [
            (spec("127.0.0.1:0")?, false),
            (spec("127.0.0.1:0,n")?, true),
            (spec("127.0.0.1:0,o_nonblock,r")?, true),
            (unix_plain, false),
            (unix_nb, true),
        ] {
            let b = bind(&s, DEFAULT_BACKLOG)?;
            assert_eq!(nonblocking(&b)?, want_nb, "O_NONBLOCK for {}", s.raw);
            assert!(cloexec(&b)?, "FD_CLOEXEC for {}", s.raw);
        }
        // The flag is what a worker sees: accept on the non-blocking one returns at once.
        let b = bind(&spec("127.0.0.1:0,n")?, DEFAULT_BACKLOG)?;
        let l = TcpListener::from(b.as_fd().try_clone_to_owned()?);
        match l.accept() {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            Ok(c) => panic!("unexpected connection {c:?}"),
        }
        Ok(())
    }

    #[test]
    fn unix_binds_and_accepts_and_drop_removes_file() -> TestResult {
        let dir = TempDir::new("ux")?;
        let (path, s) = dir.spec("a.sock", "")?;
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
        let dir = TempDir::new("st")?;
        let (path, s) = dir.spec("s.sock", "")?;
        // std's listener leaves its file behind when dropped: a killed master's leftovers.
        drop(UnixListener::bind(&path)?);
        assert!(path.exists());
        let b = bind(&s, DEFAULT_BACKLOG)?;
        unix_roundtrip(&b, &path)
    }

    #[test]
    fn unix_live_socket_is_refused() -> TestResult {
        let dir = TempDir::new("lv")?;
        let (path, s) = dir.spec("l.sock", "")?;
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
        let dir = TempDir::new("rf")?;
        let (path, s) = dir.spec("data", "")?;
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
        let dir = TempDir::new("md")?;
        for (name, mode) in [("a.sock", 0o600), ("b.sock", 0o666), ("c.sock", 0o640)] {
            let (path, s) = dir.spec(name, &format!(",mode={mode:o}"))?;
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
        let dir = TempDir::new("rp")?;
        let (path, s) = dir.spec("r.sock", "")?;
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

        let (kept, s) = dir.spec("k.sock", "")?;
        let mut b = bind(&s, DEFAULT_BACKLOG)?;
        b.disown_path();
        drop(b);
        assert!(kept.exists(), "disown_path must keep the file");
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
    fn bind_all_binds_in_order() -> TestResult {
        let dir = TempDir::new("ok")?;
        let (path, u) = dir.spec("o.sock", "")?;
        let socks = bind_all(&[spec("127.0.0.1:0")?, u], DEFAULT_BACKLOG)?;
        assert_eq!(socks.len(), 2);
        assert!(socks[0].local_addr().starts_with("127.0.0.1:"));
        assert_eq!(socks[1].local_addr(), format!("unix:{}", path.display()));
        Ok(())
    }

    #[test]
    fn bind_all_is_all_or_nothing() -> TestResult {
        // A port the kernel just handed out and we released.
        let free = port_of(&bind(&spec("127.0.0.1:0")?, DEFAULT_BACKLOG)?)?;
        let held = bind(&spec("127.0.0.1:0")?, DEFAULT_BACKLOG)?;
        let dir = TempDir::new("all")?;
        let (upath, u) = dir.spec("a.sock", "")?;
        let specs = [
            spec(&format!("127.0.0.1:{free}"))?,
            u,
            spec(held.local_addr())?,
        ];
        match bind_all(&specs, DEFAULT_BACKLOG) {
            Err(e @ BindError::InUse { .. }) => {
                assert!(e.to_string().contains(held.local_addr()), "{e}")
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        assert!(
            !upath.exists(),
            "unix socket from the failed set was left behind"
        );
        // Without SO_REUSEADDR this fails if the earlier listener were still open.
        let again = bind(&specs[0], DEFAULT_BACKLOG)?;
        assert_eq!(port_of(&again)?, free);
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
