//! Writer: a port of the parts of libyaml's emitter (as Psych drives it: best
//! width 80, indent 2, unicode on) that a flat hash of strings, integers and
//! lists of strings uses, so replies come out as einhorn's master writes them.

use super::psych;
use serde_json::Value;

const BEST_WIDTH: usize = 80;
/// Indentation of a scalar inside the top-level mapping or a list item.
const INDENT: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Style {
    Plain,
    Single,
    Double,
    Literal,
}

fn is_break(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// libyaml's IS_PRINTABLE (which leaves out tab, CR and everything past the BMP).
fn is_printable(c: char) -> bool {
    matches!(c, '\n' | '\u{20}'..='\u{7E}' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
        && c != '\u{FEFF}'
}

fn is_blankz(c: Option<&char>) -> bool {
    c.is_none_or(|c| *c == ' ' || *c == '\t' || is_break(*c))
}

/// Style Psych asks for, then the style libyaml settles on (`analyze_scalar`
/// and `select_scalar_style`).
pub(super) fn choose_style(s: &str) -> Style {
    let wanted = if psych::is_binary(s) {
        // Psych writes `!binary` base64 here; double quotes with escapes read back
        // as the same text without a tag.
        Style::Double
    } else if psych::has_inner_newline(s) {
        Style::Literal
    } else if s == "<<" {
        // Psych adds an explicit `!!str` tag; quoting alone reads back the same.
        Style::Single
    } else if s == "y" || s == "n" || psych::nonword_line_without_quote(s) {
        Style::Double
    } else if !psych::tokenizes_as_string(s) || psych::bad_octal(s) {
        Style::Single
    } else {
        Style::Plain
    };
    let chars: Vec<char> = s.chars().collect();
    if chars.is_empty() {
        // Psych tokenizes "" as nil, so it always asks for (and gets) ''.
        return Style::Single;
    }
    let mut block_indicators = s.starts_with("---") || s.starts_with("...");
    let (mut special, mut line_breaks) = (false, false);
    let (mut leading_space, mut leading_break, mut trailing_space, mut trailing_break) =
        (false, false, false, false);
    let (mut break_space, mut space_break) = (false, false);
    let (mut previous_space, mut previous_break) = (false, false);
    let mut preceded_by_ws = true;
    let mut followed_by_ws = is_blankz(chars.get(1));
    let last = chars.len() - 1;
    for (i, &c) in chars.iter().enumerate() {
        if i == 0 {
            if "#,[]{}&*!|>'\"%@`".contains(c) || (matches!(c, '?' | ':' | '-') && followed_by_ws) {
                block_indicators = true;
            }
        } else if (c == ':' && followed_by_ws) || (c == '#' && preceded_by_ws) {
            block_indicators = true;
        }
        // Line and paragraph separators are printable to libyaml but written raw
        // they fold differently across YAML readers: escape them instead.
        if !is_printable(c) || matches!(c, '\u{2028}' | '\u{2029}') {
            special = true;
        }
        if is_break(c) {
            line_breaks = true;
        }
        if c == ' ' {
            leading_space |= i == 0;
            trailing_space |= i == last;
            break_space |= previous_break;
            (previous_space, previous_break) = (true, false);
        } else if is_break(c) {
            leading_break |= i == 0;
            trailing_break |= i == last;
            space_break |= previous_space;
            (previous_space, previous_break) = (false, true);
        } else {
            (previous_space, previous_break) = (false, false);
        }
        preceded_by_ws = is_blankz(Some(&c));
        followed_by_ws = is_blankz(chars.get(i + 2));
    }
    let mut plain_ok = !(leading_space || leading_break || trailing_space || trailing_break);
    let mut single_ok = true;
    let mut block_ok = !trailing_space;
    if break_space {
        plain_ok = false;
        single_ok = false;
    }
    if space_break || special {
        plain_ok = false;
        single_ok = false;
        block_ok = false;
    }
    if line_breaks || block_indicators {
        plain_ok = false;
    }
    match wanted {
        Style::Plain if plain_ok => Style::Plain,
        Style::Plain | Style::Single if single_ok => Style::Single,
        Style::Literal if block_ok => Style::Literal,
        _ => Style::Double,
    }
}

pub(super) struct Emitter {
    out: String,
    column: usize,
    whitespace: bool,
    indention: bool,
    /// A `|+` block was written: libyaml then ends the stream with `...`.
    open_ended: bool,
}

impl Emitter {
    pub(super) fn new() -> Self {
        let mut e = Emitter {
            out: String::new(),
            column: 0,
            whitespace: true,
            indention: true,
            open_ended: false,
        };
        e.write_indent(0);
        e.write_indicator("---", true, false, false);
        e
    }

    pub(super) fn finish(mut self) -> String {
        self.write_indent(0);
        if self.open_ended {
            self.write_indicator("...", true, false, false);
            self.write_indent(0);
        }
        self.out
    }

    pub(super) fn key(&mut self, k: &str) {
        self.write_indent(0);
        for c in k.chars() {
            self.put(c);
        }
        self.whitespace = false;
        self.indention = false;
        self.write_indicator(":", false, false, false);
    }

    /// A plain scalar known to need no quoting (numbers, booleans).
    pub(super) fn plain(&mut self, text: &str) {
        self.write_plain(text);
    }

    pub(super) fn string(&mut self, s: &str) {
        match choose_style(s) {
            Style::Plain => self.write_plain(s),
            Style::Single => self.write_single(s),
            Style::Double => self.write_double(s),
            Style::Literal => self.write_literal(s),
        }
    }

    /// A JSON scalar the way Psych writes the matching Ruby object.
    pub(super) fn value(&mut self, v: &Value) {
        match v {
            Value::String(s) => self.string(s),
            Value::Bool(b) => self.plain(if *b { "true" } else { "false" }),
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => self.plain(&i.to_string()),
                (None, Some(u), _) => self.plain(&u.to_string()),
                (None, None, Some(f)) => {
                    // Ruby's Float#to_s always has a dot; Psych needs one to read
                    // the text back as a Float.
                    let mut t = format!("{f}");
                    if !t.contains(['.', 'e', 'E']) {
                        t.push_str(".0");
                    }
                    self.plain(&t)
                }
                _ => self.string(&n.to_string()),
            },
            Value::Null => self.write_plain(""),
            other => self.string(&other.to_string()),
        }
    }

    pub(super) fn seq(&mut self, items: &[String]) {
        if items.is_empty() {
            self.write_indicator("[", true, true, false);
            self.write_indicator("]", false, false, false);
            return;
        }
        for item in items {
            self.write_indent(0);
            self.write_indicator("-", true, false, true);
            self.string(item);
        }
    }

    fn put(&mut self, c: char) {
        self.out.push(c);
        self.column += 1;
    }

    fn put_break(&mut self) {
        self.out.push('\n');
        self.column = 0;
    }

    fn write_break(&mut self, c: char) {
        if c == '\n' {
            self.put_break();
        } else {
            self.out.push(c);
            self.column = 0;
        }
    }

    fn write_indent(&mut self, indent: usize) {
        if !self.indention || self.column > indent || (self.column == indent && !self.whitespace) {
            self.put_break();
        }
        while self.column < indent {
            self.put(' ');
        }
        self.whitespace = true;
        self.indention = true;
    }

    fn write_indicator(
        &mut self,
        indicator: &str,
        need_whitespace: bool,
        is_whitespace: bool,
        is_indention: bool,
    ) {
        if need_whitespace && !self.whitespace {
            self.put(' ');
        }
        for c in indicator.chars() {
            self.put(c);
        }
        self.whitespace = is_whitespace;
        self.indention = self.indention && is_indention;
    }

    fn write_plain(&mut self, s: &str) {
        if !self.whitespace && !s.is_empty() {
            self.put(' ');
        }
        let chars: Vec<char> = s.chars().collect();
        let (mut spaces, mut breaks) = (false, false);
        for (i, &c) in chars.iter().enumerate() {
            if c == ' ' {
                if !spaces && self.column > BEST_WIDTH && chars.get(i + 1) != Some(&' ') {
                    self.write_indent(INDENT);
                } else {
                    self.put(c);
                }
                spaces = true;
            } else if is_break(c) {
                if !breaks && c == '\n' {
                    self.put_break();
                }
                self.write_break(c);
                self.indention = true;
                breaks = true;
            } else {
                if breaks {
                    self.write_indent(INDENT);
                }
                self.put(c);
                self.indention = false;
                spaces = false;
                breaks = false;
            }
        }
        self.whitespace = false;
        self.indention = false;
    }

    fn write_single(&mut self, s: &str) {
        self.write_indicator("'", true, false, false);
        let chars: Vec<char> = s.chars().collect();
        let last = chars.len().saturating_sub(1);
        let (mut spaces, mut breaks) = (false, false);
        for (i, &c) in chars.iter().enumerate() {
            if c == ' ' {
                if !spaces
                    && self.column > BEST_WIDTH
                    && i != 0
                    && i != last
                    && chars.get(i + 1) != Some(&' ')
                {
                    self.write_indent(INDENT);
                } else {
                    self.put(c);
                }
                spaces = true;
            } else if is_break(c) {
                if !breaks && c == '\n' {
                    self.put_break();
                }
                self.write_break(c);
                self.indention = true;
                breaks = true;
            } else {
                if breaks {
                    self.write_indent(INDENT);
                }
                if c == '\'' {
                    self.put('\'');
                }
                self.put(c);
                self.indention = false;
                spaces = false;
                breaks = false;
            }
        }
        if breaks {
            self.write_indent(INDENT);
        }
        self.write_indicator("'", false, false, false);
        self.whitespace = false;
        self.indention = false;
    }

    fn write_double(&mut self, s: &str) {
        self.write_indicator("\"", true, false, false);
        let chars: Vec<char> = s.chars().collect();
        let last = chars.len().saturating_sub(1);
        let mut spaces = false;
        for (i, &c) in chars.iter().enumerate() {
            if !is_printable(c) || c == '\u{FEFF}' || is_break(c) || c == '"' || c == '\\' {
                self.put('\\');
                match c {
                    '\0' => self.put('0'),
                    '\x07' => self.put('a'),
                    '\x08' => self.put('b'),
                    '\t' => self.put('t'),
                    '\n' => self.put('n'),
                    '\x0B' => self.put('v'),
                    '\x0C' => self.put('f'),
                    '\r' => self.put('r'),
                    '\x1B' => self.put('e'),
                    '"' => self.put('"'),
                    '\\' => self.put('\\'),
                    '\u{85}' => self.put('N'),
                    '\u{A0}' => self.put('_'),
                    '\u{2028}' => self.put('L'),
                    '\u{2029}' => self.put('P'),
                    _ => {
                        let v = u32::from(c);
                        let (tag, width) = match v {
                            0..=0xFF => ('x', 2),
                            0x100..=0xFFFF => ('u', 4),
                            _ => ('U', 8),
                        };
                        self.put(tag);
                        for k in (0..width).rev() {
                            let digit = (v >> (k * 4)) & 0xF;
                            self.put(
                                char::from_digit(digit, 16).map_or('0', |d| d.to_ascii_uppercase()),
                            );
                        }
                    }
                }
                spaces = false;
            } else if c == ' ' {
                if !spaces && self.column > BEST_WIDTH && i != 0 && i != last {
                    self.write_indent(INDENT);
                    if chars.get(i + 1) == Some(&' ') {
                        self.put('\\');
                    }
                } else {
                    self.put(c);
                }
                spaces = true;
            } else {
                self.put(c);
                spaces = false;
            }
        }
        self.write_indicator("\"", false, false, false);
        self.whitespace = false;
        self.indention = false;
    }

    fn write_literal(&mut self, s: &str) {
        self.write_indicator("|", true, false, false);
        let chars: Vec<char> = s.chars().collect();
        if chars.first().is_some_and(|c| *c == ' ' || is_break(*c)) {
            self.write_indicator("2", false, false, false);
        }
        let n = chars.len();
        let chomp = if n == 0 || !is_break(chars[n - 1]) {
            Some("-")
        } else if n == 1 || is_break(chars[n - 2]) {
            self.open_ended = true;
            Some("+")
        } else {
            None
        };
        if let Some(h) = chomp {
            self.write_indicator(h, false, false, false);
        }
        self.put_break();
        self.indention = true;
        self.whitespace = true;
        let mut breaks = true;
        for &c in &chars {
            if is_break(c) {
                self.write_break(c);
                self.indention = true;
                breaks = true;
            } else {
                if breaks {
                    self.write_indent(INDENT);
                }
                self.put(c);
                self.indention = false;
                breaks = false;
            }
        }
    }
}
