//! What the master reads about processes from /proc: parents (to tell whether a
//! control client is a worker or one of its descendants), and later memory and
//! CPU. Every read is of one small file; a process that is gone reads as
//! nothing.

use std::fs;

/// Parent pid of `pid` (/proc/PID/stat field 4), or `None` if it is gone.
pub fn parent(pid: i32) -> Option<i32> {
    with_stat(pid, |mut fields| fields.nth(1)?.parse().ok())
}

/// `pid`'s ancestors, nearest first, up to (not including) pid 1 or `stop`,
/// at most `max` of them. Empty if `pid` is gone.
pub fn ancestors(pid: i32, stop: i32, max: usize) -> Vec<i32> {
    let mut out = Vec::new();
    let mut cur = pid;
    while out.len() < max {
        match parent(cur) {
            Some(p) if p > 1 && p != stop => {
                out.push(p);
                cur = p;
            }
            _ => break,
        }
    }
    out
}

/// Resident set size of `pid` in bytes, `None` if gone.
pub fn rss(pid: i32) -> Option<u64> {
    usage(pid).map(|u| u.rss_bytes)
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

/// CPU time and memory of one process, from one read of /proc/PID/stat.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// User plus system time.
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

/// `pid`'s CPU time and RSS (/proc/PID/stat fields 14, 15 and 24), `None` if gone.
pub fn usage(pid: i32) -> Option<Usage> {
    with_stat(pid, |mut f| {
        let utime: u64 = f.nth(11)?.parse().ok()?;
        let stime: u64 = f.next()?.parse().ok()?;
        let rss_pages: u64 = f.nth(8)?.parse().ok()?;
        Some(Usage {
            cpu_seconds: (utime + stime) as f64 / clock_ticks(),
            rss_bytes: rss_pages * page_size(),
        })
    })
}

/// The fields of /proc/PID/stat from field 3 (state) on, to `read`: field N
/// is the iterator's item N - 3. A scrape reads this for every worker: one
/// open, one read into a stack buffer, one close (read_to_string would add a
/// statx and a second read). The line is well under 1 KiB (the command name
/// is at most 16 bytes).
fn with_stat<T>(
    pid: i32,
    read: impl FnOnce(std::str::SplitWhitespace<'_>) -> Option<T>,
) -> Option<T> {
    use std::io::Read;
    let mut f = fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let mut buf = [0u8; 1024];
    let n = f.read(&mut buf).ok()?;
    let line = buf.get(..n)?;
    // The command name (field 2) may hold any bytes, spaces and parentheses
    // included: what follows its last ')' is ASCII.
    let close = line.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(line.get(close + 1..)?).ok()?;
    read(rest.split_whitespace())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if n > 0 {
        n as f64
    } else {
        100.0
    }
}

/// How many fds `pid` has open (entries of /proc/PID/fd), `None` if unreadable.
pub fn open_fds(pid: i32) -> Option<u64> {
    let n = fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    // Our own count includes the directory being read.
    Some(if pid == std::process::id() as i32 {
        n.saturating_sub(1)
    } else {
        n
    })
}

/// Whether `pid` exists (a zombie counts: it still has its /proc entry).
pub fn exists(pid: i32) -> bool {
    fs::metadata(format!("/proc/{pid}")).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_ancestry_is_read_and_a_gone_pid_has_none() {
        let me = std::process::id() as i32;
        let ppid = nix::unistd::getppid().as_raw();
        assert_eq!(parent(me), Some(ppid));
        let chain = ancestors(me, 0, 64);
        if ppid > 1 {
            assert_eq!(chain.first(), Some(&ppid));
        }
        assert!(!chain.contains(&1));
        assert!(exists(me));
        assert!(
            rss(me).is_some_and(|b| b > 100_000),
            "our RSS: {:?}",
            rss(me)
        );
        let u = usage(me).expect("our usage");
        assert!(u.rss_bytes > 100_000 && u.cpu_seconds >= 0.0, "{u:?}");
        // Same pages as statm, give or take what the test allocated meanwhile.
        let statm = rss(me).unwrap_or(0);
        assert!(u.rss_bytes.abs_diff(statm) < 64 << 20, "{u:?} vs {statm}");
        assert!(open_fds(me).is_some_and(|n| n >= 3));
        assert_eq!(usage(i32::MAX), None);
        // Pids are at most 2^22 on Linux.
        assert_eq!(parent(i32::MAX), None);
        assert!(ancestors(i32::MAX, 0, 64).is_empty());
    }
}
