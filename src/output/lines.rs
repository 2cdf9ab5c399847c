//! Whole lines out of a byte stream read in arbitrary chunks. Pure.
//!
//! A line is emitted when its newline arrives; a partial line is carried
//! across reads. Memory is bounded: a line longer than [`MAX_LINE`] bytes is
//! emitted in pieces of [`MAX_LINE`] bytes, each marked cut (the rest of
//! the line follows as the next piece), so one worker that never writes a
//! newline costs at most [`MAX_LINE`] bytes of the master's memory.

/// Longest line kept whole (16 KiB); longer ones are cut into pieces.
pub const MAX_LINE: usize = 16 * 1024;

/// Which stream of a worker a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The partial line of one stream.
#[derive(Debug, Default, Clone)]
pub struct LineAssembler {
    partial: Vec<u8>,
}

impl LineAssembler {
    /// What is carried across reads (for a re-exec).
    pub fn pending(&self) -> &[u8] {
        &self.partial
    }

    /// An assembler that carries on with `pending` (from a re-exec's state).
    pub fn with_pending(mut pending: Vec<u8>) -> LineAssembler {
        pending.truncate(MAX_LINE);
        LineAssembler { partial: pending }
    }

    /// Feed one chunk; `emit(line, cut)` gets each line without its newline
    /// (`cut`: a [`MAX_LINE`] piece of a longer line).
    pub fn feed(&mut self, mut data: &[u8], emit: &mut impl FnMut(&[u8], bool)) {
        while !data.is_empty() {
            let room = MAX_LINE - self.partial.len();
            match data.iter().position(|&b| b == b'\n') {
                Some(i) if i <= room => {
                    self.emit(&data[..i], false, emit);
                    data = &data[i + 1..];
                }
                _ if data.len() <= room => {
                    self.partial.extend_from_slice(data);
                    return;
                }
                _ => {
                    let (piece, rest) = data.split_at(room);
                    self.emit(piece, true, emit);
                    data = rest;
                }
            }
        }
    }

    /// The stream ended (or its worker exited): a partial last line is emitted.
    pub fn flush(&mut self, emit: &mut impl FnMut(&[u8], bool)) {
        if !self.partial.is_empty() {
            emit(&self.partial, false);
            self.partial.clear();
        }
    }

    fn emit(&mut self, tail: &[u8], cut: bool, emit: &mut impl FnMut(&[u8], bool)) {
        if self.partial.is_empty() {
            emit(tail, cut);
        } else {
            self.partial.extend_from_slice(tail);
            emit(&self.partial, cut);
            self.partial.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]], flush: bool) -> Vec<(String, bool)> {
        let mut a = LineAssembler::default();
        let mut out = Vec::new();
        let mut emit =
            |l: &[u8], cut: bool| out.push((String::from_utf8_lossy(l).into_owned(), cut));
        for c in chunks {
            a.feed(c, &mut emit);
        }
        if flush {
            a.flush(&mut emit);
        }
        out
    }

    #[test]
    fn lines_are_whole_across_chunks() {
        assert_eq!(
            run(&[b"a\nb", b"c\n", b"\n", b"d"], false),
            [
                ("a".into(), false),
                ("bc".into(), false),
                (String::new(), false)
            ]
        );
        assert_eq!(
            run(&[b"a\nb", b"c\n", b"d"], true).last(),
            Some(&("d".to_string(), false))
        );
        assert!(run(&[b""], true).is_empty());
    }

    #[test]
    fn long_lines_are_cut_into_marked_pieces_and_memory_stays_bounded() {
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let mut data = long.clone();
        data.extend_from_slice(b"\nok\n");
        // Fed in odd chunk sizes, the result is the same.
        for size in [1, 7, 4096, MAX_LINE, data.len()] {
            let chunks: Vec<&[u8]> = data.chunks(size).collect();
            let mut a = LineAssembler::default();
            let mut out = Vec::new();
            for c in &chunks {
                a.feed(c, &mut |l: &[u8], cut| out.push((l.len(), cut)));
                assert!(a.pending().len() <= MAX_LINE);
            }
            assert_eq!(
                out,
                [(MAX_LINE, true), (MAX_LINE, true), (5, false), (2, false)],
                "chunks of {size}"
            );
        }
        // A line of exactly MAX_LINE bytes is whole.
        let mut exact = vec![b'y'; MAX_LINE];
        exact.push(b'\n');
        let got = run(&[&exact[..MAX_LINE], &exact[MAX_LINE..]], false);
        assert_eq!(got.len(), 1);
        assert!(!got[0].1);
    }

    #[test]
    fn a_pending_line_survives_a_reexec() {
        let mut a = LineAssembler::with_pending(b"hal".to_vec());
        let mut out = Vec::new();
        a.feed(b"f\n", &mut |l: &[u8], _| out.push(l.to_vec()));
        assert_eq!(out, [b"half".to_vec()]);
    }
}
