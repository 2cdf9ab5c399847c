//! Psych's rules (Ruby 3.x, `Psych::Visitors::YAMLTree#visit_String` and
//! `Psych::ScalarScanner#tokenize`) for which strings must be quoted so they read
//! back as strings. Ruby's `^`/`$` are line anchors; the callers only reach these
//! checks with strings whose newlines (if any) are trailing, so matching the first
//! line is what Ruby does.

fn is_word(c: char) -> bool {
    // Ruby's [[:word:]] is Letter | Mark | Decimal_Number | Connector_Punctuation;
    // alphanumeric plus `_` matches it for everything but rare marks and digits.
    c.is_alphanumeric() || c == '_'
}

/// The character class of tokenize's "looks like a string" regex.
fn stringish(c: char) -> bool {
    c.is_alphabetic()
        || c == '_'
        || matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r')
        || "!@#$%^&*(){}<>|/\\~;=".contains(c)
}

/// `o =~ /\n(?!\Z)/`: a newline that is not the last character nor followed by
/// a final newline. Such strings get a literal block.
pub(super) fn has_inner_newline(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter()
        .enumerate()
        .any(|(i, &c)| c == b'\n' && !(i + 1 == b.len() || (i + 2 == b.len() && b[i + 1] == b'\n')))
}

/// `o =~ /^[^[:word:]][^"]*$/`: some line starts with a non-word character and
/// holds no `"` up to its end. Such strings get double quotes.
pub(super) fn nonword_line_without_quote(s: &str) -> bool {
    let mut at_line_start = true;
    let mut iter = s.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        // Ruby's ^ does not match at the very end after a trailing newline.
        if at_line_start && !is_word(c) {
            let rest = &s[i + c.len_utf8()..];
            let line_end = if c == '\n' {
                0
            } else {
                rest.find('\n').unwrap_or(rest.len())
            };
            if !rest[..line_end].contains('"') {
                return true;
            }
        }
        at_line_start = c == '\n' && iter.peek().is_some();
    }
    false
}

/// `ScalarScanner#tokenize` returns a String (not nil, a boolean, a number, a
/// symbol, a date or a time) for this text.
pub(super) fn tokenizes_as_string(s: &str) -> bool {
    if s.is_empty() {
        return false;
    }
    let line = s.split('\n').next().unwrap_or("");
    let mut cs = s.chars();
    let c0 = cs.next().unwrap_or(' ');
    let c1 = cs.next();
    let digitish = |c: char| c.is_ascii_digit() || matches!(c, '.' | ':' | '-');
    if stringish(c0) || (!digitish(c0) && c1.is_some_and(stringish)) {
        if s.chars().count() > 5 {
            return true;
        }
        if !"ytonfYTONF~".contains(c0) {
            return true;
        }
        let l = line.to_ascii_lowercase();
        return !(s == "~"
            || matches!(
                l.as_str(),
                "null" | "yes" | "true" | "on" | "no" | "false" | "off"
            ));
    }
    let lower = line.to_ascii_lowercase();
    if is_time(line) || is_date(line) {
        return false;
    }
    if matches!(lower.as_str(), ".inf" | "+.inf" | "-.inf" | ".nan") {
        return false;
    }
    if line.starts_with(':') && line.len() > 1 {
        return false; // a Symbol
    }
    if is_sexagesimal(line) {
        return false;
    }
    if is_float(line) {
        return matches!(s.trim_end_matches('\n'), "." | "+." | "-.")
            && s.len() - s.trim_end_matches('\n').len() <= 1;
    }
    !is_legacy_int(line)
}

/// `/\A0[0-7]*[89]/`: looks like a bad octal number; Psych single-quotes it.
pub(super) fn bad_octal(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('0') else {
        return false;
    };
    let rest = rest.trim_start_matches(|c: char| ('0'..='7').contains(&c));
    rest.starts_with(['8', '9'])
}

/// Psych's `binary?`: holds NUL, or more than 30% ASCII control characters.
pub(super) fn is_binary(s: &str) -> bool {
    let len = s.chars().count();
    let ctl = s
        .chars()
        .filter(|c| c.is_ascii() && !(matches!(c, ' '..='~') || matches!(c, '\t' | '\r' | '\n')))
        .count();
    s.contains('\0') || (len > 0 && ctl * 10 > len * 3)
}

fn digits(b: &[u8], k: &mut usize, min: usize, max: usize) -> bool {
    let start = *k;
    while *k < b.len() && *k - start < max && b[*k].is_ascii_digit() {
        *k += 1;
    }
    *k - start >= min
}

fn eat(b: &[u8], k: &mut usize, c: u8) -> bool {
    if b.get(*k) == Some(&c) {
        *k += 1;
        true
    } else {
        false
    }
}

fn skip_ws(b: &[u8], k: &mut usize) -> usize {
    let start = *k;
    while *k < b.len() && matches!(b[*k], b' ' | b'\t' | b'\n' | b'\x0B' | b'\x0C' | b'\r') {
        *k += 1;
    }
    *k - start
}

