//! `einhyrningsinsctl top [--pool P] [INTERVAL]`: a live view of the master's
//! pools and workers (state, version, age, RSS, CPU, restarts), refreshed in
//! place every INTERVAL (default 1s) from the `stats` command over the control
//! socket, so it needs no metrics listener. `q` (or Ctrl-C) quits.
//!
//! The terminal is put in raw mode (termios) on the alternate screen and
//! restored on every way out: `q`, an error, a panic (the guard's `Drop`), and
//! SIGINT/SIGTERM/SIGHUP/SIGQUIT (flags set by the handlers; the loop notices
//! them when `poll` is interrupted and leaves through the guard).

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::conn::{self, Conn, CtlError};
use crate::Settings;

const STDIN: RawFd = 0;

/// The terminal as it was, put back when dropped.
struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    fn enter() -> io::Result<RawTerminal> {
        // SAFETY: tcgetattr fills the struct it is given; zeroed is a valid
        // termios to start from.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(STDIN, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output processing so that "\n" still returns the carriage.
        raw.c_oflag |= libc::OPOST;
        if unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // Alternate screen, cursor hidden.
        let mut out = io::stdout().lock();
        let _ = out.write_all(b"\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J");
        let _ = out.flush();
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let mut out = io::stdout().lock();
        let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
        // SAFETY: restores the settings read by `enter`.
        unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, &self.saved) };
    }
}

/// Rows and columns of the terminal (80x24 if unknown).
fn size() -> (usize, usize) {
    // SAFETY: TIOCGWINSZ fills a winsize.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_row > 0 && ws.ws_col > 0 {
        (usize::from(ws.ws_row), usize::from(ws.ws_col))
    } else {
        (24, 80)
    }
}

/// Wait up to `timeout` for a key; `Some(bytes)` read, `None` on timeout or
/// a signal.
fn key(timeout: Duration) -> Option<Vec<u8>> {
    let mut fds = [libc::pollfd {
        fd: STDIN,
        events: libc::POLLIN,
        revents: 0,
    }];
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
    if n <= 0 {
        return None;
    }
    let mut buf = [0u8; 64];
    // SAFETY: reads into our buffer.
    let r = unsafe { libc::read(STDIN, buf.as_mut_ptr().cast(), buf.len()) };
    match r {
        // End of input (the terminal went away): as good as `q`.
        0 => Some(b"q".to_vec()),
        r if r > 0 => Some(buf[..r as usize].to_vec()),
        _ => None,
    }
}

fn mib(b: Option<u64>) -> String {
    match b {
        Some(b) => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
        None => "-".into(),
    }
}

