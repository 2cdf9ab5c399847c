//! Wire codec of the control protocol: one request or reply per `\n`-terminated line,
//! in JSON or in einhorn's own transport (a YAML document exactly as Ruby's
//! `YAML.dump` writes a flat hash, with `%` escaped as `%25` and newlines as `%0A`).
//!
//! Pure functions, no I/O, so the connection layer, the `einhyrningsinsctl` client
//! and the tests share one implementation (protocol description: docs/protocol.md).
//!
//! Why a hand-written YAML subset rather than a YAML crate: einhorn's tools only ever
//! exchange flat hashes of scalars and lists of strings, and replies must come out
//! byte for byte as Ruby's Psych (over libyaml) writes them so einhorn's clients and
//! anyone diffing wire captures see the same thing. No Rust YAML crate reproduces
//! Psych's quoting and line folding, `serde_yaml` is deprecated, and a general YAML
//! parser on attacker-controlled input brings anchors, aliases, tags and nesting we
//! do not want. The reader below accepts exactly what Psych writes for flat hashes
//! (plus a bare mapping without `---`), never recurses, and runs in linear time; the
//! writer is a port of the parts of libyaml's emitter and Psych's style choice that a
//! flat hash of strings and integers exercises.

use serde_json::{Map, Number, Value};

pub mod command;
pub use crate::control::server::MAX_CLIENTS;
pub use command::{Command, CommandError, CommandSpec, Parsed, Scope, UpgradeKind, COMMANDS};

/// Longest request line the protocol allows, `\n` excluded. Enforced by the
/// connection layer (a longer line gets an error reply and the connection closes);
/// the codec itself decodes whatever it is given.
pub const MAX_LINE: usize = 64 * 1024;

/// The two encodings of the protocol; a reply uses its request's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Encoding {
    /// One JSON object per line.
    Json,
    /// einhorn's transport: `%`-escaped YAML document per line.
    Yaml,
}

/// A decoded request. Unknown fields are ignored so newer clients can add some.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Command name, e.g. `inc`, `upgrade`, `worker:ack`.
    pub command: String,
    /// Arguments; scalars (numbers, booleans) arrive as their text.
    pub args: Vec<String>,
    /// Client's request id, any scalar; echoed as `request_id` in every reply.
    pub id: Option<Value>,
    /// Worker pid, for `worker:ack` / `worker:ping`; always positive.
    pub pid: Option<i32>,
    /// Pool the command applies to.
    pub pool: Option<String>,
    /// Token a `worker:ping` carries, recorded on the worker.
    pub request_id: Option<Value>,
    /// User name einhornsh sends with `ehlo`.
    pub user: Option<String>,
    /// Encoding the request came in; its replies must use it too.
    pub encoding: Encoding,
}

impl Request {
    /// A request with only a command, for clients and tests.
    pub fn new(command: impl Into<String>, encoding: Encoding) -> Self {
        Request {
            command: command.into(),
            args: Vec::new(),
            id: None,
            pid: None,
            pool: None,
            request_id: None,
            user: None,
            encoding,
        }
    }
}

/// One reply line. A streaming command sends replies with `wait` set and ends with
/// one without it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reply {
    /// Human-readable text; may hold newlines.
    pub message: String,
    /// The request's `id`, echoed.
    pub request_id: Option<Value>,
    /// More replies follow for this request.
    pub wait: bool,
    /// The command failed (extension to einhorn's protocol, so clients can exit
    /// non-zero); omitted from the wire when false.
    pub error: bool,
}

impl Reply {
    /// A final, successful reply.
    pub fn new(message: impl Into<String>, request_id: Option<Value>) -> Self {
        Reply {
            message: message.into(),
            request_id,
            wait: false,
            error: false,
        }
    }

    /// A progress reply of a streaming command (`wait: true`).
    pub fn progress(message: impl Into<String>, request_id: Option<Value>) -> Self {
        Reply {
            wait: true,
            ..Reply::new(message, request_id)
        }
    }

    /// A final reply saying the request failed (`error: true`).
    pub fn failure(message: impl Into<String>, request_id: Option<Value>) -> Self {
        Reply {
            error: true,
            ..Reply::new(message, request_id)
        }
    }
}

