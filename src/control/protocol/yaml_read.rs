//! Reader for the YAML that Ruby's Psych writes for a flat hash: `key: scalar`,
//! `key: []`, `key:` followed by `- item` lines, plain / single-quoted /
//! double-quoted scalars (folded over several lines when long) and literal block
//! scalars. Everything else is refused with the line and what was unexpected.
//! Line-based, no recursion, linear time.

use super::{DecodeError, Resolved};
use std::collections::HashSet;

/// A scalar's text; `plain` scalars still need type resolution.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Scalar {
    pub text: String,
    pub plain: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    Scalar(Scalar),
    Seq(Vec<Scalar>),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    pub key: String,
    pub node: Node,
}

fn err(line: usize, message: impl Into<String>) -> DecodeError {
    DecodeError::Yaml {
        line: line + 1,
        message: message.into(),
    }
}

pub(super) fn is_blank(l: &str) -> bool {
    l.bytes().all(|b| b == b' ' || b == b'\t')
}

fn is_comment(l: &str) -> bool {
    l.trim_start_matches([' ', '\t']).starts_with('#')
}

fn indent_of(l: &str) -> usize {
    l.bytes().take_while(|&b| b == b' ').count()
}

fn trim_ws(s: &str) -> &str {
    s.trim_start_matches([' ', '\t'])
}

/// `---` / `...` document markers: the marker, then end of line or blank.
fn marker<'l>(l: &'l str, m: &str) -> Option<&'l str> {
    let rest = l.strip_prefix(m)?;
    (rest.is_empty() || rest.starts_with([' ', '\t'])).then_some(rest)
}

fn blank_or_comment(rest: &str) -> bool {
    let t = trim_ws(rest);
    t.is_empty() || (t.starts_with('#') && t.len() < rest.len())
}

fn is_seq_item(after_indent: &str) -> bool {
    after_indent == "-" || after_indent.starts_with("- ") || after_indent.starts_with("-\t")
}

/// Byte index of the `:` ending a plain key (`:` then blank or end of line). The
/// search starts at 1 so Ruby symbol keys (`:command: x`) keep their colon.
fn key_separator(l: &str) -> Option<usize> {
    let b = l.as_bytes();
    (1..b.len())
        .find(|&p| b[p] == b':' && (p + 1 == b.len() || b[p + 1] == b' ' || b[p + 1] == b'\t'))
}

/// Whether a line could start a bare (no `---`) mapping.
pub(super) fn looks_like_key_line(l: &str) -> bool {
    !l.starts_with([
        ' ', '\t', '#', '[', ']', '{', '}', '?', '&', '*', '!', '|', '>', '%', '@', '`', ',', '-',
        '"', '\'',
    ]) && key_separator(l).is_some()
}

pub(super) fn document(doc: &str) -> Result<Vec<Entry>, DecodeError> {
    let mut lines: Vec<&str> = doc.split('\n').collect();
    if doc.ends_with('\n') {
        lines.pop();
    }
    Parser { lines, i: 0 }.document()
}

#[derive(Clone, Copy, PartialEq)]
enum Chomp {
    Strip,
    Clip,
    Keep,
}

struct Parser<'a> {
    lines: Vec<&'a str>,
    /// Next line to read.
    i: usize,
}

impl<'a> Parser<'a> {
    fn skip_blank_and_comments(&mut self) {
        while self.i < self.lines.len()
            && (is_blank(self.lines[self.i]) || is_comment(self.lines[self.i]))
        {
            self.i += 1;
        }
    }

    /// Next line that is neither blank nor a comment, from `from`.
    fn peek_content(&self, from: usize) -> Option<usize> {
        (from..self.lines.len()).find(|&j| !is_blank(self.lines[j]) && !is_comment(self.lines[j]))
    }

