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

/// Longest request line the protocol allows, `\n` excluded. Enforced by the
/// connection layer (a longer line gets an error reply and the connection closes);
/// the codec itself decodes whatever it is given.
pub const MAX_LINE: usize = 64 * 1024;

/// The two encodings of the protocol; a reply uses its request's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    let message = match obj.get("message") {
        None | Some(Value::Null) => return Err(DecodeError::Missing("message")),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(bad("message", "a string", json_got(other))),
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

/// Reader for the YAML that Ruby's Psych writes for a flat hash: `key: scalar`,
/// `key: []`, `key:` followed by `- item` lines, plain / single-quoted /
/// double-quoted scalars (folded over several lines when long) and literal block
/// scalars. Everything else is refused with the line and what was unexpected.
/// Line-based, no recursion, linear time.
mod read {
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
            ' ', '\t', '#', '[', ']', '{', '}', '?', '&', '*', '!', '|', '>', '%', '@', '`', ',',
            '-', '"', '\'',
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
            (from..self.lines.len())
                .find(|&j| !is_blank(self.lines[j]) && !is_comment(self.lines[j]))
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
        fn scalar(
            &mut self,
            line: usize,
            col: usize,
            parent: usize,
        ) -> Result<Scalar, DecodeError> {
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
                '-' | '?' | ':' if blank_next => {
                    Err(err(line, format!("unexpected {c:?} indicator")))
                }
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
        fn literal(
            &mut self,
            line: usize,
            col: usize,
            parent: usize,
        ) -> Result<String, DecodeError> {
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
}

/// Psych's rules (Ruby 3.x, `Psych::Visitors::YAMLTree#visit_String` and
/// `Psych::ScalarScanner#tokenize`) for which strings must be quoted so they read
/// back as strings. Ruby's `^`/`$` are line anchors; the callers only reach these
/// checks with strings whose newlines (if any) are trailing, so matching the first
/// line is what Ruby does.
mod psych {
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
        b.iter().enumerate().any(|(i, &c)| {
            c == b'\n' && !(i + 1 == b.len() || (i + 2 == b.len() && b[i + 1] == b'\n'))
        })
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
            .filter(|c| {
                c.is_ascii() && !(matches!(c, ' '..='~') || matches!(c, '\t' | '\r' | '\n'))
            })
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
            && (!(eat(b, &mut k, b'+') || eat(b, &mut k, b'-'))
                || !digits(b, &mut k, 1, usize::MAX))
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
            } else if (b[k] == b',' || b[k] == b'_') && b.get(k + 1).is_some_and(u8::is_ascii_digit)
            {
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
}

/// Writer: a port of the parts of libyaml's emitter (as Psych drives it: best
/// width 80, indent 2, unicode on) that a flat hash of strings, integers and
/// lists of strings uses, so replies come out as einhorn's master writes them.
mod write {
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
                if "#,[]{}&*!|>'\"%@`".contains(c)
                    || (matches!(c, '?' | ':' | '-') && followed_by_ws)
                {
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
            if !self.indention
                || self.column > indent
                || (self.column == indent && !self.whitespace)
            {
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
                                    char::from_digit(digit, 16)
                                        .map_or('0', |d| d.to_ascii_uppercase()),
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
}

#[cfg(test)]
mod tests {
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
    const REPLY_PERCENT: &[u8] =
        b"---%0Amessage: |%0A  100%25 done%0A  line two%0Arequest_id: 3%0A\n";

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

        let r = decode(br#"  {"command":"set_workers","args":[3, 1.5, true, "x"],"id":"abc","extra":{"x":[1]}} "#)?;
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
                let (back, e) =
                    decode_reply(&bytes).map_err(|f| format!("{s:?} in {enc:?}: {f}"))?;
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
                other => {
                    return Err(format!("{doc:?}: expected a YAML error, got {other:?}").into())
                }
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
}
