//! The master as a service manager for its workers: a NOTIFY_SOCKET that workers
//! written for systemd's `Type=notify` use unchanged (`ack = "notify"`).
//!
//! One unix datagram socket for the whole master, with SO_PASSCRED, registered on
//! the mio loop. Every datagram carries the sender's pid in SCM_CREDENTIALS,
//! filled in by the kernel: a worker cannot ack, ping or stop in another's name,
//! and a datagram from a pid that is not a worker of a notify pool is ignored.
//! (As systemd's `NotifyAccess=main`: a worker's own children cannot speak for it.)
//!
//! Messages understood: `READY=1` acks the worker; `STATUS=...` is kept and shown
//! by `status`/`state`; `WATCHDOG=1` pushes back the pool's `watchdog` deadline
//! (a worker that stops pinging is killed and replaced); `STOPPING=1` marks the
//! worker draining so its replacement starts at once. File descriptors sent with
//! `FDSTORE=1` are not kept: they are closed on receipt.
//!
//! The socket lives next to the control socket (`<control>.notify`), so it shares
//! the control directory's permissions; if that path is too long for a unix
//! address, an abstract name with the master's pid is used instead.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use mio::{Interest, Registry, Token};
use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags};

use crate::pool::Pid;

/// Datagrams read per loop turn.
pub const PER_TURN: usize = 256;

/// Longest datagram we read; systemd's limit is the same order.
const MAX_DATAGRAM: usize = 4096;

/// One message from a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Ready,
    Stopping,
    Watchdog,
    Status(String),
}

/// Parse a datagram (newline-separated `KEY=VALUE`); unknown keys are skipped.
pub fn parse(datagram: &[u8]) -> Vec<Msg> {
    String::from_utf8_lossy(datagram)
        .lines()
        .filter_map(|line| match line.split_once('=') {
            Some(("READY", "1")) => Some(Msg::Ready),
            Some(("STOPPING", "1")) => Some(Msg::Stopping),
            Some(("WATCHDOG", "1")) => Some(Msg::Watchdog),
            Some(("STATUS", s)) => Some(Msg::Status(s.chars().take(200).collect())),
            _ => None,
        })
        .collect()
}

/// The notify socket as data, for a re-executed master.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NotifyParts {
    pub fd: RawFd,
    pub address: String,
    pub path: Option<PathBuf>,
}

/// The master's worker-facing notify socket.
#[derive(Debug)]
pub struct WorkerNotify {
    sock: mio::net::UnixDatagram,
    /// The mio token it is registered with (set by `register`).
    token: Token,
    address: String,
    path: Option<PathBuf>,
}

impl WorkerNotify {
    /// Bind next to the control socket (or in the abstract namespace).
    /// The socket file is created with `mode` (the control socket's): the umask
    /// is set for the bind, so it never exists with looser permissions.
    pub fn bind(control: &Path, mode: u32) -> io::Result<WorkerNotify> {
        let mut p = control.as_os_str().to_owned();
        p.push(".notify");
        let path = PathBuf::from(p);
        // sun_path is 108 bytes with the NUL.
        let (std_sock, address, owned) = if path.as_os_str().len() < 108 {
            // The control socket is ours (bound just before), so a file here is a
            // leftover of a previous master at the same path.
            if std::fs::symlink_metadata(&path)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            {
                let _ = std::fs::remove_file(&path);
            }
            let mask = nix::sys::stat::Mode::from_bits_truncate(!mode & 0o777);
            let old = nix::sys::stat::umask(mask);
            let s = std::os::unix::net::UnixDatagram::bind(&path);
            nix::sys::stat::umask(old);
            let s = s?;
            (s, path.to_string_lossy().into_owned(), Some(path))
        } else {
            let name = format!("einhyrningsins-{}-notify", std::process::id());
            let addr = crate::systemd::service::socket_addr(&format!("@{name}"))?;
            let s = std::os::unix::net::UnixDatagram::bind_addr(&addr)?;
            (s, format!("@{name}"), None)
        };
        std_sock.set_nonblocking(true)?;
        socket::setsockopt(&std_sock, sockopt::PassCred, &true).map_err(io::Error::from)?;
        log::info!("worker notify socket: {address}");
        Ok(WorkerNotify {
            sock: mio::net::UnixDatagram::from_std(std_sock),
            token: Token(usize::MAX),
            address,
            path: owned,
        })
    }

    /// The socket as data, without giving it up.
    pub fn parts(&self) -> NotifyParts {
        NotifyParts {
            fd: self.sock.as_raw_fd(),
            address: self.address.clone(),
            path: self.path.clone(),
        }
    }

    /// The socket a previous image of this master held.
    ///
    /// # Safety
    /// `parts.fd` must be an open datagram socket this process owns, taken once.
    pub unsafe fn from_parts(parts: NotifyParts) -> io::Result<WorkerNotify> {
        // SAFETY: the caller hands over the fd.
        let std_sock = unsafe { std::os::unix::net::UnixDatagram::from_raw_fd(parts.fd) };
        std_sock.set_nonblocking(true)?;
        Ok(WorkerNotify {
            sock: mio::net::UnixDatagram::from_std(std_sock),
            token: Token(usize::MAX),
            address: parts.address,
            path: parts.path,
        })
    }