    fn document(mut self) -> Result<Vec<Entry>, DecodeError> {
        self.skip_blank_and_comments();
        if let Some(&l) = self.lines.get(self.i) {
            if l.starts_with('%') {
                return Err(err(self.i, "YAML directives are not supported"));
            }
            if let Some(rest) = marker(l, "---") {
                if !blank_or_comment(rest) {
                    return Err(err(
                        self.i,
                        format!("expected a mapping after ---, found {:?}", rest.trim()),
                    ));
                }
                self.i += 1;
            }
        }
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        loop {
            self.skip_blank_and_comments();
            let Some(&l) = self.lines.get(self.i) else {
                break;
            };
            if let Some(rest) = marker(l, "...") {
                if !blank_or_comment(rest) {
                    return Err(err(self.i, "unexpected text after ..."));
                }
                self.i += 1;
                self.skip_blank_and_comments();
                if self.i < self.lines.len() {
                    return Err(err(self.i, "content after the end of the document"));
                }
                break;
            }
            if marker(l, "---").is_some() {
                return Err(err(self.i, "only one document per line is supported"));
            }
            if l.starts_with([' ', '\t']) {
                return Err(err(
                    self.i,
                    "unexpected indentation (keys start in column 0)",
                ));
            }
            let line = self.i;
            let (key, col) = self.key(l)?;
            let node = self.value(col)?;
            if !seen.insert(key.clone()) {
                return Err(err(line, format!("duplicate key {key:?}")));
            }
            entries.push(Entry { key, node });
        }
        if entries.is_empty() {
            return Err(err(
                self.lines.len().saturating_sub(1),
                "the document holds no mapping",
            ));
        }
        Ok(entries)
    }

    /// Parses the key of the line at `self.i`; returns it and the byte column
    /// just after its `:`.
    fn key(&mut self, l: &str) -> Result<(String, usize), DecodeError> {
        let line = self.i;
        if l.starts_with(['\'', '"']) {
            let (text, _, end) = self.quoted(line, 0, false)?;
            let after = &l[end..];
            let t = trim_ws(after);
            let colon = end + (after.len() - t.len());
            if !t.starts_with(':') || !(t.len() == 1 || t[1..].starts_with([' ', '\t'])) {
                return Err(err(line, "expected \": \" after a quoted key"));
            }
            return Ok((text, colon + 1));
        }
        if marker(l, "?").is_some() {
            return Err(err(line, "complex keys (?) are not supported"));
        }
        if is_seq_item(l) {
            return Err(err(line, "expected a mapping, found a list"));
        }
        if let Some(c) = l.chars().next().filter(|c| "[]{}&*!|>%@`,#".contains(*c)) {
            return Err(err(line, format!("unexpected {c:?} at the start of a key")));
        }
        if marker(l, ":").is_some() {
            return Err(err(line, "empty key"));
        }
        let p = key_separator(l)
            .ok_or_else(|| err(line, format!("expected \"key: value\", found {l:?}")))?;
        let key = l[..p].trim_end_matches([' ', '\t']);
        // Ruby symbol keys (`:command:`) name the same field as string keys.
        let key = key.strip_prefix(':').unwrap_or(key);
        Ok((key.to_string(), p + 1))
    }

    /// A mapping value starting at byte `col` of line `self.i`.
    fn value(&mut self, col: usize) -> Result<Node, DecodeError> {
        let line = self.i;
        let rest = &self.lines[line][col..];
        let t = trim_ws(rest);
        let tcol = col + (rest.len() - t.len());
        if t.is_empty() || t.starts_with('#') {
            self.i += 1;
            let Some(j) = self.peek_content(self.i) else {
                return Ok(null());
            };
            let l = self.lines[j];
            let d = indent_of(l);
            if is_seq_item(&l[d..]) {
                self.i = j;
                return self.block_seq(d).map(Node::Seq);
            }
            if d > 0 {
                return Err(err(
                    j,
                    "nested mappings and values on the line after their key are not supported",
                ));
            }
            return Ok(null());
        }
        if let Some(after) = t.strip_prefix("[]") {
            if !blank_or_comment(after) {
                return Err(err(line, "unexpected text after []"));
            }
            self.i += 1;
            return Ok(Node::Seq(Vec::new()));
        }
        if t.starts_with('[') {
            return Err(err(line, "flow lists other than [] are not supported"));
        }
        self.scalar(line, tcol, 0).map(Node::Scalar)
    }

    /// Items of a block list whose dashes sit in column `d`.
    fn block_seq(&mut self, d: usize) -> Result<Vec<Scalar>, DecodeError> {
        let mut items = Vec::new();
        loop {
            self.skip_blank_and_comments();
            let Some(&l) = self.lines.get(self.i) else {
                break;
            };
            let ind = indent_of(l);
            if ind < d {
                break;
            }
            if ind > d {
                return Err(err(self.i, "unexpected indentation in a list"));
            }
            if !is_seq_item(&l[d..]) {
                if d == 0 {
                    break;
                }
                return Err(err(self.i, "expected a list item (- ...)"));
            }
            items.push(self.item(d)?);
        }
        Ok(items)
    }