/// Why a line could not be decoded; the text is meant for the error reply.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The line holds bytes that are not UTF-8.
    #[error("request is not valid UTF-8 (bad byte at offset {offset})")]
    NotUtf8 {
        /// Byte offset of the first invalid byte.
        offset: usize,
    },
    /// Nothing but whitespace.
    #[error("empty request line")]
    Empty,
    /// Neither a JSON object nor a YAML document.
    #[error("could not parse request: expected a JSON object or an einhorn YAML document")]
    Unrecognised,
    /// Looked like JSON but is not valid JSON.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// Valid JSON, but not an object.
    #[error("request must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// Valid YAML (as far as read), but not a mapping.
    #[error("bad YAML at line {line}: {message}")]
    Yaml {
        /// 1-based line of the unescaped YAML document.
        line: usize,
        /// What was unexpected there.
        message: String,
    },
    /// A required field is absent or null.
    #[error("request has no \"{0}\"")]
    Missing(&'static str),
    /// A field has the wrong type or value.
    #[error("\"{field}\" must be {expected}, got {got}")]
    BadField {
        /// Field name, `args[2]` for a list item.
        field: String,
        /// What it should be.
        expected: &'static str,
        /// What it was.
        got: String,
    },
}

/// A decode error plus the encoding its error reply must use (JSON when the
/// encoding could not be told).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{error}")]
pub struct DecodeFailure {
    /// Encoding to answer in.
    pub encoding: Encoding,
    /// What went wrong.
    pub error: DecodeError,
}

impl DecodeFailure {
    fn new(encoding: Encoding, error: DecodeError) -> Self {
        DecodeFailure { encoding, error }
    }
}

/// Decodes one request line (without its `\n`; a trailing `\r` is tolerated).
pub fn decode(line: &[u8]) -> Result<Request, DecodeFailure> {
    match classify(line)? {
        Classified::Json(text) => {
            let obj = json_object(text).map_err(|e| DecodeFailure::new(Encoding::Json, e))?;
            json_request(&obj).map_err(|e| DecodeFailure::new(Encoding::Json, e))
        }
        Classified::Yaml(doc) => {
            let entries =
                read::document(&doc).map_err(|e| DecodeFailure::new(Encoding::Yaml, e))?;
            yaml_request(entries).map_err(|e| DecodeFailure::new(Encoding::Yaml, e))
        }
    }
}

/// Decodes one reply line, for clients. Same framing rules as [`decode`].
pub fn decode_reply(line: &[u8]) -> Result<(Reply, Encoding), DecodeFailure> {
    match classify(line)? {
        Classified::Json(text) => {
            let obj = json_object(text).map_err(|e| DecodeFailure::new(Encoding::Json, e))?;
            json_reply(&obj)
                .map(|r| (r, Encoding::Json))
                .map_err(|e| DecodeFailure::new(Encoding::Json, e))
        }
        Classified::Yaml(doc) => {
            let entries =
                read::document(&doc).map_err(|e| DecodeFailure::new(Encoding::Yaml, e))?;
            yaml_reply(entries)
                .map(|r| (r, Encoding::Yaml))
                .map_err(|e| DecodeFailure::new(Encoding::Yaml, e))
        }
    }
}

/// Encodes a reply, final `\n` included.
pub fn encode(reply: &Reply, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Json => {
            let mut obj = JsonLine::default();
            obj.field("message", &Value::String(reply.message.clone()));
            if let Some(id) = &reply.request_id {
                obj.field("request_id", id);
            }
            if reply.wait {
                obj.field("wait", &Value::Bool(true));
            }
            if reply.error {
                obj.field("error", &Value::Bool(true));
            }
            obj.finish()
        }
        Encoding::Yaml => {
            let mut e = write::Emitter::new();
            e.key("message");
            e.string(&reply.message);
            if let Some(id) = &reply.request_id {
                e.key("request_id");
                e.value(id);
            }
            if reply.wait {
                e.key("wait");
                e.plain("true");
            }
            if reply.error {
                e.key("error");
                e.plain("true");
            }
            escape_line(&e.finish())
        }
    }
}

