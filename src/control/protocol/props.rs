//! Property tests of the codec (proptest, bounded case counts): whatever
//! arrives on the control socket, decoding and command parsing never panic,
//! and whatever a client or the master encodes decodes to the same thing.

use proptest::prelude::*;
use serde_json::Value;

use super::*;

/// Text with what breaks line protocols: newlines, `%`, quotes, YAML
/// indicators, control characters, non-ASCII.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z:_]{0,12}",
        "[ -~]{0,40}",
        ".{0,24}",
        prop::collection::vec(
            prop::sample::select(vec![
                "%", "%0A", "%25", "\n", "\r", "\t", "'", "\"", ": ", "- ", "#", "&a", "*a",
                "!!str", "---", "...", "~", "null", "true", "0x1F", "1e9", "é", "\u{2028}", " ",
                "\\", "{", "}", "[", "]", "|", ">", "?", "\u{0}", "\u{7f}",
            ]),
            0..12
        )
        .prop_map(|v| v.concat()),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        text().prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    (
        "[a-z][a-z_:]{0,15}",
        prop::collection::vec(text(), 0..5),
        prop::option::of(scalar()),
        prop::option::of(1..=i32::MAX),
        prop::option::of(text()),
        prop::option::of(scalar()),
        prop::option::of(text()),
        prop::bool::ANY,
    )
        .prop_map(
            |(command, args, id, pid, pool, request_id, user, yaml)| Request {
                command,
                args,
                id,
                pid,
                pool,
                request_id,
                user,
                encoding: if yaml { Encoding::Yaml } else { Encoding::Json },
            },
        )
}

/// `id` and `request_id` are scalars echoed as text by einhorn's YAML
/// transport, so a number may come back as its text there.
fn same_scalar(a: &Option<Value>, b: &Option<Value>, enc: Encoding) -> bool {
    match (a, b) {
        (Some(Value::Number(n)), Some(Value::String(s))) if enc == Encoding::Yaml => {
            n.to_string() == *s
        }
        _ => a == b,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary bytes: an answer, never a panic; and the command table
    /// answers whatever decodes.
    #[test]
    fn any_line_decodes_or_is_refused_without_a_panic(line in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(req) = decode(&line) {
            let _ = Command::parse(&req, |p| p == "web");
        }
        let _ = decode_reply(&line);
    }

    /// What a client encodes, the master decodes to the same request, and
    /// exactly one line is written.
    #[test]
    fn requests_round_trip(req in request()) {
        let bytes = encode_request(&req);
        prop_assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 1);
        prop_assert_eq!(bytes.last(), Some(&b'\n'));
        let back = decode(&bytes[..bytes.len() - 1]);
        prop_assert!(back.is_ok(), "{:?} -> {:?}", String::from_utf8_lossy(&bytes), back);
        let back = back.unwrap();
        prop_assert_eq!(&back.command, &req.command);
        prop_assert_eq!(&back.args, &req.args);
        prop_assert_eq!(back.pid, req.pid);
        prop_assert_eq!(&back.pool, &req.pool);
        prop_assert_eq!(&back.user, &req.user);
        prop_assert_eq!(back.encoding, req.encoding);
        prop_assert!(same_scalar(&req.id, &back.id, req.encoding), "id {:?} -> {:?}", req.id, back.id);
        prop_assert!(same_scalar(&req.request_id, &back.request_id, req.encoding));
        let _ = Command::parse(&back, |p| p == "web");
    }

    /// What the master encodes, a client decodes to the same reply.
    #[test]
    fn replies_round_trip(message in text(), id in prop::option::of(scalar()),
                          wait in prop::bool::ANY, error in prop::bool::ANY, yaml in prop::bool::ANY) {
        let enc = if yaml { Encoding::Yaml } else { Encoding::Json };
        let reply = Reply { message, request_id: id, wait, error };
        let bytes = encode(&reply, enc);
        prop_assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 1);
        let back = decode_reply(&bytes[..bytes.len() - 1]);
        prop_assert!(back.is_ok(), "{:?} -> {:?}", String::from_utf8_lossy(&bytes), back);
        let (back, benc) = back.unwrap();
        prop_assert_eq!(benc, enc);
        prop_assert_eq!(&back.message, &reply.message);
        prop_assert_eq!(back.wait, reply.wait);
        prop_assert_eq!(back.error, reply.error);
        prop_assert!(same_scalar(&reply.request_id, &back.request_id, enc));
    }

    /// A valid line with a few bytes changed: still no panic.
    #[test]
    fn mutated_requests_never_panic(req in request(), edits in prop::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 1..6)) {
        let mut bytes = encode_request(&req);
        bytes.pop();
        for (at, b, op) in edits {
            let at = at % (bytes.len() + 1);
            match op {
                0 => bytes.insert(at, b),
                1 if at < bytes.len() => { bytes.remove(at); }
                _ if at < bytes.len() => bytes[at] = b,
                _ => {}
            }
        }
        if let Ok(req) = decode(&bytes) {
            let _ = Command::parse(&req, |p| p == "web");
        }
    }
}