    fn item(&mut self, d: usize) -> Result<Scalar, DecodeError> {
        let line = self.i;
        let col = d + 1;
        let rest = &self.lines[line][col..];
        let t = trim_ws(rest);
        let tcol = col + (rest.len() - t.len());
        if t.is_empty() || t.starts_with('#') {
            self.i += 1;
            if let Some(j) = self.peek_content(self.i) {
                if indent_of(self.lines[j]) > d {
                    return Err(err(j, "nested collections in a list are not supported"));
                }
            }
            return Ok(Scalar {
                text: String::new(),
                plain: true,
            });
        }
        if is_seq_item(t) || t.starts_with('[') {
            return Err(err(line, "nested lists are not supported"));
        }
        self.scalar(line, tcol, d)
    }

    /// A scalar starting at byte `col` of `line`; continuation lines must be
    /// indented deeper than `parent`. Leaves `self.i` after its last line.
    fn scalar(&mut self, line: usize, col: usize, parent: usize) -> Result<Scalar, DecodeError> {
        let t = &self.lines[line][col..];
        // Ruby 1.9's Psych wrote the non-specific tag ("! 'x'"); "!!str" is
        // the explicit string tag. Both just mean: a string.
        for tag in ["!!str ", "! "] {
            if let Some(rest) = t.strip_prefix(tag) {
                let value = trim_ws(rest);
                // One tag only: no recursion driven by the input.
                if !value.is_empty() && !value.starts_with('!') {
                    let skip = t.len() - value.len();
                    let mut s = self.scalar(line, col + skip, parent)?;
                    s.plain = false;
                    return Ok(s);
                }
            }
        }
        let mut chars = t.chars();
        let c = chars.next().unwrap_or(' ');
        let blank_next = chars.next().is_none_or(|n| n == ' ' || n == '\t');
        match c {
            '\'' | '"' => {
                let (text, end_line, end) = self.quoted(line, col, true)?;
                let after = &self.lines[end_line][end..];
                if !blank_or_comment(after) {
                    return Err(err(
                        end_line,
                        format!("unexpected text after a quoted value: {:?}", after.trim()),
                    ));
                }
                self.i = end_line + 1;
                Ok(Scalar { text, plain: false })
            }
            '|' => Ok(Scalar {
                text: self.literal(line, col, parent)?,
                plain: false,
            }),
            '>' => Err(err(line, "folded block scalars (>) are not supported")),
            '{' => Err(err(line, "flow mappings are not supported")),
            '&' | '*' => Err(err(line, "anchors and aliases are not supported")),
            '!' => Err(err(line, "tags are not supported")),
            ',' | ']' | '}' | '%' | '@' | '`' => {
                Err(err(line, format!("a plain value cannot start with {c:?}")))
            }
            '-' | '?' | ':' if blank_next => Err(err(line, format!("unexpected {c:?} indicator"))),
            _ => self.plain(line, col, parent),
        }
    }

    fn plain(&mut self, line: usize, col: usize, parent: usize) -> Result<Scalar, DecodeError> {
        let (first, mut ended) = plain_line(&self.lines[line][col..], line)?;
        let mut text = first.to_string();
        self.i = line + 1;
        let mut j = self.i;
        let mut blanks = 0;
        while !ended && j < self.lines.len() {
            let l = self.lines[j];
            if is_blank(l) {
                blanks += 1;
                j += 1;
                continue;
            }
            let t = trim_ws(l);
            if indent_of(l) <= parent || t.starts_with('#') {
                break;
            }
            let (part, comment) = plain_line(t, j)?;
            // Folding: one line break is a space, each blank line a newline.
            if blanks == 0 {
                text.push(' ');
            }
            for _ in 0..blanks {
                text.push('\n');
            }
            text.push_str(part);
            blanks = 0;
            ended = comment;
            j += 1;
            self.i = j;
        }
        Ok(Scalar { text, plain: true })
    }