/// Encodes a request in its `encoding`, final `\n` included. Field order follows
/// einhorn's tools (`id, command, args` for einhornsh, `command, pid` for acks);
/// `args` is written when non-empty or when the request has an `id` (einhornsh
/// always sends both), so einhorn's wire samples come out byte for byte.
pub fn encode_request(req: &Request) -> Vec<u8> {
    let with_args = req.id.is_some() || !req.args.is_empty();
    match req.encoding {
        Encoding::Json => {
            let mut obj = JsonLine::default();
            obj.field("command", &Value::String(req.command.clone()));
            if with_args {
                obj.field(
                    "args",
                    &Value::Array(req.args.iter().cloned().map(Value::String).collect()),
                );
            }
            if let Some(id) = &req.id {
                obj.field("id", id);
            }
            if let Some(pid) = req.pid {
                obj.field("pid", &Value::from(pid));
            }
            if let Some(pool) = &req.pool {
                obj.field("pool", &Value::String(pool.clone()));
            }
            if let Some(rid) = &req.request_id {
                obj.field("request_id", rid);
            }
            if let Some(user) = &req.user {
                obj.field("user", &Value::String(user.clone()));
            }
            obj.finish()
        }
        Encoding::Yaml => {
            let mut e = write::Emitter::new();
            if let Some(id) = &req.id {
                e.key("id");
                e.value(id);
            }
            e.key("command");
            e.string(&req.command);
            if with_args {
                e.key("args");
                e.seq(&req.args);
            }
            if let Some(pid) = req.pid {
                e.key("pid");
                e.plain(&pid.to_string());
            }
            if let Some(rid) = &req.request_id {
                e.key("request_id");
                e.value(rid);
            }
            if let Some(pool) = &req.pool {
                e.key("pool");
                e.string(pool);
            }
            if let Some(user) = &req.user {
                e.key("user");
                e.string(user);
            }
            escape_line(&e.finish())
        }
    }
}

/// A JSON object written field by field: serde_json's map sorts keys, and the
/// documented wire order (`message` first, `command` first) reads better.
#[derive(Default)]
struct JsonLine {
    out: String,
}

impl JsonLine {
    fn field(&mut self, key: &str, value: &Value) {
        self.out.push(if self.out.is_empty() { '{' } else { ',' });
        self.out
            .push_str(&Value::String(key.to_string()).to_string());
        self.out.push(':');
        // Value's Display is its compact JSON text and cannot fail.
        self.out.push_str(&value.to_string());
    }

    fn finish(mut self) -> Vec<u8> {
        if self.out.is_empty() {
            self.out.push('{');
        }
        self.out.push_str("}\n");
        self.out.into_bytes()
    }
}

/// einhorn's transport escaping: `%` first, then newline, then the framing `\n`.
fn escape_line(doc: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(doc.len() + doc.len() / 8 + 1);
    for &b in doc.as_bytes() {
        match b {
            b'%' => out.extend_from_slice(b"%25"),
            b'\n' => out.extend_from_slice(b"%0A"),
            _ => out.push(b),
        }
    }
    out.push(b'\n');
    out
}

/// Inverse of [`escape_line`] in one pass, as einhorn does (`%250A` is `%0A`).
/// Other `%` sequences are left alone, like einhorn.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('%') {
        out.push_str(&rest[..p]);
        let tail = &rest[p..];
        if let Some(after) = tail.strip_prefix("%25") {
            out.push('%');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("%0A") {
            out.push('\n');
            rest = after;
        } else {
            out.push('%');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

enum Classified<'a> {
    Json(&'a str),
    Yaml(String),
}

/// Frames and detects the encoding: JSON when the first non-blank byte opens a JSON
/// value (`{`, `[`, `"`), YAML when the unescaped text starts with `---` or a
/// `key:` line, otherwise unrecognised (answered in JSON).
fn classify(line: &[u8]) -> Result<Classified<'_>, DecodeFailure> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let start = line
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(line.len());
    let body = &line[start..];
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(e) => {
            let enc = if body.starts_with(b"---") {
                Encoding::Yaml
            } else {
                Encoding::Json
            };
            return Err(DecodeFailure::new(
                enc,
                DecodeError::NotUtf8 {
                    offset: start + e.valid_up_to(),
                },
            ));
        }
    };
    let text = text.trim_end_matches([' ', '\t']);
    if text.is_empty() {
        return Err(DecodeFailure::new(Encoding::Json, DecodeError::Empty));
    }
    if text.starts_with(['{', '[', '"']) {
        return Ok(Classified::Json(text));
    }
    let doc = unescape(text);
    let first = doc
        .lines()
        .find(|l| !read::is_blank(l) && !l.starts_with('#'))
        .unwrap_or("");
    if first.starts_with("---") || read::looks_like_key_line(first) {
        return Ok(Classified::Yaml(doc));
    }
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return Err(DecodeFailure::new(
            Encoding::Json,
            DecodeError::NotAnObject(json_kind(&v)),
        ));
    }
    Err(DecodeFailure::new(
        Encoding::Json,
        DecodeError::Unrecognised,
    ))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Parses JSON text into an object. serde_json caps nesting at 128 levels, so