/// Psych's TIME regex.
fn is_time(s: &str) -> bool {
    let b = s.as_bytes();
    let mut k = 0;
    eat(b, &mut k, b'-');
    if !(digits(b, &mut k, 4, 4)
        && eat(b, &mut k, b'-')
        && digits(b, &mut k, 1, 2)
        && eat(b, &mut k, b'-')
        && digits(b, &mut k, 1, 2))
    {
        return false;
    }
    if !(eat(b, &mut k, b'T') || eat(b, &mut k, b't') || skip_ws(b, &mut k) > 0) {
        return false;
    }
    if !(digits(b, &mut k, 1, 2)
        && eat(b, &mut k, b':')
        && digits(b, &mut k, 2, 2)
        && eat(b, &mut k, b':')
        && digits(b, &mut k, 2, 2))
    {
        return false;
    }
    if eat(b, &mut k, b'.') {
        digits(b, &mut k, 0, usize::MAX);
    }
    skip_ws(b, &mut k);
    if k == b.len() || (eat(b, &mut k, b'Z') && k == b.len()) {
        return true;
    }
    if !(eat(b, &mut k, b'+') || eat(b, &mut k, b'-')) {
        return false;
    }
    // [-+]\d{1,2}:?(\d\d)?
    let zone = &s[k..];
    match zone.split_once(':') {
        Some((h, m)) => {
            (1..=2).contains(&h.len())
                && h.bytes().all(|c| c.is_ascii_digit())
                && (m.is_empty() || (m.len() == 2 && m.bytes().all(|c| c.is_ascii_digit())))
        }
        None => (1..=4).contains(&zone.len()) && zone.bytes().all(|c| c.is_ascii_digit()),
    }
}

/// Psych's date regex plus `Date.strptime` accepting the date.
fn is_date(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return false;
    };
    let num = |p: &str, lo: usize, hi: usize| {
        (lo..=hi).contains(&p.len()) && p.bytes().all(|c| c.is_ascii_digit())
    };
    if !(num(y, 4, 4) && num(m, 1, 2) && num(d, 1, 2)) {
        return false;
    }
    let (Ok(y), Ok(m), Ok(d)) = (y.parse::<u32>(), m.parse::<u32>(), d.parse::<u32>()) else {
        return false;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&d)
}

/// `[-+]?[0-9][0-9_]*(:[0-5]?[0-9]){1,2}` optionally followed by `\.[0-9_]*`.
fn is_sexagesimal(s: &str) -> bool {
    let b = s.as_bytes();
    let mut k = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        k += 1;
    }
    if !b.get(k).is_some_and(u8::is_ascii_digit) {
        return false;
    }
    while k < b.len() && (b[k].is_ascii_digit() || b[k] == b'_') {
        k += 1;
    }
    let mut groups = 0;
    while groups < 2 && eat(b, &mut k, b':') {
        // [0-5]?[0-9]
        let start = k;
        digits(b, &mut k, 1, 2);
        let g = &b[start..k];
        let ok = match g {
            [_] => true,
            [a, _] => *a <= b'5',
            _ => false,
        };
        if !ok {
            return false;
        }
        groups += 1;
    }
    if groups == 0 {
        return false;
    }
    if eat(b, &mut k, b'.') {
        while k < b.len() && (b[k].is_ascii_digit() || b[k] == b'_') {
            k += 1;
        }
    }
    k == b.len()
}

/// Psych's FLOAT regex: `[-+]?([0-9][0-9_,]*)?\.[0-9]*([eE][-+][0-9]+)?`.
pub(super) fn is_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut k = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        k += 1;
    }
    if b.get(k).is_some_and(u8::is_ascii_digit) {
        while k < b.len() && (b[k].is_ascii_digit() || b[k] == b'_' || b[k] == b',') {
            k += 1;
        }
    }
    if !eat(b, &mut k, b'.') {
        return false;
    }
    digits(b, &mut k, 0, usize::MAX);
    let has_exponent = eat(b, &mut k, b'e') || eat(b, &mut k, b'E');
    if has_exponent
        && (!(eat(b, &mut k, b'+') || eat(b, &mut k, b'-')) || !digits(b, &mut k, 1, usize::MAX))
    {
        return false;
    }
    k == b.len()
}

/// Psych's INTEGER_LEGACY regex (commas and underscores allowed).
pub(super) fn is_legacy_int(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let all = |r: &str, ok: fn(u8) -> bool| {
        !r.is_empty() && r.bytes().all(|c| ok(c) || c == b'_' || c == b',')
    };
    if let Some(r) = body.strip_prefix("0b") {
        return all(r, |c| c == b'0' || c == b'1');
    }
    if let Some(r) = body.strip_prefix("0x") {
        return all(r, |c| c.is_ascii_hexdigit());
    }
    if body == "0" {
        return true;
    }
    if let Some(r) = body.strip_prefix('0') {
        return all(r, |c| (b'0'..=b'7').contains(&c));
    }
    // [1-9](?:[0-9]|,[0-9]|_[0-9])*
    let b = body.as_bytes();
    if !b.first().is_some_and(|c| (b'1'..=b'9').contains(c)) {
        return false;
    }
    let mut k = 1;
    while k < b.len() {
        if b[k].is_ascii_digit() {
            k += 1;
        } else if (b[k] == b',' || b[k] == b'_') && b.get(k + 1).is_some_and(u8::is_ascii_digit) {
            k += 2;
        } else {
            return false;
        }
    }
    true
}

/// Value of a legacy integer (None when it does not fit an i64).
pub(super) fn int_value(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let clean: String = body.chars().filter(|c| *c != '_' && *c != ',').collect();
    let v = if let Some(r) = clean.strip_prefix("0b") {
        i64::from_str_radix(r, 2)
    } else if let Some(r) = clean.strip_prefix("0x") {
        i64::from_str_radix(r, 16)
    } else if clean.len() > 1 && clean.starts_with('0') {
        i64::from_str_radix(&clean[1..], 8)
    } else {
        clean.parse::<i64>()
    }
    .ok()?;
    Some(if neg { -v } else { v })
}
