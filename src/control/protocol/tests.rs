use super::*;
use serde_json::json;

type R = Result<(), Box<dyn std::error::Error>>;

/// Samples from reference/einhorn-wire.md, written by einhorn 0.8.2 (Ruby 3.1).
const ACK: &[u8] = b"---%0Acommand: worker:ack%0Apid: 4242%0A\n";
const PING: &[u8] = b"---%0Acommand: worker:ping%0Apid: 4242%0Arequest_id: req-17%0A\n";
const EHLO: &[u8] = b"---%0Acommand: ehlo%0Auser: deploy%0A\n";
const SIGNAL: &[u8] = b"---%0Aid: 1%0Acommand: signal%0Aargs:%0A- HUP%0A- USR1%0A\n";
const UPGRADE: &[u8] = b"---%0Aid: 2%0Acommand: upgrade%0Aargs: []%0A\n";
const REPLY_WAIT: &[u8] =
    b"---%0Amessage: Upgrading smoothly, as commanded%0Arequest_id: 2%0Await: true%0A\n";
const REPLY_FINAL: &[u8] = b"---%0Amessage: Upgrade done%0Arequest_id: 2%0A\n";
const REPLY_OLD: &[u8] = b"---%0Amessage: Could not parse command%0A\n";
const REPLY_PERCENT: &[u8] = b"---%0Amessage: |%0A  100%25 done%0A  line two%0Arequest_id: 3%0A\n";

fn dec(line: &[u8]) -> Result<Request, DecodeFailure> {
    decode(line.strip_suffix(b"\n").unwrap_or(line))
}

fn yaml_of(s: &str) -> String {
    let bytes = encode(&Reply::new(s, None), Encoding::Yaml);
    unescape(String::from_utf8_lossy(&bytes).trim_end_matches('\n'))
}

fn err_of(line: &[u8]) -> Result<DecodeFailure, Box<dyn std::error::Error>> {
    match decode(line) {
        Ok(r) => Err(format!("decoded {r:?}").into()),
        Err(f) => Ok(f),
    }
}

#[test]
fn decodes_einhorn_request_samples() -> R {
    let ack = dec(ACK)?;
    assert_eq!(
        (ack.command.as_str(), ack.pid, ack.encoding),
        ("worker:ack", Some(4242), Encoding::Yaml)
    );
    assert!(ack.args.is_empty() && ack.id.is_none());

    let ping = dec(PING)?;
    assert_eq!(ping.command, "worker:ping");
    assert_eq!(ping.pid, Some(4242));
    assert_eq!(ping.request_id, Some(json!("req-17")));

    let ehlo = dec(EHLO)?;
    assert_eq!(
        (ehlo.command.as_str(), ehlo.user.as_deref()),
        ("ehlo", Some("deploy"))
    );

    let sig = dec(SIGNAL)?;
    assert_eq!(sig.command, "signal");
    assert_eq!(sig.id, Some(json!(1)));
    assert_eq!(sig.args, vec!["HUP", "USR1"]);

    let up = dec(UPGRADE)?;
    assert_eq!(
        (up.command.as_str(), up.id.clone(), up.args.len()),
        ("upgrade", Some(json!(2)), 0)
    );
    Ok(())
}

#[test]
fn encodes_einhorn_request_samples_byte_for_byte() -> R {
    for sample in [ACK, PING, EHLO, SIGNAL, UPGRADE] {
        let req = dec(sample)?;
        assert_eq!(
            String::from_utf8_lossy(&encode_request(&req)),
            String::from_utf8_lossy(sample),
            "re-encoding {req:?}"
        );
    }
    Ok(())
}

#[test]
fn encodes_einhorn_reply_samples_byte_for_byte() {
    let cases = [
        (
            Reply::progress("Upgrading smoothly, as commanded", Some(json!(2))),
            REPLY_WAIT,
        ),
        (Reply::new("Upgrade done", Some(json!(2))), REPLY_FINAL),
        (Reply::new("Could not parse command", None), REPLY_OLD),
        (
            Reply::new("100% done\nline two\n", Some(json!(3))),
            REPLY_PERCENT,
        ),
    ];
    for (reply, want) in cases {
        assert_eq!(
            String::from_utf8_lossy(&encode(&reply, Encoding::Yaml)),
            String::from_utf8_lossy(want)
        );
    }
}