    /// A single- or double-quoted scalar opening at byte `col` of `line`.
    /// Returns its text and the line and byte just after the closing quote.
    fn quoted(
        &self,
        line: usize,
        col: usize,
        multiline: bool,
    ) -> Result<(String, usize, usize), DecodeError> {
        let double = self.lines[line].as_bytes()[col] == b'"';
        let mut out = String::new();
        let mut j = line;
        let mut pos = col + 1;
        loop {
            let l = self.lines[j];
            // Start (in `out`) of the raw blanks ending the line: folding drops them.
            let mut blanks_from: Option<usize> = None;
            let mut escaped_break = false;
            let mut chars = l[pos..].char_indices();
            while let Some((k, c)) = chars.next() {
                if !double && c == '\'' {
                    if chars.as_str().starts_with('\'') {
                        chars.next();
                        out.push('\'');
                        blanks_from = None;
                        continue;
                    }
                    return Ok((out, j, pos + k + 1));
                }
                if double && c == '"' {
                    return Ok((out, j, pos + k + 1));
                }
                if double && c == '\\' {
                    let Some((_, e)) = chars.next() else {
                        escaped_break = true;
                        break;
                    };
                    out.push(
                        unescape_char(e, &mut chars)
                            .ok_or_else(|| err(j, format!("invalid escape \\{e}")))?,
                    );
                    blanks_from = None;
                    continue;
                }
                if c == ' ' || c == '\t' {
                    blanks_from.get_or_insert(out.len());
                } else {
                    blanks_from = None;
                }
                out.push(c);
            }
            if !multiline {
                return Err(err(j, "unterminated quoted key"));
            }
            if !escaped_break {
                if let Some(from) = blanks_from {
                    out.truncate(from);
                }
            }
            j += 1;
            let mut empty = 0;
            while j < self.lines.len() && is_blank(self.lines[j]) {
                empty += 1;
                j += 1;
            }
            let Some(&next) = self.lines.get(j) else {
                return Err(err(line, "unterminated quoted value"));
            };
            if marker(next, "---").is_some() || marker(next, "...").is_some() {
                return Err(err(line, "unterminated quoted value"));
            }
            if !escaped_break && empty == 0 {
                out.push(' ');
            }
            for _ in 0..empty {
                out.push('\n');
            }
            pos = next.len() - trim_ws(next).len();
        }
    }

    /// A literal block scalar whose `|` header sits at byte `col` of `line`.
    fn literal(&mut self, line: usize, col: usize, parent: usize) -> Result<String, DecodeError> {
        let mut rest = &self.lines[line][col + 1..];
        let mut chomp = None;
        let mut explicit = None;
        for _ in 0..2 {
            match rest.as_bytes().first() {
                Some(b'-') if chomp.is_none() => chomp = Some(Chomp::Strip),
                Some(b'+') if chomp.is_none() => chomp = Some(Chomp::Keep),
                Some(&d @ b'1'..=b'9') if explicit.is_none() => {
                    explicit = Some(usize::from(d - b'0'))
                }
                _ => break,
            }
            rest = &rest[1..];
        }
        if !blank_or_comment(rest) {
            return Err(err(
                line,
                format!(
                    "bad block scalar header {:?}",
                    self.lines[line][col..].trim()
                ),
            ));
        }
        let chomp = chomp.unwrap_or(Chomp::Clip);
        let spaces_only = |l: &str| l.bytes().all(|b| b == b' ');
        let mut j = line + 1;
        let indent = match explicit {
            Some(m) => parent + m,
            None => {
                let mut k = j;
                let mut widest_blank = 0;
                while k < self.lines.len() && spaces_only(self.lines[k]) {
                    widest_blank = widest_blank.max(self.lines[k].len());
                    k += 1;
                }
                match self.lines.get(k).map(|l| indent_of(l)) {
                    Some(ind) if ind > parent => {
                        if widest_blank > ind {
                            return Err(err(
                                k,
                                "a leading blank line is more indented than the text",
                            ));
                        }
                        ind
                    }
                    _ => parent + 1,
                }
            }
        };
        let mut body: Vec<Option<&str>> = Vec::new();
        while let Some(&l) = self.lines.get(j) {
            if spaces_only(l) {
                body.push(l.get(indent..).filter(|s| !s.is_empty()));
            } else if indent_of(l) < indent {
                break;
            } else {
                body.push(Some(&l[indent..]));
            }
            j += 1;
        }
        self.i = j;
        let mut text = String::new();
        let last = body.iter().rposition(Option::is_some);
        let trailing = body.len() - last.map_or(0, |li| li + 1);
        if let Some(li) = last {
            for (k, part) in body[..=li].iter().enumerate() {
                if k > 0 {
                    text.push('\n');
                }
                text.push_str(part.unwrap_or(""));
            }
            if chomp != Chomp::Strip {
                text.push('\n');
            }
        }
        if chomp == Chomp::Keep {
            for _ in 0..trailing {
                text.push('\n');
            }
        }
        Ok(text)
    }
}