    /// The NOTIFY_SOCKET value workers get.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        self.token = token;
        registry.register(&mut self.sock, token, Interest::READABLE)
    }

    /// Every pending datagram, with the sender's pid (datagrams without
    /// credentials are dropped).
    /// Read pending datagrams, at most `limit` of them ([`PER_TURN`] on the
    /// loop): a worker flooding the socket must not hold the loop. When the cap
    /// is hit the socket is re-registered, so epoll reports it again next turn.
    pub fn recv_all(&mut self, registry: &Registry, limit: usize) -> Vec<(Pid, Vec<Msg>)> {
        let mut out = Vec::new();
        let fd: RawFd = self.sock.as_raw_fd();
        for _ in 0..limit {
            let mut buf = [0u8; MAX_DATAGRAM];
            let mut cmsg = nix::cmsg_space!(libc::ucred, [RawFd; 16]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let (pid, n) = match socket::recvmsg::<()>(
                fd,
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut pid = None;
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            match c {
                                ControlMessageOwned::ScmCredentials(cred) => pid = Some(cred.pid()),
                                ControlMessageOwned::ScmRights(fds) => {
                                    for f in fds {
                                        // SAFETY: the kernel just gave us these fds.
                                        drop(unsafe { OwnedFd::from_raw_fd(f) });
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                    (pid, msg.bytes)
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("worker notify socket {}: {e}", self.address);
                    break;
                }
            };
            match pid {
                Some(pid) => out.push((pid, parse(&buf[..n.min(MAX_DATAGRAM)]))),
                None => log::debug!("worker notify socket: datagram without credentials"),
            }
            if out.len() == limit {
                if let Err(e) = registry.reregister(&mut self.sock, self.token, Interest::READABLE)
                {
                    log::warn!(
                        "worker notify socket {}: cannot re-register: {e}",
                        self.address
                    );
                }
            }
        }
        out
    }
}

impl Drop for WorkerNotify {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: Token = Token(3);

    #[test]
    fn parses_known_keys_only() {
        assert_eq!(
            parse(b"READY=1\nSTATUS=serving 3 conns\nMAINPID=1\nWATCHDOG=1\nSTOPPING=1\nREADY=0"),
            vec![
                Msg::Ready,
                Msg::Status("serving 3 conns".into()),
                Msg::Watchdog,
                Msg::Stopping
            ]
        );
        assert!(parse(b"\xff\xfe").is_empty());
    }

    #[test]
    fn credentials_carry_the_senders_pid() -> io::Result<()> {
        let dir = crate::testutil::TempDir::new("nack");
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let n = WorkerNotify::bind(&dir.join("ctl.sock"), 0o600);
        nix::sys::stat::umask(old);
        let mut n = n?;
        assert!(n.address().ends_with("ctl.sock.notify"));
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("ctl.sock.notify"))?
                .permissions()
                .mode();
            assert_eq!(
                mode & 0o777,
                0o600,
                "created with its final mode under umask 000"
            );
        }
        let poll = mio::Poll::new()?;
        n.register(poll.registry(), TOKEN)?;
        crate::systemd::service::Notifier::to(n.address())?.send("READY=1\nSTATUS=hi")?;
        let got = n.recv_all(poll.registry(), PER_TURN);
        assert_eq!(
            got,
            vec![(
                std::process::id() as Pid,
                vec![Msg::Ready, Msg::Status("hi".into())]
            )]
        );
        drop(n);
        assert!(!dir.join("ctl.sock.notify").exists());
        Ok(())
    }

    #[test]
    fn a_flood_is_read_in_bounded_batches_and_reported_again() -> io::Result<()> {
        let dir = crate::testutil::TempDir::new("nflood");
        let mut n = WorkerNotify::bind(&dir.join("ctl.sock"), 0o600)?;
        let mut poll = mio::Poll::new()?;
        n.register(poll.registry(), TOKEN)?;
        let tx = crate::systemd::service::Notifier::to(n.address())?;
        // (The kernel queues few datagrams: net.unix.max_dgram_qlen is often 10.)
        for _ in 0..6 {
            tx.send("WATCHDOG=1")?;
        }
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(std::time::Duration::from_secs(5)))?;
        assert!(events.iter().any(|e| e.token() == TOKEN));
        assert_eq!(n.recv_all(poll.registry(), 4).len(), 4);
        // Edge-triggered: only the re-registration makes epoll report the rest.
        poll.poll(&mut events, Some(std::time::Duration::from_secs(5)))?;
        assert!(
            events.iter().any(|e| e.token() == TOKEN),
            "rest not reported"
        );
        assert_eq!(n.recv_all(poll.registry(), 4).len(), 2);
        Ok(())
    }
}
