//! A file the master writes lines into, rotated by size: a worker's
//! `stdout`/`stderr` file and the master's own `[log] file`.
//!
//! Lines are buffered for one loop turn and written with one write(2)
//! ([`RotatingFile::flush`]), so a fast worker costs a syscall per read, not
//! per line. A failing write (a full disk, a file on /dev/full, an
//! unwritable directory) never blocks and never stops anything: the lines
//! are dropped and counted, the file is closed, and opening it again is
//! tried at most once per [`RETRY`]. `reopen` (the `reopen_logs` command,
//! SIGUSR1) closes it so that the next line opens the path afresh: after
//! logrotate renamed it, the master writes to the new file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::output::{rotation_renames, should_rotate};

/// How often a failed file is tried again.
pub const RETRY: Duration = Duration::from_secs(1);
/// Bytes buffered before a write even within a turn.
const BUFFER: usize = 64 * 1024;

/// What happened to the lines of one file, for `status`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FileStats {
    pub lines: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub rotations: u64,
    pub last_error: Option<String>,
}

#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    backups: u32,
    file: Option<File>,
    size: u64,
    pending: Vec<u8>,
    pending_lines: u64,
    retry_at: Option<Instant>,
    pub stats: FileStats,
}

impl RotatingFile {
    /// Nothing is opened until the first line.
    pub fn new(path: PathBuf, max_bytes: u64, backups: u32) -> RotatingFile {
        RotatingFile {
            path,
            max_bytes,
            backups,
            file: None,
            size: 0,
            pending: Vec::new(),
            pending_lines: 0,
            retry_at: None,
            stats: FileStats::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open now (at start, to report a bad path at once).
    pub fn open_now(&mut self) -> io::Result<()> {
        self.open(Instant::now())
    }

    /// Queue one line (without its newline); `cut` marks a piece of a longer one.
    pub fn push_line(&mut self, line: &[u8], cut: bool, now: Instant) {
        let len = line.len() as u64 + 1 + if cut { 6 } else { 0 };
        if self.file.is_none() && self.open(now).is_err() {
            self.stats.dropped += 1;
            return;
        }
        let size = self.size + self.pending.len() as u64;
        if should_rotate(size, len, self.max_bytes) {
            self.flush(now);
            self.rotate(now);
            if self.file.is_none() {
                self.stats.dropped += 1;
                return;
            }
        }
        self.pending.extend_from_slice(line);
        if cut {
            self.pending.extend_from_slice(b" [cut]");
        }
        self.pending.push(b'\n');
        self.pending_lines += 1;
        if self.pending.len() >= BUFFER {
            self.flush(now);
        }
    }

    /// Queue a block of whole lines, each with its newline (`lines` of them).
    pub fn push_block(&mut self, block: &[u8], lines: u64, now: Instant) {
        if self.file.is_none() && self.open(now).is_err() {
            self.stats.dropped += lines;
            return;
        }
        let size = self.size + self.pending.len() as u64;
        if should_rotate(size, block.len() as u64, self.max_bytes) {
            self.flush(now);
            self.rotate(now);
            if self.file.is_none() {
                self.stats.dropped += lines;
                return;
            }
        }
        self.pending.extend_from_slice(block);
        self.pending_lines += lines;
        if self.pending.len() >= BUFFER {
            self.flush(now);
        }
    }

    /// Write what is queued (one write(2) unless the kernel takes less).
    pub fn flush(&mut self, now: Instant) {
        if self.pending.is_empty() {
            return;
        }
        let result = match &mut self.file {
            Some(f) => f.write_all(&self.pending),
            None => Err(io::Error::other("not open")),
        };
        match result {
            Ok(()) => {
                self.size += self.pending.len() as u64;
                self.stats.lines += self.pending_lines;
                self.stats.bytes += self.pending.len() as u64;
            }
            Err(e) => {
                // Part of it may be in the file; the lines count as dropped.
                self.stats.dropped += self.pending_lines;
                self.fail(&e, now);
            }
        }
        self.pending.clear();
        self.pending_lines = 0;
    }

    /// Close; the next line opens the path again (logrotate's create mode).
    pub fn reopen(&mut self, now: Instant) {
        self.flush(now);
        self.file = None;
        self.retry_at = None;
    }

    fn fail(&mut self, e: &io::Error, now: Instant) {
        self.stats.last_error = Some(format!("{}: {e}", self.path.display()));
        self.file = None;
        self.retry_at = Some(now + RETRY);
    }

    fn open(&mut self, now: Instant) -> io::Result<()> {
        if self.retry_at.is_some_and(|t| now < t) {
            return Err(io::Error::other("waiting to retry"));
        }
        let r = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(&self.path)
            .and_then(|f| f.metadata().map(|m| (f, m.len())));
        match r {
            Ok((f, len)) => {
                self.file = Some(f);
                self.size = len;
                self.retry_at = None;
                Ok(())
            }
            Err(e) => {
                self.fail(&e, now);
                Err(e)
            }
        }
    }

    /// `path.N-1` → `path.N` ... `path` → `path.1` (or truncate without
    /// backups), then a fresh `path`.
    fn rotate(&mut self, now: Instant) {
        self.file = None;
        let result = if self.backups == 0 {
            OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&self.path)
                .map(drop)
        } else {
            rotation_renames(&self.path, self.backups)
                .into_iter()
                .try_for_each(|(from, to)| match std::fs::rename(&from, &to) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    other => other,
                })
        };
        match result {
            Ok(()) => self.stats.rotations += 1,
            Err(e) => self.fail(&e, now),
        }
        self.retry_at = None;
        let _ = self.open(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_max_bytes_and_keeps_backups() {
        let dir = crate::testutil::TempDir::new("rot");
        let path = dir.join("a.log");
        let mut f = RotatingFile::new(path.clone(), 100, 2);
        let now = Instant::now();
        for i in 0..30 {
            f.push_line(format!("line {i:04}").as_bytes(), false, now);
            f.flush(now);
        }
        // 10 bytes a line: 10 lines a file, newest in a.log.
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        assert!(read(&path).starts_with("line 0020\n"), "{}", read(&path));
        assert!(read(&dir.join("a.log.1")).starts_with("line 0010\n"));
        assert!(read(&dir.join("a.log.2")).starts_with("line 0000\n"));
        assert!(!dir.join("a.log.3").exists());
        assert!(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) <= 100);
        assert_eq!(
            (f.stats.lines, f.stats.dropped, f.stats.rotations),
            (30, 0, 2)
        );
    }

    #[test]
    fn a_full_device_drops_and_counts() {
        let mut f = RotatingFile::new(PathBuf::from("/dev/full"), 0, 0);
        let now = Instant::now();
        for _ in 0..3 {
            f.push_line(b"x", false, now);
        }
        f.flush(now);
        // The next lines come before the retry time: dropped at once.
        f.push_line(b"y", false, now);
        f.flush(now);
        assert_eq!(f.stats.dropped, 4);
        assert_eq!(f.stats.lines, 0);
        assert!(f.stats.last_error.is_some());
    }
}
