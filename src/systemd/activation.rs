//! systemd's socket-passing protocol, both ways.
//!
//! **In (socket activation of the master).** When `LISTEN_PID` is our pid and
//! `LISTEN_FDS` is n, fds 3..3+n are listening sockets opened by the service
//! manager (or anything speaking the protocol: `systemd-socket-activate`, a test
//! harness). [`Inherited`] takes them, makes them close-on-exec at once (nothing we
//! spawn may inherit them by accident), and hands each to the bind it belongs to:
//! first by name (`LISTEN_FDNAMES` against a bind's `name=NAME` option), then by
//! the socket's own address (getsockname against the bind's resolved address or
//! unix path). A bind with no inherited fd is bound as usual; inherited fds no bind
//! wants are logged and closed. Because the manager keeps its copy of each socket,
//! the master itself can be restarted (`systemctl restart`) while connections queue
//! in the kernel's backlog: none is refused.
//!
//! **Out (workers written for systemd).** A pool with `socket_protocol` including
//! `"systemd"` gets its sockets at fds 3, 4, ... in bind order, with `LISTEN_FDS`,
//! `LISTEN_FDNAMES` and `LISTEN_PID`. [`FdPlan`] computes the moves before the fork;
//! the `pre_exec` hook only runs `dup3`/`dup2`. Every source is first duplicated
//! above every source and target (close-on-exec), then onto its target: a source
//! that already sits in 3..3+n is never clobbered before it is moved, and the
//! `src == target` case (where `dup2` would leave FD_CLOEXEC set) cannot happen.
//!
//! `LISTEN_PID` must be the worker's own pid, unknown before the fork. Writing it
//! into the environment between fork and exec is not async-signal-safe in a
//! threaded master (std builds `envp` before forking; changing it means
//! allocating). So the worker is started through a trampoline: the master execs its
//! own binary (`/proc/self/exe`, which stays valid even if the file was replaced by
//! a deploy) as `einhyrningsins --exec-trampoline PROGRAM ARGS...`; that fresh,
//! single-threaded process sets `LISTEN_PID` to its pid and execs the program, which
//! keeps the pid. The cost is one extra exec per spawn, only for systemd pools; the
//! price is that a missing program is reported as the worker exiting with status
//! 127 rather than as a spawn error.

use std::ffi::{OsStr, OsString};
use std::net::ToSocketAddrs;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use socket2::SockRef;

use crate::bind::BoundSocket;
use crate::config::{BindAddr, BindSpec};

/// First fd of the protocol.
pub const SD_LISTEN_FDS_START: RawFd = 3;

/// The hidden first argument that turns the binary into the exec trampoline.
pub const TRAMPOLINE_ARG: &str = "--exec-trampoline";

/// What LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES say, if they are meant for `me`.
/// Returns one optional name per fd.
pub fn parse_listen_env(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    me: u32,
) -> Option<Vec<Option<String>>> {
    let pid: u32 = pid?.trim().parse().ok()?;
    if pid != me {
        return None;
    }
    let n: usize = fds?.trim().parse().ok()?;
    let names: Vec<&str> = names.map(|s| s.split(':').collect()).unwrap_or_default();
    Some(
        (0..n)
            .map(|i| {
                names
                    .get(i)
                    .filter(|s| !s.is_empty() && **s != "unknown")
                    .map(|s| s.to_string())
            })
            .collect(),
    )
}

struct Slot {
    fd: Option<OwnedFd>,
    name: Option<String>,
    number: RawFd,
}

/// Listening sockets passed to this process by a service manager.
#[derive(Default)]
pub struct Inherited {
    slots: Vec<Slot>,
}