fn age(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 86400 {
        format!("{}d{:02}h", s / 86400, (s % 86400) / 3600)
    } else if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// CPU use between two refreshes, in percent of one core.
struct CpuRate {
    last: HashMap<i64, (f64, Instant)>,
}

impl CpuRate {
    fn percent(&mut self, pid: i64, cpu: Option<f64>, now: Instant) -> String {
        let Some(cpu) = cpu else {
            return "-".into();
        };
        let shown = match self.last.get(&pid) {
            Some((c, t)) if now > *t => {
                let p = (cpu - c) / (now - *t).as_secs_f64() * 100.0;
                format!("{:.1}", p.max(0.0))
            }
            _ => "..".into(),
        };
        self.last.insert(pid, (cpu, now));
        shown
    }
}

/// The screen for one `stats` document (pure but for the CPU rates' memory).
fn screen(stats: &Value, rates: &mut CpuRate, now: Instant, rows: usize, cols: usize) -> String {
    let mut lines: Vec<String> = Vec::new();
    let m = &stats["master"];
    let mpid = m["pid"].as_i64().unwrap_or(0);
    lines.push(format!(
        "einhyrningsins {}  pid {}  up {}  rss {}  cpu {}%  fds {}    (q quits)",
        stats["version"].as_str().unwrap_or("?"),
        mpid,
        age(stats["uptime_seconds"].as_f64().unwrap_or(0.0)),
        mib(m["rss_bytes"].as_u64()),
        rates.percent(-mpid, m["cpu_seconds"].as_f64(), now),
        m["open_fds"].as_u64().map_or("-".into(), |n| n.to_string()),
    ));
    for p in stats["pools"].as_array().into_iter().flatten() {
        let workers = p["workers"].as_array().cloned().unwrap_or_default();
        let acked = workers.iter().filter(|w| w["state"] == "acked").count();
        let mut flags = String::new();
        if p["upgrading"] == true {
            flags.push_str(", upgrading");
        }
        if p["removing"] == true {
            flags.push_str(", removed (draining)");
        }
        if let Some(t) = p["respawn_in_seconds"].as_f64() {
            flags.push_str(&format!(", respawn in {t:.1}s"));
        }
        lines.push(String::new());
        lines.push(format!(
            "POOL {}: {}/{} acked, {} worker(s), version {}, restarts {}, failures {}{}",
            p["name"].as_str().unwrap_or("?"),
            acked,
            p["desired"].as_u64().unwrap_or(0),
            workers.len(),
            p["version"].as_u64().unwrap_or(0),
            p["restarts"].as_u64().unwrap_or(0),
            p["failures"].as_u64().unwrap_or(0),
            flags
        ));
        lines.push(format!(
            "  {:>8} {:>5} {:>7} {:<9} {:>8} {:>11} {:>6} {:>9}",
            "PID", "INDEX", "VERSION", "STATE", "AGE", "RSS", "CPU%", "CPU TIME"
        ));
        for w in &workers {
            let pid = w["pid"].as_i64();
            let cpu = w["cpu_seconds"].as_f64();
            lines.push(format!(
                "  {:>8} {:>5} {:>7} {:<9} {:>8} {:>11} {:>6} {:>9}",
                pid.map_or("-".into(), |p| p.to_string()),
                w["index"].as_u64().unwrap_or(0),
                w["version"].as_u64().unwrap_or(0),
                w["state"].as_str().unwrap_or("?"),
                age(w["age_seconds"].as_f64().unwrap_or(0.0)),
                mib(w["rss_bytes"].as_u64()),
                pid.map_or("-".into(), |p| rates.percent(p, cpu, now)),
                cpu.map_or("-".into(), |c| format!("{c:.2}s")),
            ));
        }
    }
    // Forget pids that are gone.
    let live: std::collections::HashSet<i64> = stats["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["workers"].as_array().cloned().unwrap_or_default())
        .filter_map(|w| w["pid"].as_i64())
        .chain([-mpid])
        .collect();
    rates.last.retain(|pid, _| live.contains(pid));
    let hidden = lines.len().saturating_sub(rows);
    if hidden > 0 {
        lines.truncate(rows.saturating_sub(1));
        lines.push(format!(
            "... {} more line(s): make the window taller",
            hidden + 1
        ));
    }
    let mut out = String::from("\x1b[H");
    for l in &lines {
        let cut: String = l.chars().take(cols).collect();
        out.push_str(&cut);
        out.push_str("\x1b[K\r\n");
    }
    out.push_str("\x1b[J");
    out
}

fn interval(args: &[String]) -> Result<Duration, String> {
    match args {
        [] => Ok(Duration::from_secs(1)),
        [s] => match crate::parse_timeout(s) {
            Ok(d) if d >= Duration::from_millis(100) => Ok(d),
            Ok(_) => Err("the interval is at least 100ms".into()),
            Err(e) => Err(e),
        },
        _ => Err("usage: einhyrningsinsctl top [--pool P] [INTERVAL]".into()),
    }
}

/// Run `top`; the exit status.
pub fn run(settings: &Settings, pool: Option<&str>, args: &[String]) -> u8 {
    let every = match interval(args) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("einhyrningsinsctl: top: {e}");
            return 2;
        }
    };
    // SAFETY: isatty only inspects the fd.
    if unsafe { libc::isatty(STDIN) } != 1 || unsafe { libc::isatty(1) } != 1 {
        eprintln!(
            "einhyrningsinsctl: top needs a terminal (for a one-off view: `stats`, or `status`)"
        );
        return 2;
    }
    let quit = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGQUIT,
    ] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&quit)) {
            eprintln!("einhyrningsinsctl: top: cannot handle signal {sig}: {e}");
            return 1;
        }
    }
    // A resize interrupts poll: the next loop turn redraws at the new size.
    let _ = signal_hook::flag::register(
        signal_hook::consts::SIGWINCH,
        Arc::new(AtomicBool::new(false)),
    );
    let mut conn = match Conn::connect(&settings.path) {
        Ok(c) => c,
        Err(e) => return crate::report(&e),
    };
    let guard = match RawTerminal::enter() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("einhyrningsinsctl: top: cannot set up the terminal: {e}");
            return 1;
        }
    };
    let result = view(&mut conn, settings, pool, every, &quit);
    drop(guard);
    match result {
        Ok(()) => 0,
        Err(e) => crate::report(&e),
    }
}

