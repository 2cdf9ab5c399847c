//! Raw control-socket clients: bytes in, bytes out, for the tests that check
//! the wire itself (einhorn's YAML framing, bad input, acks sent by hand).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use einhyrningsins::protocol::{self as codec, Encoding};
use serde_json::Value;

use super::master::Master;

/// A raw connection to the master's control socket (reads time out after 20 s).
pub fn connect(m: &Master) -> UnixStream {
    let s = UnixStream::connect(&m.sock).expect("connect control socket");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    s
}

/// One raw line (with its `\n`) or panic on EOF.
pub fn read_raw_line(r: &mut impl BufRead) -> Vec<u8> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line).expect("read reply");
    assert!(
        line.ends_with(b"\n"),
        "connection ended mid-reply: {:?}",
        String::from_utf8_lossy(&line)
    );
    line
}

/// Everything the master sends until it closes the connection.
pub fn read_to_eof(s: &mut UnixStream) -> Vec<u8> {
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .expect("the master closes the connection");
    buf
}

/// Send raw request bytes; return every reply line up to the final one.
pub fn exchange(m: &Master, req: &[u8]) -> Vec<Vec<u8>> {
    let mut s = connect(m);
    s.write_all(req).expect("send request");
    let mut r = BufReader::new(s);
    let mut lines = Vec::new();
    loop {
        let line = read_raw_line(&mut r);
        let (reply, _) = codec::decode_reply(&line[..line.len() - 1])
            .unwrap_or_else(|e| panic!("undecodable reply {:?}: {e}", lossy(&line)));
        lines.push(line);
        if !reply.wait {
            return lines;
        }
    }
}

/// A reply line in einhorn's framing: one `---` YAML document, `%`-escaped, one
/// newline at the very end. Returns the decoded reply.
pub fn yaml_reply(line: &[u8]) -> codec::Reply {
    assert!(
        line.starts_with(b"---%0A"),
        "not YAML framed: {:?}",
        lossy(line)
    );
    assert!(
        line.ends_with(b"%0A\n"),
        "not YAML framed: {:?}",
        lossy(line)
    );
    assert_eq!(
        line.iter().filter(|&&b| b == b'\n').count(),
        1,
        "raw newline inside a YAML reply: {:?}",
        lossy(line)
    );
    let (reply, enc) = codec::decode_reply(&line[..line.len() - 1]).expect("decodable reply");
    assert_eq!(enc, Encoding::Yaml);
    reply
}

/// A JSON reply line, decoded.
pub fn json_reply(line: &[u8]) -> Value {
    serde_json::from_slice(line).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", lossy(line)))
}

/// Like [`read_to_eof`], for a connection the master closes while we are still
/// writing: Linux then ends our reads with ECONNRESET (after the queued reply).
pub fn read_until_hangup(s: &mut UnixStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading until the master hangs up: {e}"),
        }
    }
}

pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