/// hostile input cannot exhaust the stack.
fn json_object(text: &str) -> Result<Map<String, Value>, DecodeError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(other) => Err(DecodeError::NotAnObject(json_kind(&other))),
        Err(e) => Err(DecodeError::Json(e.to_string())),
    }
}

fn bad(field: impl Into<String>, expected: &'static str, got: impl Into<String>) -> DecodeError {
    DecodeError::BadField {
        field: field.into(),
        expected,
        got: got.into(),
    }
}

fn json_got(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => n.to_string(),
        other => json_kind(other).to_string(),
    }
}

fn json_request(obj: &Map<String, Value>) -> Result<Request, DecodeError> {
    let command = match obj.get("command") {
        None | Some(Value::Null) => return Err(DecodeError::Missing("command")),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(bad("command", "a string", json_got(other))),
    };
    let args = match obj.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                Value::Bool(b) => Ok(b.to_string()),
                other => Err(bad(format!("args[{i}]"), "a scalar", json_kind(other))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(bad("args", "a list", json_got(other))),
    };
    let pid = match obj.get("pid") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_i64()
                .and_then(positive_pid)
                .ok_or_else(|| bad("pid", "a positive integer", n.to_string()))?,
        ),
        Some(Value::String(s)) => Some(pid_from_text(s)?),
        Some(other) => return Err(bad("pid", "a positive integer", json_got(other))),
    };
    Ok(Request {
        command,
        args,
        id: json_scalar(obj, "id")?,
        pid,
        pool: json_text(obj, "pool")?,
        request_id: json_scalar(obj, "request_id")?,
        user: json_text(obj, "user")?,
        encoding: Encoding::Json,
    })
}

fn json_scalar(
    obj: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<Value>, DecodeError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => Ok(Some(v.clone())),
        Some(other) => Err(bad(field, "a scalar", json_kind(other))),
    }
}

fn json_text(obj: &Map<String, Value>, field: &'static str) -> Result<Option<String>, DecodeError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(bad(field, "a string", json_got(other))),
    }
}

fn json_reply(obj: &Map<String, Value>) -> Result<Reply, DecodeError> {
    // Read leniently: a reply without a message, or with a number or list as
    // its message, still says whether it is final and whether it failed.
    let message = match obj.get("message") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let flag = |field: &'static str| match obj.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad(field, "a boolean", json_got(other))),
    };
    Ok(Reply {
        message,
        request_id: json_scalar(obj, "request_id")?,
        wait: flag("wait")?,
        error: flag("error")?,
    })
}

fn positive_pid(n: i64) -> Option<i32> {
    // pid 0 and negative pids address process groups in kill(2): never accept them.
    i32::try_from(n).ok().filter(|p| *p > 0)
}

fn pid_from_text(s: &str) -> Result<i32, DecodeError> {
    s.trim()
        .parse::<i64>()
        .ok()
        .and_then(positive_pid)
        .ok_or_else(|| bad("pid", "a positive integer", format!("{s:?}")))
}

/// What a plain YAML scalar means, Psych-style (YAML 1.1 core types).
#[derive(Debug, Clone, PartialEq)]
enum Resolved {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str,
}

fn yaml_got(node: &read::Node) -> String {
    match node {
        read::Node::Seq(_) => "a list".into(),
        read::Node::Scalar(s) if s.plain => match read::resolve_plain(&s.text) {
            Resolved::Null => "null".into(),
            Resolved::Bool(b) => format!("boolean {b}"),
            Resolved::Int(_) | Resolved::Float(_) => format!("number {}", s.text),
            Resolved::Str => format!("{:?}", s.text),
        },
        read::Node::Scalar(s) => format!("{:?}", s.text),
    }
}

