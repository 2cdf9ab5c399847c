//! Request framings written by the Ruby versions einhorn's own client has run
//! on (its test suite pins Ruby 1.8, 1.9, 2.0 and 2.1+ output of the same
//! message): the master must read them all.

use einhyrningsins::control::codec::{decode, Encoding};

#[test]
fn every_ruby_generations_framing_decodes() {
    let forms: [&[u8]; 4] = [
        // Ruby 1.8 (syck): trailing spaces after "---" and after an empty key.
        b"--- %0A:command: signal%0A:args: %0A- \"%25bar\"%0A- \"%25baz\"%0A\n",
        // Ruby 1.9: the non-specific tag "!" before quoted scalars.
        b"---%0A:command: signal%0A:args:%0A- ! '%25bar'%0A- ! '%25baz'%0A\n",
        // Ruby 2.0: single quotes.
        b"---%0A:command: signal%0A:args:%0A- '%25bar'%0A- '%25baz'%0A\n",
        // Ruby 2.1 and later: double quotes.
        b"---%0A:command: signal%0A:args:%0A- \"%25bar\"%0A- \"%25baz\"%0A\n",
    ];
    for form in forms {
        let text = String::from_utf8_lossy(form);
        let req = match decode(form.strip_suffix(b"\n").unwrap_or(form)) {
            Ok(r) => r,
            Err(e) => panic!("{text}: {e}"),
        };
        assert_eq!(req.encoding, Encoding::Yaml, "{text}");
        assert_eq!(req.command, "signal", "{text}");
        assert_eq!(req.args, vec!["%bar", "%baz"], "{text}");
    }
}

#[test]
fn stacked_tags_are_refused_not_recursed() {
    let mut line = b"---%0Acommand: x%0Aargs:%0A- ".to_vec();
    for _ in 0..30_000 {
        line.extend_from_slice(b"! ");
    }
    line.extend_from_slice(b"'y'%0A");
    assert!(decode(&line).is_err());
}
