//! One connection to the master's control socket: send a request line, read
//! reply lines until the final one.
//!
//! The master is a separate, possibly misbehaving or dying process, so every way
//! the conversation can fail is a typed error with its own exit code: nobody at
//! the path, the master hanging up, a reply that never ends (bounded at 16 MiB
//! so a runaway master cannot eat our memory), a reply that is not JSON, and the
//! caller's deadline running out.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use einhyrningsins::protocol::{self, Encoding};
use serde_json::Value;
use thiserror::Error;

/// Longest reply line accepted, newline excluded.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// Exit status: the master answered with an error, or the conversation broke.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status: nothing answers at the socket path.
pub const EXIT_NO_MASTER: u8 = 3;
/// Exit status: no final reply within `--timeout`.
pub const EXIT_TIMEOUT: u8 = 4;

/// Everything that can end a conversation with the master early.
#[derive(Debug, Error)]
pub enum CtlError {
    #[error("no master is listening on {path}: connection refused (is einhyrningsins running? -d sets the path)")]
    Refused { path: String },
    #[error("no control socket at {path}: no such file or directory (is einhyrningsins running? -d sets the path)")]
    NoSocket { path: String },
    #[error("cannot connect to {path}: permission denied (the control socket is mode 0600: run as the master's user)")]
    Denied { path: String },
    #[error("cannot connect to {path}: {source}")]
    Connect { path: String, source: io::Error },
    #[error("master went away: {0}")]
    WentAway(String),
    #[error("timed out after {waited} waiting for the master's final reply to `{command}` (--timeout sets the limit)")]
    Timeout { command: String, waited: String },
    #[error("master on {path} sent a reply line longer than 16 MiB; giving up on the connection")]
    LineTooLong { path: String },
    #[error("master on {path} sent a reply that is not a JSON object ({detail}): {snippet}")]
    BadReply {
        path: String,
        detail: String,
        snippet: String,
    },
    #[error("cannot write to standard output: {0}")]
    Stdout(io::Error),
}

impl CtlError {
    /// The process exit status this error stands for.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Refused { .. }
            | CtlError::NoSocket { .. }
            | CtlError::Denied { .. }
            | CtlError::Connect { .. } => EXIT_NO_MASTER,
            CtlError::Timeout { .. } => EXIT_TIMEOUT,
            CtlError::WentAway(_)
            | CtlError::LineTooLong { .. }
            | CtlError::BadReply { .. }
            | CtlError::Stdout(_) => EXIT_FAILURE,
        }
    }

    /// Whether the connection is unusable afterwards (the caller drops it and
    /// reconnects for the next command).
    pub fn breaks_connection(&self) -> bool {
        !matches!(self, CtlError::Stdout(_))
    }
}

/// A request to send (the protocol's own type, shared with the master).
pub use einhyrningsins::protocol::Request;

/// A JSON request from the client: `{"command":..,"args":[..],"id":N,"pool":..}`.
pub fn request(
    command: &str,
    args: &[String],
    id: u64,
    pool: Option<&str>,
    user: Option<&str>,
) -> Request {
    let mut r = Request::new(command, Encoding::Json);
    r.args = args.to_vec();
    r.id = Some(Value::from(id));
    r.pool = pool.map(str::to_string);
    r.user = user.map(str::to_string);
    r
}

/// One reply line that belongs to the request in flight.
#[derive(Debug)]
pub struct Reply {
    /// The line as received, without its newline (for `--json`).
    pub raw: String,
    /// The reply, decoded by the protocol's codec.
    pub reply: protocol::Reply,
    /// The line had a `message` (a reply without one is printed raw).
    pub has_message: bool,
}

/// How a request ended once its final reply arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// At least one reply carried `"error": true`.
    ErrorReply,
}

/// A connected control socket with its read buffer.
pub struct Conn {
    stream: UnixStream,
    path: String,
    buf: Vec<u8>,
    /// Bytes of `buf` already known to hold no newline.
    scanned: usize,
}