/// Scalar as a JSON value: quoted and block scalars are strings, plain ones resolve.
fn yaml_scalar_value(s: &read::Scalar) -> Option<Value> {
    if !s.plain {
        return Some(Value::String(s.text.clone()));
    }
    match read::resolve_plain(&s.text) {
        Resolved::Null => None,
        Resolved::Bool(b) => Some(Value::Bool(b)),
        Resolved::Int(i) => Some(Value::from(i)),
        Resolved::Float(f) => {
            Some(Number::from_f64(f).map_or_else(|| Value::String(s.text.clone()), Value::Number))
        }
        Resolved::Str => Some(Value::String(s.text.clone())),
    }
}

fn is_null(node: &read::Node) -> bool {
    matches!(node, read::Node::Scalar(s) if s.plain && read::resolve_plain(&s.text) == Resolved::Null)
}

fn yaml_request(entries: Vec<read::Entry>) -> Result<Request, DecodeError> {
    let mut req = Request::new(String::new(), Encoding::Yaml);
    let mut command = None;
    for read::Entry { key, node } in entries {
        if is_null(&node) {
            continue;
        }
        match key.as_str() {
            "command" => match &node {
                read::Node::Scalar(s)
                    if !s.plain || read::resolve_plain(&s.text) == Resolved::Str =>
                {
                    command = Some(s.text.clone())
                }
                other => return Err(bad("command", "a string", yaml_got(other))),
            },
            "args" => match node {
                read::Node::Seq(items) => {
                    for (i, item) in items.into_iter().enumerate() {
                        if item.plain && read::resolve_plain(&item.text) == Resolved::Null {
                            return Err(bad(format!("args[{i}]"), "a scalar", "null"));
                        }
                        req.args.push(item.text);
                    }
                }
                other => return Err(bad("args", "a list", yaml_got(&other))),
            },
            "pid" => match &node {
                read::Node::Scalar(s) => {
                    req.pid = Some(match (s.plain, read::resolve_plain(&s.text)) {
                        (true, Resolved::Int(i)) => positive_pid(i)
                            .ok_or_else(|| bad("pid", "a positive integer", s.text.clone()))?,
                        (true, Resolved::Str) | (false, _) => pid_from_text(&s.text)?,
                        _ => return Err(bad("pid", "a positive integer", yaml_got(&node))),
                    })
                }
                other => return Err(bad("pid", "a positive integer", yaml_got(other))),
            },
            "id" | "request_id" | "pool" | "user" => {
                let read::Node::Scalar(s) = &node else {
                    return Err(bad(key, "a scalar", "a list"));
                };
                match key.as_str() {
                    "id" => req.id = yaml_scalar_value(s),
                    "request_id" => req.request_id = yaml_scalar_value(s),
                    "pool" => req.pool = Some(s.text.clone()),
                    _ => req.user = Some(s.text.clone()),
                }
            }
            _ => {}
        }
    }
    req.command = command.ok_or(DecodeError::Missing("command"))?;
    Ok(req)
}

fn yaml_reply(entries: Vec<read::Entry>) -> Result<Reply, DecodeError> {
    let mut reply = Reply::default();
    let mut message = None;
    for read::Entry { key, node } in entries {
        if is_null(&node) {
            continue;
        }
        let read::Node::Scalar(s) = &node else {
            if matches!(key.as_str(), "message" | "request_id" | "wait" | "error") {
                return Err(bad(key, "a scalar", "a list"));
            }
            continue;
        };
        match key.as_str() {
            "message" => message = Some(s.text.clone()),
            "request_id" => reply.request_id = yaml_scalar_value(s),
            "wait" | "error" => {
                let flag = match (s.plain, read::resolve_plain(&s.text)) {
                    (true, Resolved::Bool(b)) => b,
                    _ => return Err(bad(key, "a boolean", yaml_got(&node))),
                };
                if key == "wait" {
                    reply.wait = flag;
                } else {
                    reply.error = flag;
                }
            }
            _ => {}
        }
    }
    reply.message = message.ok_or(DecodeError::Missing("message"))?;
    Ok(reply)
}

mod yaml_read;
use yaml_read as read;

mod psych;

mod yaml_write;
use yaml_write as write;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