fn view(
    conn: &mut Conn,
    settings: &Settings,
    pool: Option<&str>,
    every: Duration,
    quit: &AtomicBool,
) -> Result<(), CtlError> {
    let mut rates = CpuRate {
        last: HashMap::new(),
    };
    let mut id = 1;
    let mut next = Instant::now();
    while !quit.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next {
            id += 1;
            let req = conn::request("stats", &[], id, pool, None);
            let mut doc = None;
            let mut err = None;
            conn.request(&req, settings.timeout_for("stats"), &mut |r| {
                if r.reply.error {
                    err = Some(r.reply.message.clone());
                } else {
                    doc = serde_json::from_str::<Value>(&r.reply.message).ok();
                }
                Ok(())
            })?;
            let (rows, cols) = size();
            let text = match (doc, err) {
                (Some(d), _) => screen(&d, &mut rates, Instant::now(), rows, cols),
                (None, Some(e)) => format!("\x1b[H\x1b[2Jthe master says: {e}\r\n(q quits)\r\n"),
                (None, None) => "\x1b[H\x1b[2Junreadable stats reply\r\n".to_string(),
            };
            let mut out = io::stdout().lock();
            out.write_all(text.as_bytes()).map_err(CtlError::Stdout)?;
            out.flush().map_err(CtlError::Stdout)?;
            next = now + every;
        }
        if let Some(k) = key(next.saturating_duration_since(Instant::now())) {
            // q, Q, Ctrl-C (raw mode: no SIGINT), Ctrl-D.
            if k.iter().any(|b| matches!(b, b'q' | b'Q' | 3 | 4)) {
                break;
            }
            // Any other key refreshes now.
            next = Instant::now();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_screen_shows_pools_workers_and_fits_the_window() {
        let stats = serde_json::json!({
            "version": "0.1.0", "uptime_seconds": 75.0,
            "master": {"pid": 1, "rss_bytes": 5242880, "cpu_seconds": 0.5, "open_fds": 12},
            "pools": [{"name": "web", "desired": 2, "version": 3, "upgrading": true,
                       "removing": false, "failures": 0, "respawn_in_seconds": null,
                       "restarts": 4,
                       "workers": [{"pid": 42, "index": 0, "version": 3, "state": "acked",
                                    "age_seconds": 3700.0, "rss_bytes": 1048576,
                                    "cpu_seconds": 1.25}]}]
        });
        let mut rates = CpuRate {
            last: HashMap::new(),
        };
        let t0 = Instant::now();
        let s = screen(&stats, &mut rates, t0, 24, 120);
        assert!(
            s.contains("POOL web: 1/2 acked, 1 worker(s), version 3, restarts 4"),
            "{s}"
        );
        assert!(s.contains("upgrading"), "{s}");
        assert!(s.contains("1h01m"), "{s}");
        assert!(s.contains("1.0 MiB"), "{s}");
        assert!(s.contains("up 1m15s"), "{s}");
        // The second refresh has a rate.
        let mut later = stats.clone();
        later["pools"][0]["workers"][0]["cpu_seconds"] = serde_json::json!(1.75);
        let s = screen(&later, &mut rates, t0 + Duration::from_secs(1), 24, 120);
        assert!(s.contains(" 50.0 "), "{s}");
        // A small window: cut, and says so.
        let s = screen(&stats, &mut rates, t0, 3, 20);
        assert_eq!(s.matches("\r\n").count(), 3, "{s}");
        assert!(s.contains("more line(s)"), "{s}");
        let visible = s
            .replace("\x1b[H", "")
            .replace("\x1b[K", "")
            .replace("\x1b[J", "");
        assert!(
            visible
                .lines()
                .all(|l| l.trim_end_matches('\r').chars().count() <= 20),
            "{visible}"
        );
    }

    #[test]
    fn the_interval_is_checked() {
        assert_eq!(interval(&[]), Ok(Duration::from_secs(1)));
        assert_eq!(interval(&["250ms".into()]), Ok(Duration::from_millis(250)));
        assert!(interval(&["1ms".into()]).is_err());
        assert!(interval(&["x".into()]).is_err());
        assert!(interval(&["1".into(), "2".into()]).is_err());
    }
}
