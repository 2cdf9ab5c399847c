//! The recent lines of one pool, for `logs`: bounded by lines and by bytes,
//! outliving every worker (and carried across a re-exec). Pure.

use std::collections::VecDeque;

use super::Stream;

/// Lines kept per pool.
pub const RING_LINES: usize = 2000;
/// Bytes of text kept per pool.
pub const RING_BYTES: usize = 1024 * 1024;

/// One captured line.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// Order across every pool of the master.
    pub seq: u64,
    /// Unix time in milliseconds.
    pub at_ms: u64,
    pub index: u32,
    pub pid: i32,
    pub stream: Stream,
    pub text: String,
    /// A piece of a line longer than the cut size.
    #[serde(default)]
    pub cut: bool,
}

impl Entry {
    /// `2026-12-02T17:00:00.123Z web[0] pid 42 stdout: text`
    pub fn render(&self, pool: &str) -> String {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.at_ms);
        format!(
            "{} {pool}[{}] pid {} {}: {}{}",
            humantime::format_rfc3339_millis(at),
            self.index,
            self.pid,
            self.stream.as_str(),
            self.text,
            if self.cut { " [cut]" } else { "" }
        )
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Ring {
    lines: VecDeque<Entry>,
    bytes: usize,
}

impl Ring {
    pub fn push(&mut self, e: Entry) {
        self.bytes += e.text.len();
        self.lines.push_back(e);
        while self.lines.len() > RING_LINES || (self.bytes > RING_BYTES && self.lines.len() > 1) {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.text.len();
            }
        }
    }

    /// The last `n` lines, oldest first.
    pub fn last(&self, n: usize) -> impl Iterator<Item = &Entry> {
        self.lines.iter().skip(self.lines.len().saturating_sub(n))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, text: &str) -> Entry {
        Entry {
            seq,
            at_ms: 0,
            index: 1,
            pid: 7,
            stream: Stream::Stderr,
            text: text.into(),
            cut: false,
        }
    }

    #[test]
    fn the_ring_is_bounded_by_lines_and_bytes() {
        let mut r = Ring::default();
        for i in 0..(RING_LINES as u64 + 10) {
            r.push(entry(i, "x"));
        }
        assert_eq!(r.len(), RING_LINES);
        assert_eq!(r.last(1).next().map(|e| e.seq), Some(RING_LINES as u64 + 9));
        assert_eq!(r.last(3).count(), 3);
        let big = "y".repeat(RING_BYTES / 4);
        for i in 0..10 {
            r.push(entry(i, &big));
        }
        assert!(r.bytes() <= RING_BYTES, "{}", r.bytes());
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn an_entry_renders_with_its_pool_index_pid_and_stream() {
        let mut e = entry(1, "hello");
        e.cut = true;
        assert_eq!(
            e.render("web"),
            "1970-01-01T00:00:00.000Z web[1] pid 7 stderr: hello [cut]"
        );
    }
}