impl Inherited {
    /// Take fds 3.. when LISTEN_PID names this process (nothing otherwise).
    pub fn from_env() -> Inherited {
        let var = |k: &str| std::env::var(k).ok();
        let Some(names) = parse_listen_env(
            var("LISTEN_PID").as_deref(),
            var("LISTEN_FDS").as_deref(),
            var("LISTEN_FDNAMES").as_deref(),
            std::process::id(),
        ) else {
            return Inherited::default();
        };
        let mut slots = Vec::new();
        for (i, name) in names.into_iter().enumerate() {
            let number = SD_LISTEN_FDS_START + i as RawFd;
            // SAFETY: F_GETFD/F_SETFD on an fd number only touch the fd table.
            let open = unsafe { libc::fcntl(number, libc::F_GETFD) } != -1;
            if !open {
                log::warn!("socket activation: LISTEN_FDS names fd {number}, which is not open");
                continue;
            }
            unsafe {
                libc::fcntl(number, libc::F_SETFD, libc::FD_CLOEXEC);
            }
            // SAFETY: the protocol hands fds 3..3+n to this process; nothing else in
            // it owns them, and each number is taken once.
            let fd = unsafe { OwnedFd::from_raw_fd(number) };
            slots.push(Slot {
                fd: Some(fd),
                name,
                number,
            });
        }
        log::info!(
            "socket activation: {} inherited fd(s){}",
            slots.len(),
            if slots.iter().any(|s| s.name.is_some()) {
                format!(
                    " ({})",
                    slots
                        .iter()
                        .map(|s| s.name.as_deref().unwrap_or("unnamed"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                String::new()
            }
        );
        Inherited { slots }
    }

    /// Adopt fds that are already owned (tests, or a caller with its own source).
    #[cfg(test)]
    pub fn from_fds(fds: Vec<(OwnedFd, Option<String>)>) -> Inherited {
        Inherited {
            slots: fds
                .into_iter()
                .map(|(fd, name)| Slot {
                    number: std::os::fd::AsRawFd::as_raw_fd(&fd),
                    fd: Some(fd),
                    name,
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(|s| s.fd.is_none())
    }

    /// The inherited socket for `spec` (by name, then by address), if any.
    pub fn take(&mut self, pool: &str, spec: &BindSpec) -> Option<BoundSocket> {
        if self.is_empty() {
            return None;
        }
        let by_name = spec.name.as_ref().and_then(|n| {
            self.slots
                .iter()
                .position(|s| s.fd.is_some() && s.name.as_ref() == Some(n))
        });
        let pos = by_name.or_else(|| {
            self.slots
                .iter()
                .position(|s| s.fd.as_ref().is_some_and(|fd| address_matches(fd, spec)))
        })?;
        let slot = &mut self.slots[pos];
        let fd = slot.fd.take()?;
        let number = slot.number;
        match BoundSocket::from_inherited(spec, fd) {
            Ok(s) => {
                log::info!(
                    "pool {pool}: {} taken from inherited fd {number} ({})",
                    spec.raw,
                    s.local_addr()
                );
                Some(s)
            }
            Err(e) => {
                log::warn!(
                    "pool {pool}: inherited fd {number} unusable for {}: {e}; binding anew",
                    spec.raw
                );
                None
            }
        }
    }

    /// Close every inherited fd no bind took, saying so.
    pub fn finish(self) {
        for s in self.slots {
            if let Some(fd) = s.fd {
                let addr = SockRef::from(&fd)
                    .local_addr()
                    .ok()
                    .and_then(|a| {
                        a.as_socket()
                            .map(|a| a.to_string())
                            .or_else(|| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                    })
                    .unwrap_or_else(|| "unknown address".into());
                log::warn!(
                    "socket activation: inherited fd {} ({}, {addr}) matches no bind; closing it",
                    s.number,
                    s.name.as_deref().unwrap_or("unnamed")
                );
            }
        }
    }
}

/// Is `fd` bound to the address `spec` asks for? Port 0 never matches (each bind
/// of it is a different port).
fn address_matches(fd: &OwnedFd, spec: &BindSpec) -> bool {
    let Ok(local) = SockRef::from(fd).local_addr() else {
        return false;
    };
    match &spec.addr {
        BindAddr::Unix(path) => local.as_pathname() == Some(path.as_path()),
        BindAddr::Inet { port: 0, .. } => false,
        BindAddr::Inet { host, port } => {
            let Some(have) = local.as_socket() else {
                return false;
            };
            if have.port() != *port {
                return false;
            }
            match (host.as_str(), *port).to_socket_addrs() {
                Ok(mut addrs) => addrs.any(|a| a.ip() == have.ip()),
                Err(_) => false,
            }
        }
    }
}

// ---- out: workers that speak systemd's protocol ----------------------------

/// Fd moves for a systemd-protocol worker, computed before the fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdPlan {
    /// (source fd in the master, temporary fd, final fd in the worker).
    pub moves: Vec<(RawFd, RawFd, RawFd)>,
}

impl FdPlan {
    /// Sockets go to 3, 4, ... in order; `extra` (the `-g` control fd) right after.
    /// Returns the plan and the final fd numbers of the sockets and of `extra`.
    pub fn new(sockets: &[RawFd], extra: Option<RawFd>) -> (FdPlan, Vec<RawFd>, Option<RawFd>) {
        let sources: Vec<RawFd> = sockets.iter().copied().chain(extra).collect();
        let n = sources.len() as RawFd;
        let highest = sources
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(SD_LISTEN_FDS_START + n);
        let temp_base = highest + 1;
        let moves: Vec<(RawFd, RawFd, RawFd)> = sources
            .iter()
            .enumerate()
            .map(|(i, &src)| {
                (
                    src,
                    temp_base + i as RawFd,
                    SD_LISTEN_FDS_START + i as RawFd,
                )
            })
            .collect();
        let finals: Vec<RawFd> = moves.iter().map(|m| m.2).collect();
        let extra_final = extra.and(finals.last().copied());
        let socket_finals = finals[..sockets.len()].to_vec();
        (FdPlan { moves }, socket_finals, extra_final)
    }

    /// Carry out the plan. Only `dup3`/`dup2`: safe between fork and exec.
    ///
    /// # Safety
    /// Call only in the child between fork and exec (it replaces fds 3.. of the
    /// calling process).
    pub unsafe fn apply(&self) -> std::io::Result<()> {
        for &(src, temp, _) in &self.moves {
            // The temporaries stay close-on-exec: they vanish at exec.
            // SAFETY: dup3 only changes the fd table; the caller is the child.
            if unsafe { libc::dup3(src, temp, libc::O_CLOEXEC) } == -1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        for &(_, temp, dst) in &self.moves {
            // temp != dst always, so dup2 clears FD_CLOEXEC on dst.
            // SAFETY: as above.
            if unsafe { libc::dup2(temp, dst) } == -1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// `LISTEN_FDNAMES` for a pool: each bind's `name=`, else the pool name.
pub fn fd_names(pool: &str, binds: &[BindSpec]) -> String {
    binds
        .iter()
        .map(|b| b.name.clone().unwrap_or_else(|| pool.to_string()))
        .collect::<Vec<_>>()
        .join(":")
}

/// If argv is `BIN --exec-trampoline PROGRAM ARGS...`: set LISTEN_PID to our
/// pid and exec PROGRAM. Returns only on failure (the exit status to use), or
/// `None` when this is not a trampoline invocation.
pub fn trampoline_main() -> Option<u8> {
    let mut args = std::env::args_os();
    args.next();
    if args.next().as_deref() != Some(OsStr::new(TRAMPOLINE_ARG)) {
        return None;
    }
    let rest: Vec<OsString> = args.collect();
    let Some((program, argv)) = rest.split_first() else {
        eprintln!("einhyrningsins {TRAMPOLINE_ARG}: no program given");
        return Some(127);
    };
    use std::os::unix::process::CommandExt;
    // A fresh single-threaded process: setting the environment is safe here.
    let err = std::process::Command::new(program)
        .args(argv)
        .env("LISTEN_PID", std::process::id().to_string())
        .exec();
    eprintln!(
        "einhyrningsins: could not start {}: {err}",
        program.to_string_lossy()
    );
    Some(127)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn listen_env_only_for_our_pid() {
        assert_eq!(parse_listen_env(Some("7"), Some("2"), None, 8), None);
        assert_eq!(parse_listen_env(None, Some("2"), None, 8), None);
        assert_eq!(
            parse_listen_env(Some("8"), Some("3"), Some("web:unknown"), 8),
            Some(vec![Some("web".into()), None, None])
        );
        assert_eq!(parse_listen_env(Some("8"), Some("x"), None, 8), None);
    }

    #[test]
    fn bind_name_option() -> Result<(), crate::config::BindSpecError> {
        let b = BindSpec::parse("127.0.0.1:80,r,name=web")?;
        assert_eq!(b.name.as_deref(), Some("web"));
        assert!(BindSpec::parse("127.0.0.1:80,name=a:b").is_err());
        assert!(BindSpec::parse("127.0.0.1:80,name=").is_err());
        assert_eq!(
            fd_names("pool", &[b, BindSpec::parse("unix:/x")?]),
            "web:pool"
        );
        Ok(())
    }

    #[test]
    fn matched_by_address_then_name_and_leftovers_closed() -> Result<(), Box<dyn std::error::Error>>
    {
        let a = TcpListener::bind("127.0.0.1:0")?;
        let b = TcpListener::bind("127.0.0.1:0")?;
        let (pa, pb) = (a.local_addr()?.port(), b.local_addr()?.port());
        let c = TcpListener::bind("127.0.0.1:0")?;
        let mut inh = Inherited::from_fds(vec![
            (OwnedFd::from(a), None),
            (OwnedFd::from(b), Some("admin".into())),
            (OwnedFd::from(c), None),
        ]);
        // By address.
        let s = inh
            .take("web", &BindSpec::parse(&format!("127.0.0.1:{pa}"))?)
            .ok_or("no match by address")?;
        assert_eq!(s.local_addr(), format!("127.0.0.1:{pa}"));
        // By name, whatever the address says.
        let s = inh
            .take("web", &BindSpec::parse("127.0.0.1:1,name=admin")?)
            .ok_or("no match by name")?;
        assert_eq!(s.local_addr(), format!("127.0.0.1:{pb}"));
        // Port 0 and other ports never match.
        assert!(inh.take("web", &BindSpec::parse("127.0.0.1:0")?).is_none());
        assert!(!inh.is_empty());
        inh.finish();
        Ok(())
    }

    #[test]
    fn fd_plan_moves_through_temporaries() {
        // Sources inside the target range, in reverse order, plus a -g fd.
        let (plan, socks, extra) = FdPlan::new(&[4, 3], Some(9));
        assert_eq!(socks, vec![3, 4]);
        assert_eq!(extra, Some(5));
        assert_eq!(plan.moves, vec![(4, 10, 3), (3, 11, 4), (9, 12, 5)]);
        for (src, temp, dst) in &plan.moves {
            assert!(temp > src && temp != dst && *temp > 5);
        }
        let (plan, socks, extra) = FdPlan::new(&[], None);
        assert!(plan.moves.is_empty() && socks.is_empty() && extra.is_none());
    }
}