fn null() -> Node {
    Node::Scalar(Scalar {
        text: String::new(),
        plain: true,
    })
}

/// One line of a plain scalar: the text up to a ` #` comment, right-trimmed,
/// and whether a comment ended it.
fn plain_line(s: &str, line: usize) -> Result<(&str, bool), DecodeError> {
    let b = s.as_bytes();
    for k in 0..b.len() {
        match b[k] {
            b':' if k + 1 == b.len() || b[k + 1] == b' ' || b[k + 1] == b'\t' => {
                return Err(err(
                    line,
                    "nested mappings are not supported (quote text that holds \": \")",
                ));
            }
            b'#' if k > 0 && (b[k - 1] == b' ' || b[k - 1] == b'\t') => {
                return Ok((s[..k].trim_end_matches([' ', '\t']), true));
            }
            _ => {}
        }
    }
    Ok((s.trim_end_matches([' ', '\t']), false))
}

/// The character a double-quoted escape `\e` stands for (`chars` supplies the
/// hex digits of `\x`, `\u`, `\U`).
fn unescape_char(e: char, chars: &mut std::str::CharIndices<'_>) -> Option<char> {
    let hex = |n: usize, chars: &mut std::str::CharIndices<'_>| {
        let mut v: u32 = 0;
        for _ in 0..n {
            v = v * 16 + chars.next()?.1.to_digit(16)?;
        }
        char::from_u32(v)
    };
    Some(match e {
        '0' => '\0',
        'a' => '\x07',
        'b' => '\x08',
        't' | '\t' => '\t',
        'n' => '\n',
        'v' => '\x0B',
        'f' => '\x0C',
        'r' => '\r',
        'e' => '\x1B',
        ' ' => ' ',
        '"' => '"',
        '/' => '/',
        '\\' => '\\',
        'N' => '\u{85}',
        '_' => '\u{A0}',
        'L' => '\u{2028}',
        'P' => '\u{2029}',
        'x' => hex(2, chars)?,
        'u' => hex(4, chars)?,
        'U' => hex(8, chars)?,
        _ => return None,
    })
}

/// Type of a plain scalar as Psych reads it (YAML 1.1: `~`/null, yes/no/on/off,
/// integers with `_` and `,`, 0x/0b/octal, floats with a dot).
pub(super) fn resolve_plain(s: &str) -> Resolved {
    let is = |words: &[&str]| words.iter().any(|w| s.eq_ignore_ascii_case(w));
    if is(&["", "~", "null"]) {
        return Resolved::Null;
    }
    if is(&["yes", "true", "on"]) {
        return Resolved::Bool(true);
    }
    if is(&["no", "false", "off"]) {
        return Resolved::Bool(false);
    }
    if is(&[".inf", "+.inf"]) {
        return Resolved::Float(f64::INFINITY);
    }
    if is(&["-.inf"]) {
        return Resolved::Float(f64::NEG_INFINITY);
    }
    if is(&[".nan"]) {
        return Resolved::Float(f64::NAN);
    }
    if super::psych::is_legacy_int(s) {
        return super::psych::int_value(s).map_or(Resolved::Str, Resolved::Int);
    }
    if super::psych::is_float(s) && !matches!(s, "." | "+." | "-.") {
        let cleaned: String = s.chars().filter(|c| *c != '_' && *c != ',').collect();
        let cleaned = cleaned.replace(".e", "e").replace(".E", "E");
        let cleaned = cleaned.strip_suffix('.').unwrap_or(&cleaned);
        return cleaned
            .parse::<f64>()
            .map_or(Resolved::Str, Resolved::Float);
    }
    Resolved::Str
}
