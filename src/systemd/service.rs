//! The master as a `Type=notify` service: READY, STATUS, RELOADING, STOPPING,
//! WATCHDOG and EXTEND_TIMEOUT_USEC messages to the service manager named by
//! `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
//!
//! The job is split in two so that the decisions are unit-tested without sockets:
//! [`Supervisor`] is a small state machine fed with a [`Snapshot`] of the pools once
//! per loop turn; it returns the messages to send and the instant it next wants to
//! be woken (STATUS rate limit, watchdog). The master arms that instant on its own
//! deadline queue (`Deadline::SdNotify`): no thread, no polling. [`Notifier`] is the
//! datagram socket that carries the messages.
//!
//! Why these rules:
//! - READY=1 is sent once, when every pool has its `count` acked at start (the
//!   moment the service really serves), so `systemctl start` returns then and units
//!   ordered `After=` this one start against a working service.
//! - While the start is still making progress (a worker acked but the pools are not
//!   settled), EXTEND_TIMEOUT_USEC asks for one more ack window, so a large pool that
//!   starts slowly but steadily is not killed by `TimeoutStartSec`, while one that
//!   stops making progress still is.
//! - STATUS= is a one-line summary, sent when it changes but at most once per
//!   [`STATUS_INTERVAL`]: a busy pool must not flood PID 1.
//! - WATCHDOG=1 is sent at half of `WATCHDOG_USEC` from the loop itself, so a wedged
//!   loop stops pinging and systemd restarts the master (`WATCHDOG_PID`, when set,
//!   must be ours: systemd sets it for the main pid only).
//! - Workers never see these variables (see [`SYSTEMD_VARS`]): a worker that wrote
//!   READY=1 to the master's supervisor would make it believe the whole service is up.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// At most one STATUS= per this interval.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Variables of the service manager's protocol that belong to the master and must
/// not reach workers (a pool using systemd protocols sets its own).
pub const SYSTEMD_VARS: &[&str] = &[
    "NOTIFY_SOCKET",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// The datagram socket to the service manager.
#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
    display: String,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` (`/path` or `@abstract`); `None` when unset or empty.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(s) if !s.is_empty() => Notifier::to(&s).map(Some),
            _ => Ok(None),
        }
    }

    /// A notifier for an address written as in `NOTIFY_SOCKET`.
    pub fn to(addr: &str) -> io::Result<Notifier> {
        let sock_addr = socket_addr(addr)?;
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        Ok(Notifier {
            sock,
            addr: sock_addr,
            display: addr.to_string(),
        })
    }

    /// Send one datagram (newline-separated `KEY=VALUE` lines).
    pub fn send(&self, msg: &str) -> io::Result<()> {
        self.sock
            .send_to_addr(msg.as_bytes(), &self.addr)
            .map(|_| ())
    }

    pub fn address(&self) -> &str {
        &self.display
    }
}

/// `/path` or `@abstract` (Linux) as a socket address.
pub fn socket_addr(addr: &str) -> io::Result<std::os::unix::net::SocketAddr> {
    if let Some(name) = addr.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
    } else {
        std::os::unix::net::SocketAddr::from_pathname(addr)
    }
}

/// What the supervisor needs to know about the pools, once per loop turn.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Every pool has its count acked and nothing is in flight.
    pub settled: bool,
    /// Acked workers over all pools (progress during a slow start).
    pub acked: usize,
    /// The one-line STATUS= text.
    pub status: String,
    pub shutting_down: bool,
    /// The longest time a worker may take to become ready (EXTEND_TIMEOUT_USEC).
    pub ack_window: Duration,
}

/// The READY/STATUS/WATCHDOG/... decisions, without I/O: each call queues the
/// messages it decides on, and the caller sends what [`Supervisor::take`]
/// returns through the [`Notifier`].
#[derive(Debug, Default)]
pub struct Supervisor {
    /// A service manager is listening (NOTIFY_SOCKET is set): otherwise every
    /// call is a no-op and the loop does no work for it.
    enabled: bool,
    ready_sent: bool,
    /// Inside a reload: RELOADING=1 sent, READY=1 due at its end.
    reloading: bool,
    stopping_sent: bool,
    last_status: Option<String>,
    next_status_at: Option<Instant>,
    last_acked: usize,
    watchdog: Option<Duration>,
    next_watchdog: Option<Instant>,
    outbox: Vec<String>,
}

/// From the environment: `NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`.
pub fn from_env() -> (Supervisor, Option<Notifier>) {
    let notifier = match Notifier::from_env() {
        Ok(n) => n,
        Err(e) => {
            log::warn!("NOTIFY_SOCKET is set but unusable ({e}); not notifying systemd");
            None
        }
    };
    let watchdog = watchdog_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    );
    if let Some(n) = &notifier {
        log::info!(
            "systemd: notifying {}{}",
            n.address(),
            watchdog.map_or(String::new(), |w| format!(", watchdog every {w:?}"))
        );
    }
    (Supervisor::new(notifier.is_some(), watchdog), notifier)
}

impl Supervisor {
    pub fn new(enabled: bool, watchdog: Option<Duration>) -> Supervisor {
        Supervisor {
            enabled,
            watchdog,
            ..Supervisor::default()
        }
    }

    pub fn active(&self) -> bool {
        self.enabled
    }

    /// The messages decided since the last call, in order.
    pub fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.outbox)
    }

    fn send(&mut self, msg: String) {
        if self.enabled {
            self.outbox.push(msg);
        }
    }

    /// Once per loop turn: send what is due; returns when to be woken next.
    pub fn turn(&mut self, now: Instant, snap: &Snapshot) -> Option<Instant> {
        if !self.active() {
            return None;
        }
        if !self.ready_sent && !snap.shutting_down && !self.reloading {
            if snap.settled {
                self.ready_sent = true;
                self.send(format!("READY=1\nSTATUS={}", snap.status));
                self.last_status = Some(snap.status.clone());
                self.next_status_at = Some(now + STATUS_INTERVAL);
            } else if snap.acked > self.last_acked {
                // Progress: one more ack window before systemd's start timeout.
                self.send(format!(
                    "EXTEND_TIMEOUT_USEC={}",
                    (snap.ack_window * 2).as_micros()
                ));
            }
        }
        self.last_acked = snap.acked;
        if self.last_status.as_deref() != Some(snap.status.as_str()) {
            match self.next_status_at {
                Some(at) if at > now => {}
                _ => {
                    self.send(format!("STATUS={}", snap.status));
                    self.last_status = Some(snap.status.clone());
                    self.next_status_at = Some(now + STATUS_INTERVAL);
                }
            }
        }
        if let Some(every) = self.watchdog {
            match self.next_watchdog {
                Some(at) if at > now => {}
                _ => {
                    self.send("WATCHDOG=1".into());
                    self.next_watchdog = Some(now.checked_add(every / 2).unwrap_or(now));
                }
            }
        }
        let status_wake = self
            .next_status_at
            .filter(|_| self.last_status.as_deref() != Some(snap.status.as_str()));
        [status_wake, self.next_watchdog]
            .into_iter()
            .flatten()
            .min()
    }

    /// Before a reload; returns whether this call opened it (nested calls do not).
    pub fn begin_reload(&mut self) -> bool {
        if !self.active() || self.reloading || self.stopping_sent {
            return false;
        }
        self.reloading = true;
        self.send(format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
            monotonic_usec()
        ));
        self.last_status = Some("reloading".into());
        true
    }

    /// After a reload opened by [`Supervisor::begin_reload`].
    pub fn end_reload(&mut self, opened: bool) {
        if opened && self.reloading {
            self.reloading = false;
            // A reload that ended before the first READY (a HUP during the start)
            // does not count as being ready.
            if self.ready_sent {
                self.send("READY=1".into());
            }
        }
    }

    /// On shutdown: STOPPING=1, once.
    pub fn stopping(&mut self) {
        if self.active() && !self.stopping_sent {
            self.stopping_sent = true;
            self.reloading = false;
            self.send("STOPPING=1".into());
        }
    }

    #[cfg(test)]
    pub fn is_ready_sent(&self) -> bool {
        self.ready_sent
    }

    /// Whether READY=1 was sent (carried across a re-exec).
    pub fn ready_sent(&self) -> bool {
        self.ready_sent
    }

    /// A re-executed master: READY=1 was sent by the previous image; the
    /// re-exec itself is a reload (RELOADING=1 was sent before the exec).
    pub fn resume_ready(&mut self, ready_sent: bool) {
        self.ready_sent = ready_sent;
        self.reloading = self.enabled;
    }
}

/// The watchdog interval, if the watchdog is on and meant for `me`.
pub fn watchdog_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(p) = pid {
        if p.trim().parse::<u32>().ok() != Some(me) {
            return None;
        }
    }
    // A floor: a tiny WATCHDOG_USEC must not turn every loop turn into a ping;
    // a ceiling: an absurd one must not overflow a deadline.
    Some(
        Duration::from_micros(usec)
            .max(Duration::from_millis(20))
            .min(Duration::from_secs(7 * 24 * 3600)),
    )
}

/// CLOCK_MONOTONIC in microseconds, as systemd wants for MONOTONIC_USEC.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec that we own.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(settled: bool, acked: usize, status: &str) -> Snapshot {
        Snapshot {
            settled,
            acked,
            status: status.into(),
            shutting_down: false,
            ack_window: Duration::from_secs(2),
        }
    }

    #[test]
    fn ready_once_when_settled_with_extends_while_progressing() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(true, None);
        s.turn(t0, &snap(false, 0, "web 0/3 acked"));
        assert_eq!(s.take(), vec!["STATUS=web 0/3 acked"]);
        s.turn(
            t0 + Duration::from_secs(2),
            &snap(false, 1, "web 1/3 acked"),
        );
        assert_eq!(
            s.take(),
            vec!["EXTEND_TIMEOUT_USEC=4000000", "STATUS=web 1/3 acked"]
        );
        // No progress: no extension.
        s.turn(
            t0 + Duration::from_secs(3),
            &snap(false, 1, "web 1/3 acked"),
        );
        assert!(s.take().is_empty());
        s.turn(t0 + Duration::from_secs(4), &snap(true, 3, "web 3/3 acked"));
        assert_eq!(s.take(), vec!["READY=1\nSTATUS=web 3/3 acked"]);
        s.turn(t0 + Duration::from_secs(9), &snap(true, 3, "web 3/3 acked"));
        assert!(s.take().is_empty());
        assert!(s.is_ready_sent());
    }

    #[test]
    fn status_is_rate_limited_and_the_wakeup_says_when() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(true, None);
        s.turn(t0, &snap(true, 1, "a"));
        s.take();
        let wake = s.turn(t0 + Duration::from_millis(100), &snap(true, 1, "b"));
        assert!(s.take().is_empty());
        assert_eq!(wake, Some(t0 + STATUS_INTERVAL));
        // Changed again before the limit: still one message, the latest text.
        s.turn(t0 + Duration::from_millis(500), &snap(true, 1, "c"));
        assert!(s.take().is_empty());
        let wake = s.turn(t0 + STATUS_INTERVAL, &snap(true, 1, "c"));
        assert_eq!(s.take(), vec!["STATUS=c"]);
        assert_eq!(wake, None);
    }

    #[test]
    fn watchdog_at_half_the_interval() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(true, Some(Duration::from_secs(10)));
        let wake = s.turn(t0, &snap(true, 0, "x"));
        assert!(s.take().contains(&"WATCHDOG=1".to_string()));
        assert_eq!(wake, Some(t0 + Duration::from_secs(5)));
        assert_eq!(
            s.turn(t0 + Duration::from_secs(4), &snap(true, 0, "x")),
            wake
        );
        assert!(s.take().is_empty());
        s.turn(t0 + Duration::from_secs(5), &snap(true, 0, "x"));
        assert_eq!(s.take(), vec!["WATCHDOG=1"]);
    }

    #[test]
    fn reload_and_stop_messages() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(true, None);
        s.turn(t0, &snap(true, 1, "a"));
        s.take();
        let opened = s.begin_reload();
        assert!(opened);
        assert!(!s.begin_reload(), "nested reloads do not open another");
        let sent = s.take();
        assert_eq!(sent.len(), 1);
        assert!(
            sent[0].starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{sent:?}"
        );
        s.end_reload(false);
        assert!(s.take().is_empty());
        s.end_reload(opened);
        assert_eq!(s.take(), vec!["READY=1"]);
        s.stopping();
        s.stopping();
        assert_eq!(s.take(), vec!["STOPPING=1"]);
        assert!(!s.begin_reload(), "no reload once stopping");
    }

    #[test]
    fn no_ready_while_shutting_down_and_inactive_does_nothing() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(true, None);
        let mut sn = snap(true, 1, "a");
        sn.shutting_down = true;
        s.turn(t0, &sn);
        assert_eq!(s.take(), vec!["STATUS=a"]);
        let mut off = Supervisor::new(false, Some(Duration::from_secs(1)));
        assert!(off.take().is_empty());
        assert_eq!(off.turn(t0, &snap(true, 1, "a")), None);
    }

    #[test]
    fn watchdog_pid_must_be_ours() {
        assert_eq!(
            watchdog_from(Some("2000000"), None, 7),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            watchdog_from(Some("2000000"), Some("7"), 7),
            Some(Duration::from_secs(2))
        );
        assert_eq!(watchdog_from(Some("2000000"), Some("8"), 7), None);
        assert_eq!(watchdog_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_from(Some("x"), None, 7), None);
        assert_eq!(watchdog_from(None, None, 7), None);
    }

    #[test]
    fn abstract_and_path_addresses_reach_a_listener() -> io::Result<()> {
        let name = format!("ehy-sdnotify-test-{}", std::process::id());
        let listener = UnixDatagram::bind_addr(&socket_addr(&format!("@{name}"))?)?;
        Notifier::to(&format!("@{name}"))?.send("READY=1")?;
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf)?;
        assert_eq!(&buf[..n], b"READY=1");
        let dir = crate::testutil::TempDir::new("sdn");
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path)?;
        Notifier::to(&path.to_string_lossy())?.send("STOPPING=1")?;
        let n = listener.recv(&mut buf)?;
        assert_eq!(&buf[..n], b"STOPPING=1");
        Ok(())
    }
}