impl Conn {
    /// Connects to the control socket at `path`, telling apart "nobody listens",
    /// "no such file" and "not allowed" because each has a different fix.
    pub fn connect(path: &Path) -> Result<Conn, CtlError> {
        let shown = path.display().to_string();
        match UnixStream::connect(path) {
            Ok(stream) => Ok(Conn {
                stream,
                path: shown,
                buf: Vec::new(),
                scanned: 0,
            }),
            Err(e) => Err(match e.kind() {
                // Linux also refuses a connect to a file that is no socket at
                // all; saying "nobody listens" there would send the operator
                // looking for a dead master instead of a wrong -d.
                io::ErrorKind::ConnectionRefused if !is_socket(path) => CtlError::Connect {
                    path: shown,
                    source: io::Error::other("not a unix socket"),
                },
                io::ErrorKind::ConnectionRefused => CtlError::Refused { path: shown },
                io::ErrorKind::NotFound => CtlError::NoSocket { path: shown },
                io::ErrorKind::PermissionDenied => CtlError::Denied { path: shown },
                _ => CtlError::Connect {
                    path: shown,
                    source: e,
                },
            }),
        }
    }

    /// Whether the master has closed this (idle) connection: a zero-length
    /// peek without waiting. Pending bytes or "nothing yet" mean it is alive.
    pub fn is_closed(&self) -> bool {
        use nix::sys::socket::{recv, MsgFlags};
        use std::os::fd::AsRawFd;
        if !self.buf.is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        match recv(
            self.stream.as_raw_fd(),
            &mut byte,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => true,
            Ok(_) => false,
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => false,
            Err(_) => true,
        }
    }

    /// Sends `req` and hands each reply that belongs to it to `on_reply`, in
    /// arrival order, until the final one (no `wait`). Replies carrying another
    /// `request_id` are skipped; replies with none are taken as ours, since the
    /// master cannot know the id of a line it failed to parse.
    pub fn request(
        &mut self,
        req: &Request,
        timeout: Option<Duration>,
        on_reply: &mut dyn FnMut(&Reply) -> io::Result<()>,
    ) -> Result<Outcome, CtlError> {
        let line = protocol::encode_request(req);
        let id = req.id.as_ref().and_then(Value::as_u64).unwrap_or(0);
        // A deadline past what an Instant can hold is no deadline at all.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        // A master that refuses us (SO_PEERCRED) answers and hangs up at once,
        // usually before our request is written: its answer is still readable,
        // and says far more than "broken pipe".
        let mut early = None;
        if let Err(e) = self.stream.write_all(&line) {
            match self.read_line(deadline) {
                Ok(raw) => early = Some(raw),
                Err(_) => return Err(went_away(&e, &format!("while sending `{}`", req.command))),
            }
        }

        let mut outcome = Outcome::Ok;
        loop {
            let next = match early.take() {
                Some(raw) => Ok(raw),
                None => self.read_line(deadline),
            };
            let raw = next.map_err(|e| match e {
                ReadError::Timeout => CtlError::Timeout {
                    command: req.command.to_string(),
                    waited: humantime::format_duration(timeout.unwrap_or_default()).to_string(),
                },
                ReadError::TooLong => CtlError::LineTooLong {
                    path: self.path.clone(),
                },
                ReadError::Eof => CtlError::WentAway(format!(
                    "{} closed the connection before the final reply to `{}`",
                    self.path, req.command
                )),
                ReadError::Io(e) => went_away(
                    &e,
                    &format!("while waiting for the reply to `{}`", req.command),
                ),
            })?;
            let Some(reply) = parse_reply(&raw, id).map_err(|detail| CtlError::BadReply {
                path: self.path.clone(),
                detail,
                snippet: snippet(&raw),
            })?
            else {
                continue;
            };
            if reply.reply.error {
                outcome = Outcome::ErrorReply;
            }
            on_reply(&reply).map_err(CtlError::Stdout)?;
            if !reply.reply.wait {
                return Ok(outcome);
            }
        }
    }