#[test]
fn decodes_einhorn_reply_samples() -> R {
    let (r, enc) = decode_reply(REPLY_WAIT)?;
    assert_eq!(enc, Encoding::Yaml);
    assert_eq!(
        r,
        Reply::progress("Upgrading smoothly, as commanded", Some(json!(2)))
    );
    assert_eq!(
        decode_reply(REPLY_OLD)?.0,
        Reply::new("Could not parse command", None)
    );
    assert_eq!(
        decode_reply(REPLY_PERCENT)?.0,
        Reply::new("100% done\nline two\n", Some(json!(3)))
    );
    assert_eq!(
        decode_reply(b"---%0Amessage: nope%0Aerror: true%0A")?.0,
        Reply::failure("nope", None)
    );
    Ok(())
}

#[test]
fn json_requests() -> R {
    let r = decode(br#"{"command":"inc","args":[],"id":7,"pool":"web"}"#)?;
    assert_eq!(r.encoding, Encoding::Json);
    assert_eq!(
        (r.command.as_str(), r.id.clone(), r.pool.as_deref()),
        ("inc", Some(json!(7)), Some("web"))
    );
    assert_eq!(
        String::from_utf8(encode_request(&r))?,
        "{\"command\":\"inc\",\"args\":[],\"id\":7,\"pool\":\"web\"}\n"
    );

    let r = decode(
        br#"  {"command":"set_workers","args":[3, 1.5, true, "x"],"id":"abc","extra":{"x":[1]}} "#,
    )?;
    assert_eq!(r.args, vec!["3", "1.5", "true", "x"]);
    assert_eq!(r.id, Some(json!("abc")));

    let r = decode(b"{\"command\":\"worker:ack\",\"pid\":\"4242\"}\r")?;
    assert_eq!(r.pid, Some(4242));
    let r = decode(br#"{"command":"worker:ping","pid":17,"request_id":9,"id":null}"#)?;
    assert_eq!(
        (r.pid, r.request_id.clone(), r.id.clone()),
        (Some(17), Some(json!(9)), None)
    );
    assert_eq!(
        String::from_utf8(encode_request(&r))?,
        "{\"command\":\"worker:ping\",\"pid\":17,\"request_id\":9}\n"
    );
    Ok(())
}

#[test]
fn json_replies() -> R {
    let enc = |r: &Reply| String::from_utf8(encode(r, Encoding::Json));
    assert_eq!(
        enc(&Reply::new("ok", Some(json!(7))))?,
        "{\"message\":\"ok\",\"request_id\":7}\n"
    );
    assert_eq!(enc(&Reply::new("a\nb", None))?, "{\"message\":\"a\\nb\"}\n");
    assert_eq!(
        enc(&Reply::progress("x", Some(json!("r"))))?,
        "{\"message\":\"x\",\"request_id\":\"r\",\"wait\":true}\n"
    );
    assert_eq!(
        enc(&Reply::failure("bad", None))?,
        "{\"message\":\"bad\",\"error\":true}\n"
    );
    let (r, e) = decode_reply(b"{\"message\":\"x\",\"request_id\":\"r\",\"wait\":true}")?;
    assert_eq!(
        (r, e),
        (Reply::progress("x", Some(json!("r"))), Encoding::Json)
    );
    Ok(())
}

#[test]
fn yaml_forms_psych_and_hand_written() -> R {
    // Ruby symbol keys, bare mapping, indented list, block scalars, quoting.
    let r = decode(b":command: worker:ack%0A:pid: '77'%0A")?;
    assert_eq!(
        (r.command.as_str(), r.pid, r.encoding),
        ("worker:ack", Some(77), Encoding::Yaml)
    );
    let doc = "---\nid: abc\ncommand: signal\nargs:\n  - |-\n    two\n    lines\n  - 'it''s: here'\n  - \"tab\\there \\u00e9 \\\"q\\\"\"\n  - 5\n  - folded long\n    text\npool: web # comment\n...\n";
    let r = decode(&escape_line(doc))?;
    assert_eq!(
        r.args,
        vec![
            "two\nlines",
            "it's: here",
            "tab\there é \"q\"",
            "5",
            "folded long text"
        ]
    );
    assert_eq!(
        (r.id.clone(), r.pool.as_deref()),
        (Some(json!("abc")), Some("web"))
    );
    let r = decode(&escape_line(
        "---\ncommand: x\nargs:\n- |+\n  kept\n\n- |2\n    indented\n- \"\"\n- ''\n",
    ))?;
    assert_eq!(r.args, vec!["kept\n\n", "  indented\n", "", ""]);
    let r = decode(&escape_line(
        "---\ncommand: \"multi\n  line\\\n  \\ x\n\n  y\"\n",
    ))?;
    assert_eq!(r.command, "multi line x\ny");
    Ok(())
}

#[test]
fn psych_quoting_rules() {
    let cases: &[(&str, &str)] = &[
        ("plain text", "message: plain text"),
        ("worker:ack", "message: worker:ack"),
        ("", "message: ''"),
        ("true", "message: 'true'"),
        ("No", "message: 'No'"),
        ("~", "message: \"~\""),
        ("null", "message: 'null'"),
        ("42", "message: '42'"),
        ("1.5", "message: '1.5'"),
        ("0x1F", "message: '0x1F'"),
        ("089", "message: '089'"),
        ("2024-01-31", "message: '2024-01-31'"),
        ("2024-02-31", "message: 2024-02-31"),
        ("12:30", "message: '12:30'"),
        ("y", "message: \"y\""),
        (":sym", "message: \":sym\""),
        ("-dash", "message: \"-dash\""),
        (" lead", "message: \" lead\""),
        ("trail ", "message: 'trail '"),
        ("a: b", "message: 'a: b'"),
        ("a #b", "message: 'a #b'"),
        ("a#b", "message: a#b"),
        ("\"q\" x", "message: '\"q\" x'"),
        ("it's", "message: it's"),
        ("tab\there", "message: \"tab\\there\""),
        ("caf\u{e9}", "message: caf\u{e9}"),
        ("smile \u{1F600}", "message: \"smile \\U0001F600\""),
        ("done\n", "message: 'done\n\n  '"),
        ("a\nb", "message: |-\n  a\n  b"),
        ("a\n\nb\n", "message: |\n  a\n\n  b"),
        ("\n lead", "message: |2-\n\n   lead"),
        ("trail \nx", "message: \"trail \\nx\""),
    ];
    for (input, want) in cases {
        assert_eq!(
            yaml_of(input),
            format!("---\n{want}\n"),
            "message {input:?}"
        );
    }
    // `|+` keeps trailing newlines and makes libyaml close the stream with `...`.
    assert_eq!(yaml_of("a\nb\n\n"), "---\nmessage: |+\n  a\n  b\n\n...\n");
}

#[test]
fn long_lines_fold_at_80_columns_like_libyaml() -> R {
    // libyaml breaks at the first space past column 80.
    let words = vec!["word"; 30].join(" ");
    let first = vec!["word"; 15].join(" ");
    let second = vec!["word"; 15].join(" ");
    assert_eq!(
        yaml_of(&words),
        format!("---\nmessage: {first}\n  {second}\n")
    );
    let y = yaml_of(&vec!["word"; 100].join(" "));
    assert!(y.lines().all(|l| l.chars().count() <= 86), "{y}");
    assert_eq!(y.lines().count(), 8, "{y}");
    for s in [
        words.clone(),
        format!("'{words}'"),
        format!("-{words}  x"),
        format!("{words}\t"),
    ] {
        let (r, _) = decode_reply(&encode(&Reply::new(s.clone(), None), Encoding::Yaml))?;
        assert_eq!(r.message, s);
    }
    Ok(())
}

fn tricky_strings() -> Vec<String> {
    let atoms = [
        "",
        "%",
        "%25",
        "%0A",
        "%250A",
        "\n",
        "\n\n",
        "\r\n",
        " ",
        "  ",
        "\t",
        "'",
        "''",
        "\"",
        "\\",
        ":",
        ": ",
        " #",
        "#",
        "-",
        "- ",
        "?",
        "---",
        "...",
        "[",
        "]",
        "{}",
        "&a",
        "*a",
        "!tag",
        "|",
        ">",
        "@",
        "`",
        ",",
        "~",
        "null",
        "true",
        "no",
        "y",
        "0",
        "-1",
        "1.5",
        "0x1f",
        "1:20",
        ":x",
        "2024-01-01",
        "é",
        "日本",
        "\u{1F600}",
        "\u{85}",
        "\u{2028}",
        "\u{FEFF}",
        "\0",
        "\x07",
        "\x7F",
        "x",
        "word",
        "<<",
    ];
    let mut out: Vec<String> = atoms.iter().map(|s| s.to_string()).collect();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..4000 {
        let n = (next(&mut seed) % 6) as usize;
        let s: String = (0..n)
            .map(|_| atoms[(next(&mut seed) % atoms.len() as u64) as usize])
            .collect();
        out.push(s);
    }
    out.push(vec!["abc def"; 40].join(" \n "));
    out.push(format!("{}\n", vec!["x"; 200].join(" ")));
    out
}

fn next(seed: &mut u64) -> u64 {
    // xorshift64: deterministic, good enough to spread inputs.
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn any_message_round_trips_in_both_encodings() -> R {
    for s in tricky_strings() {
        for enc in [Encoding::Json, Encoding::Yaml] {
            let reply = Reply::progress(s.clone(), Some(json!(s.clone())));
            let bytes = encode(&reply, enc);
            assert_eq!(
                bytes.iter().filter(|b| **b == b'\n').count(),
                1,
                "one line for {s:?}"
            );
            assert_eq!(bytes.last(), Some(&b'\n'));
            let (back, e) = decode_reply(&bytes).map_err(|f| format!("{s:?} in {enc:?}: {f}"))?;
            assert_eq!(e, enc);
            assert_eq!(back, reply, "round trip of {s:?} in {enc:?}");
        }
    }
    Ok(())
}

#[test]
fn any_request_round_trips_in_both_encodings() -> R {
    let strings = tricky_strings();
    for (k, s) in strings.iter().enumerate().take(1500) {
        for enc in [Encoding::Json, Encoding::Yaml] {
            let mut req = Request::new(
                if s.is_empty() {
                    "x".to_string()
                } else {
                    s.clone()
                },
                enc,
            );
            req.args = vec![s.clone(), strings[(k * 7) % strings.len()].clone()];
            req.id = Some(if k % 2 == 0 { json!(k) } else { json!(s) });
            req.pid = Some(k as i32 + 1);
            req.pool = Some(s.clone());
            req.user = Some("u".into());
            let bytes = encode_request(&req);
            let back = decode(&bytes).map_err(|f| format!("{req:?}: {f}"))?;
            assert_eq!(back, req);
        }
    }
    Ok(())
}

#[test]
fn error_cases() -> R {
    let f = err_of(b"\xff\xfe{")?;
    assert!(
        matches!(f.error, DecodeError::NotUtf8 { offset: 0 }),
        "{f:?}"
    );
    let f = err_of(b"---%0Acommand: \xc3")?;
    assert_eq!(f.encoding, Encoding::Yaml);
    assert!(
        matches!(f.error, DecodeError::NotUtf8 { offset: 15 }),
        "{f:?}"
    );
    assert_eq!(err_of(b"   ")?.error, DecodeError::Empty);
    assert_eq!(
        err_of(b"hello world")?,
        DecodeFailure::new(Encoding::Json, DecodeError::Unrecognised)
    );
    assert_eq!(
        err_of(b"{\"command\":")?.to_string(),
        "invalid JSON: EOF while parsing a value at line 1 column 11"
    );
    assert_eq!(err_of(b"[1,2]")?.error, DecodeError::NotAnObject("a list"));
    assert_eq!(err_of(b"42")?.error, DecodeError::NotAnObject("a number"));
    assert_eq!(
        err_of(b"{\"args\":[]}")?.error,
        DecodeError::Missing("command")
    );
    let f = err_of(b"---%0Apid: 1%0A")?;
    assert_eq!(
        f,
        DecodeFailure::new(Encoding::Yaml, DecodeError::Missing("command"))
    );
    let field = |f: DecodeFailure| match f.error {
        DecodeError::BadField { field, .. } => field,
        other => format!("not BadField: {other:?}"),
    };
    assert_eq!(field(err_of(b"{\"command\":5}")?), "command");
    assert_eq!(field(err_of(b"command: 5")?), "command");
    assert_eq!(field(err_of(b"command: true")?), "command");
    assert_eq!(
        field(err_of(b"{\"command\":\"x\",\"args\":\"a b\"}")?),
        "args"
    );
    assert_eq!(field(err_of(b"command: x%0Aargs: a b")?), "args");
    assert_eq!(
        field(err_of(b"{\"command\":\"x\",\"args\":[{}]}")?),
        "args[0]"
    );
    assert_eq!(
        field(err_of(b"command: x%0Aargs:%0A- a%0A-%0A")?),
        "args[1]"
    );
    for bad_pid in [&b"\"abc\""[..], b"-5", b"0", b"1.5", b"99999999999", b"[1]"] {
        let line = [&b"{\"command\":\"worker:ack\",\"pid\":"[..], bad_pid, b"}"].concat();
        assert_eq!(field(err_of(&line)?), "pid");
    }
    for bad_pid in ["abc", "-5", "0", "1.5", "'x'", "true"] {
        assert_eq!(
            field(err_of(
                format!("command: worker:ack%0Apid: {bad_pid}").as_bytes()
            )?),
            "pid"
        );
    }
    assert_eq!(field(err_of(b"{\"command\":\"x\",\"id\":[1]}")?), "id");
    let f = err_of(b"{\"command\":\"x\",\"pid\":-5}")?;
    assert_eq!(f.to_string(), "\"pid\" must be a positive integer, got -5");
    Ok(())
}

#[test]
fn bad_yaml_names_the_line() -> R {
    let cases: &[(&str, usize, &str)] = &[
        ("---\ncommand: 'open\n", 2, "unterminated"),
        ("---\ncommand: x\nargs: [a, b]\n", 3, "flow lists"),
        ("---\ncommand: &a x\n", 2, "anchors"),
        ("---\ncommand: !ruby/sym x\n", 2, "tags"),
        ("---\ncommand: x\n  nested: y\n", 3, "nested mappings"),
        ("---\n  command: x\n", 2, "indentation"),
        ("---\ncommand: x\ncommand: y\n", 3, "duplicate"),
        ("---\ncommand: >\n  x\n", 2, "folded"),
        ("---\n- a\n", 2, "list"),
        ("--- x\n", 1, "mapping"),
        ("---\ncommand: x\nargs:\n- - a\n", 4, "nested lists"),
        ("---\ncommand: \"bad \\q\"\n", 2, "invalid escape"),
        ("---\ncommand: x\n---\ncommand: y\n", 3, "one document"),
        ("---\n", 1, "no mapping"),
        ("---\ncommand: |-x\n  a\n", 2, "header"),
        ("---\ncommand: x\n...\nmore: y\n", 4, "after the end"),
    ];
    for (doc, line, what) in cases {
        let f = err_of(&escape_line(doc))?;
        assert_eq!(f.encoding, Encoding::Yaml);
        match &f.error {
            DecodeError::Yaml { line: l, message } => {
                assert_eq!(*l, *line, "{doc:?}: {message}");
                assert!(message.contains(what), "{doc:?}: {message}");
            }
            other => return Err(format!("{doc:?}: expected a YAML error, got {other:?}").into()),
        }
        assert!(f
            .to_string()
            .starts_with(&format!("bad YAML at line {line}: ")));
    }
    Ok(())
}

#[test]
fn random_bytes_and_mutations_never_panic() {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let samples: Vec<Vec<u8>> = [ACK, PING, EHLO, SIGNAL, UPGRADE, REPLY_PERCENT]
        .iter()
        .map(|s| unescape(&String::from_utf8_lossy(s)).into_bytes())
        .chain([br#"{"command":"inc","args":["a",1],"id":7}"#.to_vec()])
        .collect();
    let alphabet = b"-:#'\"|>+ \n\t\\[]{}%0A25abc19&*!?~.,";
    for round in 0..20_000 {
        let len = (next(&mut seed) % 96) as usize;
        let line: Vec<u8> = if round % 3 == 0 {
            (0..len).map(|_| next(&mut seed) as u8).collect()
        } else {
            let mut s = samples[(next(&mut seed) % samples.len() as u64) as usize].clone();
            for _ in 0..=(next(&mut seed) % 4) {
                let at = (next(&mut seed) as usize) % (s.len() + 1);
                let c = alphabet[(next(&mut seed) as usize) % alphabet.len()];
                match next(&mut seed) % 3 {
                    0 => s.insert(at, c),
                    1 if at < s.len() => {
                        s.remove(at);
                    }
                    _ if at < s.len() => s[at] = c,
                    _ => {}
                }
            }
            if round % 2 == 0 {
                escape_line(&String::from_utf8_lossy(&s))
            } else {
                s
            }
        };
        let _ = decode(&line);
        let _ = decode_reply(&line);
    }
}

#[test]
fn big_lines_decode_in_linear_time() -> R {
    let cap = MAX_LINE;
    // Each hostile shape, built at a given size in bytes.
    type Gen = fn(usize) -> Vec<u8>;
    let shapes: Vec<(&str, Gen)> = vec![
        ("yaml args", |n| {
            let many: String = std::iter::repeat_n("%0A- arg", n / 8 - 8).collect();
            format!("---%0Acommand: x%0Aargs:{many}").into_bytes()
        }),
        ("json args", |n| {
            format!(
                "{{\"command\":\"x\",\"args\":[{}\"a\"]}}",
                "\"a\",".repeat(n / 5)
            )
            .into_bytes()
        }),
        ("open brackets", |n| "[".repeat(n).into_bytes()),
        ("nested objects", |n| "{\"a\":".repeat(n / 5).into_bytes()),
        ("percent signs", |n| "%".repeat(n).into_bytes()),
        ("newlines", |n| "%0A".repeat(n / 3).into_bytes()),
        ("open quote", |n| {
            format!("---%0Acommand: '{}", "a%0A".repeat(n / 4 - 8)).into_bytes()
        }),
        ("escapes", |n| {
            format!("---%0Acommand: \"{}\"", "\\u00e9 ".repeat(n / 7)).into_bytes()
        }),
        ("block scalar", |n| {
            format!("---%0Acommand: |%0A{}", "  x%0A".repeat(n / 6 - 4)).into_bytes()
        }),
        ("long plain", |n| {
            format!("---%0Acommand: a{}", " b".repeat(n / 2 - 8)).into_bytes()
        }),
        ("continuations", |n| {
            format!("---%0Acommand: a%0A{}", "  b%0A".repeat(n / 6 - 4)).into_bytes()
        }),
        ("many keys", |n| {
            format!("---{}", "%0Ak: v".repeat(n / 7 - 1)).into_bytes()
        }),
    ];
    // Best of five, the two sizes interleaved so both see the same load:
    // robust to a busy machine, unlike a wall-clock bound.
    let time = |line: &[u8]| {
        let t = std::time::Instant::now();
        let _ = decode(line);
        t.elapsed()
    };
    for (name, make) in shapes {
        let (small, big) = (make(cap / 64), make(cap));
        assert!(
            big.len() <= cap + 16,
            "{name}: input of {} bytes",
            big.len()
        );
        let (mut ts, mut tb) = (std::time::Duration::MAX, std::time::Duration::MAX);
        for _ in 0..5 {
            ts = ts.min(time(&small));
            tb = tb.min(time(&big));
        }
        // 64x the input: linear work takes ~64x, quadratic ~4096x. Tiny
        // times are timer noise and pass.
        assert!(
            tb < std::time::Duration::from_millis(5) || tb < ts * 512,
            "{name}: {ts:?} at {} bytes but {tb:?} at {} bytes",
            small.len(),
            big.len()
        );
    }
    // And a message of 64 KiB encodes and decodes back.
    let msg = "status line with spaces and: colons\n".repeat(cap / 40);
    let (back, _) = decode_reply(&encode(
        &Reply::new(msg.clone(), Some(json!(1))),
        Encoding::Yaml,
    ))?;
    assert_eq!(back.message, msg);
    Ok(())
}

// ---- framings of every Ruby generation einhorn's client ran on (was tests/codec_compat.rs)
// Request framings written by the Ruby versions einhorn's own client has run
// on (its test suite pins Ruby 1.8, 1.9, 2.0 and 2.1+ output of the same
// message): the master must read them all.

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