    /// Reads one line (newline stripped), waiting at most until `deadline`.
    fn read_line(&mut self, deadline: Option<Instant>) -> Result<Vec<u8>, ReadError> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + pos;
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                self.scanned = 0;
                if line.len() > MAX_LINE {
                    return Err(ReadError::TooLong);
                }
                return Ok(line);
            }
            self.scanned = self.buf.len();
            if self.buf.len() > MAX_LINE {
                return Err(ReadError::TooLong);
            }
            let wait = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(ReadError::Timeout),
                },
            };
            self.stream.set_read_timeout(wait).map_err(ReadError::Io)?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ReadError::Eof),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    // Loop to re-check the deadline: a spurious early wake-up
                    // must not end the wait before the operator's limit.
                }
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    // Unknown (e.g. the file vanished meanwhile): keep the refused message.
    std::fs::metadata(path).map_or(true, |m| m.file_type().is_socket())
}

enum ReadError {
    Timeout,
    TooLong,
    Eof,
    Io(io::Error),
}

fn went_away(e: &io::Error, when: &str) -> CtlError {
    let what = match e.kind() {
        io::ErrorKind::BrokenPipe => "broken pipe".to_string(),
        io::ErrorKind::ConnectionReset => "connection reset".to_string(),
        _ => e.to_string(),
    };
    CtlError::WentAway(format!("{what} {when}"))
}

/// Parses a reply line. `Ok(None)` means a reply to some other request.
/// The client speaks JSON only; the codec's YAML reading is not used here.
fn parse_reply(raw: &[u8], id: u64) -> Result<Option<Reply>, String> {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let text = std::str::from_utf8(raw).map_err(|e| format!("not UTF-8: {e}"))?;
    if !text.trim_start().starts_with('{') {
        return Err("not a JSON object".to_string());
    }
    let (reply, _) = protocol::decode_reply(text.as_bytes()).map_err(|f| f.error.to_string())?;
    let ours = match &reply.request_id {
        None | Some(Value::Null) => true,
        Some(Value::Number(n)) => n.as_u64() == Some(id),
        Some(Value::String(s)) => s.trim() == id.to_string(),
        Some(_) => false,
    };
    if !ours {
        return Ok(None);
    }
    Ok(Some(Reply {
        raw: text.to_string(),
        has_message: text.contains("\"message\""),
        reply,
    }))
}

/// The start of a bad line, printable, for the error message.
fn snippet(raw: &[u8]) -> String {
    const SHOWN: usize = 200;
    let head = String::from_utf8_lossy(&raw[..raw.len().min(SHOWN)])
        .escape_debug()
        .to_string();
    if raw.len() > SHOWN {
        format!("{head}... ({} bytes)", raw.len())
    } else {
        head
    }
}

/// The socket path to use: `-d`, else `$EINHORN_SOCK_PATH` (which a worker
/// inherits from its master), else einhorn's default.
pub fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| {
        std::env::var_os("EINHORN_SOCK_PATH")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
    .unwrap_or_else(|| PathBuf::from("/tmp/einhorn.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes_follow_the_wire_order() {
        let args = vec!["2".to_string()];
        let req = request("inc", &args, 1, Some("web"), None);
        assert_eq!(
            protocol::encode_request(&req),
            b"{\"command\":\"inc\",\"args\":[\"2\"],\"id\":1,\"pool\":\"web\"}\n"
        );
    }

    #[test]
    fn replies_are_matched_by_request_id() {
        assert!(matches!(
            parse_reply(br#"{"message":"x","request_id":2}"#, 1),
            Ok(None)
        ));
        assert!(matches!(
            parse_reply(br#"{"message":"x","request_id":"1"}"#, 1),
            Ok(Some(_))
        ));
        match parse_reply(br#"{"message":"Could not parse command"}"#, 7) {
            Ok(Some(r)) => assert_eq!(r.reply.message, "Could not parse command"),
            other => panic!("old-style reply not taken: {other:?}"),
        }
    }

    #[test]
    fn flags_and_bad_lines() {
        match parse_reply(
            b"{\"message\":\"a\",\"request_id\":1,\"wait\":true,\"error\":true}\r",
            1,
        ) {
            Ok(Some(r)) => assert!(r.reply.wait && r.reply.error),
            other => panic!("{other:?}"),
        }
        assert!(parse_reply(b"[1,2]", 1).is_err());
        assert!(parse_reply(b"---%0Amessage: hi%0A", 1).is_err());
    }
}
