//! The walk over toml's spanned document tree: every key and value with its
//! location, every problem reported (not only the first).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::schema;
use super::*;

// ---------------------------------------------------------------------------
// The walk over the spanned TOML tree

impl Config {
    /// Parse and validate TOML text; `file` is used in messages and kept as
    /// [`Config::source`].
    pub fn from_toml_str(text: &str, file: Option<&Path>) -> Result<Config, ConfigErrors> {
        let mut w = Walker {
            text,
            file: file.map(Path::to_path_buf),
            errors: Vec::new(),
            locs: Locations::default(),
        };
        let (doc, syntax) = DeTable::parse_recoverable(text);
        if !syntax.is_empty() {
            // What follows a syntax error is guesswork by the parser; reporting
            // type errors on it would only confuse.
            for e in syntax {
                let (line, column) = match e.span() {
                    Some(s) => {
                        let (l, c) = w.pos(s.start);
                        (Some(l), Some(c))
                    }
                    None => (None, None),
                };
                w.errors.push(ConfigError {
                    file: w.file.clone(),
                    line,
                    column,
                    key: String::new(),
                    message: format!("TOML syntax error: {}", e.message().trim_end()),
                });
            }
            return Err(ConfigErrors(w.errors));
        }
        let mut cfg = Config {
            source: w.file.clone(),
            ..Config::default()
        };
        w.document(doc.get_ref(), &mut cfg);
        cfg.locations = std::mem::take(&mut w.locs);
        let mut errors = w.errors;
        if let Err(ConfigErrors(more)) = cfg.validate() {
            // A key the walk already refused was left at its default; do not
            // report it twice ("expected an array" then "missing command").
            for e in more {
                let seen = |k: &str| {
                    k == e.key
                        || k.strip_prefix(e.key.as_str())
                            .is_some_and(|rest| rest.starts_with('[') || rest.starts_with('.'))
                };
                if !errors.iter().any(|w| seen(&w.key)) {
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(cfg)
        } else {
            errors.sort_by_key(|e| (e.line.unwrap_or(usize::MAX), e.column));
            Err(ConfigErrors(errors))
        }
    }
}

type Val<'i> = Spanned<DeValue<'i>>;

const TOP_KEYS: &[&str] = &["control", "log", "watch", "master", "metrics", "pools"];

struct Walker<'a> {
    text: &'a str,
    file: Option<PathBuf>,
    errors: Vec<ConfigError>,
    locs: Locations,
}

/// `string "four"`, `integer -3`, ...: what was found, for type errors.
fn describe(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("string {s:?}"),
        DeValue::Integer(i) => format!("integer {i}"),
        DeValue::Float(f) => format!("float {f}"),
        DeValue::Boolean(b) => format!("boolean {b}"),
        DeValue::Datetime(d) => format!("datetime {d}"),
        DeValue::Array(_) => "an array".to_string(),
        DeValue::Table(_) => "a table".to_string(),
    }
}

fn int_value(i: &toml::de::DeInteger<'_>) -> Option<i64> {
    i64::from_str_radix(i.as_str(), i.radix()).ok()
}

impl Walker<'_> {
    /// 1-based (line, column) of a byte offset.
    fn pos(&self, offset: usize) -> (usize, usize) {
        let mut off = offset.min(self.text.len());
        while !self.text.is_char_boundary(off) {
            off -= 1;
        }
        let before = &self.text[..off];
        let line = before.matches('\n').count() + 1;
        let start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[start..].chars().count() + 1)
    }

    fn error(&mut self, key: &str, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = self.pos(span.start);
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line: Some(line),
            column: Some(column),
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn note(&mut self, key: &str, span: Range<usize>) {
        let (line, column) = self.pos(span.start);
        self.locs.insert(key, line, column);
    }

    fn expected(&mut self, key: &str, v: &Val<'_>, what: &str) {
        let msg = format!("expected {what}, found {}", describe(v.get_ref()));
        self.error(key, v.span(), msg);
    }

    fn unknown(&mut self, table: &str, name: &str, span: Range<usize>, known: &[&str]) {
        let (key, place) = if table.is_empty() {
            (name.to_string(), "at the top level".to_string())
        } else {
            (format!("{table}.{name}"), format!("in [{table}]"))
        };
        self.error(
            &key,
            span,
            format!(
                "unknown key `{name}` {place} (known keys: {})",
                known.join(", ")
            ),
        );
    }

    /// Iterate a table's entries as (name, key span, value), refusing a non-table.
    fn table<'t, 'i>(
        &mut self,
        key: &str,
        v: &'t Val<'i>,
    ) -> Option<Vec<(String, Range<usize>, &'t Val<'i>)>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(
                t.iter()
                    .map(|(k, v)| (k.get_ref().to_string(), k.span(), v))
                    .collect(),
            ),
            _ => {
                self.expected(key, v, "a table");
                None
            }
        }
    }

    fn string(&mut self, key: &str, v: &Val<'_>) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.expected(key, v, "a string");
                None
            }
        }
    }

    fn path(&mut self, key: &str, v: &Val<'_>) -> Option<PathBuf> {
        let s = self.string(key, v)?;
        if s.is_empty() {
            self.error(key, v.span(), "path must not be empty");
            return None;
        }
        Some(PathBuf::from(s))
    }

    fn boolean(&mut self, key: &str, v: &Val<'_>) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.expected(key, v, "true or false");
                None
            }
        }
    }

    /// An integer from `min` to `max`.
    fn int_in(&mut self, key: &str, v: &Val<'_>, min: i32, max: i32) -> Option<i32> {
        if let DeValue::Integer(i) = v.get_ref() {
            match int_value(i).and_then(|n| i32::try_from(n).ok()) {
                Some(n) if (min..=max).contains(&n) => return Some(n),
                _ => {
                    self.error(
                        key,
                        v.span(),
                        format!("{} is out of range ({min} to {max})", i.as_str()),
                    );
                    return None;
                }
            }
        }
        self.expected(key, v, &format!("an integer from {min} to {max}"));
        None
    }

    fn uint(&mut self, key: &str, v: &Val<'_>, max: u64) -> Option<u64> {
        if let DeValue::Integer(i) = v.get_ref() {
            if let Some(n) = int_value(i) {
                if n >= 0 && (n as u64) <= max {
                    return Some(n as u64);
                }
                if n >= 0 {
                    self.error(key, v.span(), format!("{n} is too large (at most {max})"));
                    return None;
                }
            }
        }
        self.expected(key, v, "a non-negative integer");
        None
    }

    fn duration(&mut self, key: &str, v: &Val<'_>) -> Option<Duration> {
        let r = match v.get_ref() {
            DeValue::String(s) => parse_duration(s),
            DeValue::Integer(i) => match int_value(i) {
                Some(n) if n >= 0 => bounded(Duration::from_secs(n as u64), &n.to_string()),
                _ => Err(format!(
                    "expected a duration (\"500ms\", \"2s\", \"1m\" or seconds >= 0), found {}",
                    describe(v.get_ref())
                )),
            },
            DeValue::Float(f) => match f.as_str().parse::<f64>() {
                Ok(x) => secs_to_duration(x),
                Err(_) => Err(format!("{} is not a number of seconds", f.as_str())),
            },
            other => Err(format!(
                "expected a duration (\"500ms\", \"2s\", \"1m\" or a number of seconds), found {}",
                describe(other)
            )),
        };
        match r {
            Ok(d) => Some(d),
            Err(m) => {
                self.error(key, v.span(), m);
                None
            }
        }
    }

    /// An array whose elements each go through `each`; elements are keyed
    /// `key[i]` for both errors and locations.
    fn array<T>(
        &mut self,
        key: &str,
        v: &Val<'_>,
        what: &str,
        mut each: impl FnMut(&mut Self, &str, &Val<'_>) -> Option<T>,
    ) -> Option<Vec<T>> {
        let DeValue::Array(items) = v.get_ref() else {
            self.expected(key, v, what);
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let k = format!("{key}[{i}]");
            self.note(&k, item.span());
            match each(self, &k, item) {
                Some(x) => out.push(x),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A size ("50MiB", or bytes); 0 allowed (for "never").
    fn size_or_zero(&mut self, key: &str, v: &Val<'_>) -> Option<u64> {
        let r = match v.get_ref() {
            DeValue::String(s) if s.trim() == "0" => Ok(0),
            DeValue::String(s) => parse_bytes(s),
            DeValue::Integer(i) => int_value(i)
                .filter(|n| *n >= 0)
                .map(|n| n as u64)
                .ok_or_else(|| format!("{} is not a size in bytes", i.as_str())),
            other => Err(format!(
                "expected a size such as \"50MiB\" or a number of bytes, found {}",
                describe(other)
            )),
        };
        match r {
            Ok(n) => Some(n),
            Err(e) => {
                self.error(key, v.span(), e);
                None
            }
        }
    }

    fn strings(&mut self, key: &str, v: &Val<'_>) -> Option<Vec<String>> {
        self.array(key, v, "an array of strings", |w, k, item| {
            w.string(k, item)
        })
    }

    fn document(&mut self, doc: &DeTable<'_>, cfg: &mut Config) {
        for (k, v) in doc.iter() {
            let name = k.get_ref().as_ref();
            self.note(name, v.span());
            match name {
                "control" => self.control(v, &mut cfg.control),
                "log" => self.log(v, &mut cfg.log),
                "watch" => self.watch(v, &mut cfg.watch),
                "master" => self.master(v, &mut cfg.master),
                "metrics" => self.metrics(v, &mut cfg.metrics),
                "pools" => self.pools(v, &mut cfg.pools),
                _ => self.unknown("", name, k.span(), TOP_KEYS),
            }
        }
    }

    fn control(&mut self, v: &Val<'_>, out: &mut ControlConfig) {
        let Some(entries) = self.table("control", v) else {
            return;
        };
        for (name, kspan, v) in entries {
            let key = format!("control.{name}");
            self.note(&key, v.span());
            match name.as_str() {
                "socket" => {
                    if let Some(p) = self.path(&key, v) {
                        out.socket = p;
                    }
                }
                "mode" => {
                    let m = match v.get_ref() {
                        DeValue::String(s) => parse_mode(s),
                        // 0o600 is already octal; a decimal 600 is read as chmod
                        // would read it, since nobody means mode 1130 octal.
                        DeValue::Integer(i) if i.radix() == 8 => int_value(i)
                            .and_then(|n| u32::try_from(n).ok())
                            .filter(|m| *m <= 0o7777)
                            .ok_or_else(|| format!("0o{} is not a file mode", i.as_str())),
                        DeValue::Integer(i) if i.radix() == 10 => parse_mode(i.as_str()),
                        other => Err(format!(
                            "expected an octal file mode such as \"0600\", found {}",
                            describe(other)
                        )),
                    };
                    match m {
                        Ok(m) => out.mode = m,
                        Err(e) => self.error(&key, v.span(), e),
                    }
                }
                "allow_uids" => {
                    let uids = self.array(&key, v, "an array of uids", |w, k, item| {
                        w.uint(k, item, u64::from(u32::MAX)).map(|n| n as u32)
                    });
                    if let Some(u) = uids {
                        out.allow_uids = u;
                    }
                }
                _ => self.unknown(
                    "control",
                    &name,
                    kspan,
                    &schema::names_of(schema::Section::Control),
                ),
            }
        }
    }

    fn log(&mut self, v: &Val<'_>, out: &mut LogConfig) {
        let Some(entries) = self.table("log", v) else {
            return;
        };
        for (name, kspan, v) in entries {
            let key = format!("log.{name}");
            self.note(&key, v.span());
            match name.as_str() {
                "level" => {
                    if let Some(s) = self.string(&key, v) {
                        match parse_level(&s) {
                            Ok(l) => out.level = l,
                            Err(e) => self.error(&key, v.span(), e),
                        }
                    }
                }
                "syslog" => {
                    if let Some(b) = self.boolean(&key, v) {
                        out.syslog = b;
                    }
                }
                "syslog_socket" => {
                    if let Some(p) = self.path(&key, v) {
                        out.syslog_socket = Some(p);
                    }
                }
                "file" => {
                    if let Some(p) = self.path(&key, v) {
                        out.file = Some(p);
                    }
                }
                "max_bytes" => {
                    if let Some(n) = self.size_or_zero(&key, v) {
                        out.max_bytes = n;
                    }
                }
                "backups" => {
                    if let Some(n) = self.uint(&key, v, u64::from(output::MAX_BACKUPS)) {
                        out.backups = n as u32;
                    }
                }
                _ => self.unknown("log", &name, kspan, &schema::names_of(schema::Section::Log)),
            }
        }
    }

    fn watch(&mut self, v: &Val<'_>, out: &mut WatchConfig) {
        let Some(entries) = self.table("watch", v) else {
            return;
        };
        for (name, kspan, v) in entries {
            let key = format!("watch.{name}");
            self.note(&key, v.span());
            match name.as_str() {
                "enabled" => {
                    if let Some(b) = self.boolean(&key, v) {
                        out.enabled = b;
                    }
                }
                "debounce" => {
                    if let Some(d) = self.duration(&key, v) {
                        out.debounce = d;
                    }
                }
                _ => self.unknown(
                    "watch",
                    &name,
                    kspan,
                    &schema::names_of(schema::Section::Watch),
                ),
            }
        }
    }

    fn master(&mut self, v: &Val<'_>, out: &mut MasterConfig) {
        let Some(entries) = self.table("master", v) else {
            return;
        };
        for (name, kspan, v) in entries {
            let key = format!("master.{name}");
            self.note(&key, v.span());
            match name.as_str() {
                "pidfile" => out.pidfile = self.path(&key, v),
                "lockfile" => out.lockfile = self.path(&key, v),
                "command_name" => out.command_name = self.string(&key, v),
                "subreaper" => {
                    if let Some(b) = self.boolean(&key, v) {
                        out.subreaper = b;
                    }
                }
                "reexec_as" => {
                    if let Some(s) = self.string(&key, v) {
                        if s.split_whitespace().next().is_none() {
                            self.error(&key, v.span(), "must name a program");
                        } else {
                            out.reexec_as = Some(s);
                        }
                    }
                }
                "upgrade_check" => {
                    if let Some(b) = self.boolean(&key, v) {
                        out.upgrade_check = b;
                    }
                }
                "upgrade_check_timeout" => {
                    if let Some(d) = self.duration(&key, v) {
                        if d.is_zero() {
                            self.error(&key, v.span(), "must be more than 0");
                        } else {
                            out.upgrade_check_timeout = d;
                        }
                    }
                }
                _ => self.unknown(
                    "master",
                    &name,
                    kspan,
                    &schema::names_of(schema::Section::MasterProcess),
                ),
            }
        }
    }

    fn metrics(&mut self, v: &Val<'_>, out: &mut MetricsConfig) {
        let Some(entries) = self.table("metrics", v) else {
            return;
        };
        for (name, kspan, v) in entries {
            let key = format!("metrics.{name}");
            self.note(&key, v.span());
            match name.as_str() {
                "listen" => {
                    if let Some(s) = self.string(&key, v) {
                        match MetricsListen::parse(&s) {
                            Ok(l) => out.listen = Some(l),
                            Err(e) => self.error(&key, v.span(), e),
                        }
                    }
                }
                _ => self.unknown(
                    "metrics",
                    &name,
                    kspan,
                    &schema::names_of(schema::Section::Metrics),
                ),
            }
        }
    }

    fn pools(&mut self, v: &Val<'_>, out: &mut BTreeMap<String, PoolConfig>) {
        let Some(entries) = self.table("pools", v) else {
            return;
        };
        for (name, kspan, v) in entries {
            let key = format!("pools.{name}");
            self.note(&key, v.span());
            if !valid_pool_name(&name) {
                self.error(
                    &key,
                    kspan,
                    format!("invalid pool name {name:?}: use letters, digits, '_', '.', '-'"),
                );
                continue;
            }
            if let Some(pool) = self.pool(&name, v) {
                out.insert(name, pool);
            }
        }
    }

    fn pool(&mut self, pname: &str, v: &Val<'_>) -> Option<PoolConfig> {
        let table = format!("pools.{pname}");
        let entries = self.table(&table, v)?;
        let mut p = PoolConfig::new(pname, Vec::new());
        for (name, kspan, v) in entries {
            let key = format!("{table}.{name}");
            self.note(&key, v.span());
            match name.as_str() {
                "command" => match v.get_ref() {
                    DeValue::String(s) => {
                        let msg = format!(
                            "expected an array of strings (argv, run without a shell), found string {s:?}; write command = [\"{}\", ...]",
                            s.split_whitespace().next().unwrap_or("./server")
                        );
                        self.error(&key, v.span(), msg);
                    }
                    _ => {
                        if let Some(c) = self.strings(&key, v) {
                            p.command = c;
                        }
                    }
                },
                "count" => {
                    if let Some(n) = self.uint(&key, v, u32::MAX as u64) {
                        p.count = n as usize;
                    }
                }
                "binds" => {
                    let binds = self.array(&key, v, "an array of bind specs", |w, k, item| {
                        let s = w.string(k, item)?;
                        match BindSpec::parse(&s) {
                            Ok(b) => Some(b),
                            Err(e) => {
                                w.error(k, item.span(), e.to_string());
                                None
                            }
                        }
                    });
                    if let Some(b) = binds {
                        p.binds = b;
                    }
                }
                "drop_env" => {
                    if let Some(d) = self.strings(&key, v) {
                        p.drop_env = d;
                    }
                }
                "env" => {
                    if let Some(entries) = self.table(&key, v) {
                        for (var, _, val) in entries {
                            let k = format!("{key}.{var}");
                            self.note(&k, val.span());
                            if let Some(s) = self.string(&k, val) {
                                p.env.insert(var, s);
                            }
                        }
                    }
                }
                "cwd" => p.cwd = self.path(&key, v),
                "ack" => {
                    if let Some(s) = self.string(&key, v) {
                        match parse_ack_mode(&s) {
                            Ok(a) => p.ack = a,
                            Err(e) => self.error(&key, v.span(), e),
                        }
                    }
                }
                "ack_timer" => {
                    if let Some(d) = self.duration(&key, v) {
                        p.ack_timer = d;
                    }
                }
                "ack_timeout" => {
                    if let Some(d) = self.duration(&key, v) {
                        p.ack_timeout = d;
                    }
                }
                "retries" => {
                    if let Some(n) = self.uint(&key, v, u32::MAX as u64) {
                        p.retries = Some(n as u32);
                    }
                }
                "respawn_delay" => {
                    if let Some(d) = self.duration(&key, v) {
                        p.respawn_delay = d;
                    }
                }
                "stop_signal" => {
                    let r = match v.get_ref() {
                        DeValue::String(s) => parse_signal(s),
                        DeValue::Integer(i) => {
                            parse_signal(&int_value(i).unwrap_or(-1).to_string())
                        }
                        other => Err(format!(
                            "expected a signal name such as \"USR2\" or a number, found {}",
                            describe(other)
                        )),
                    };
                    match r {
                        Ok(s) => p.stop_signal = s,
                        Err(e) => self.error(&key, v.span(), e),
                    }
                }
                "stop_timeout" => {
                    if let Some(d) = self.duration(&key, v) {
                        p.stop_timeout = d;
                    }
                }
                "max_unacked" => {
                    if let Some(n) = self.uint(&key, v, u32::MAX as u64) {
                        p.max_unacked = n as usize;
                    }
                }
                "max_surge" => {
                    if let Some(n) = self.uint(&key, v, u32::MAX as u64) {
                        p.max_surge = Some(n as usize);
                    }
                }
                "upgrade" => {
                    if let Some(s) = self.string(&key, v) {
                        match parse_upgrade(&s) {
                            Ok(u) => p.upgrade = u,
                            Err(e) => self.error(&key, v.span(), e),
                        }
                    }
                }
                "watch" => {
                    let paths =
                        self.array(&key, v, "an array of paths", |w, k, item| w.path(k, item));
                    if let Some(paths) = paths {
                        p.watch = paths;
                    }
                }
                "command_socket_as_fd" => {
                    if let Some(b) = self.boolean(&key, v) {
                        p.command_socket_as_fd = b;
                    }
                }
                "kill_children_on_exit" => {
                    if let Some(b) = self.boolean(&key, v) {
                        p.kill_children_on_exit = b;
                    }
                }
                "socket_protocol" => {
                    if let Some(list) = self.strings(&key, v) {
                        match parse_socket_protocol(&list) {
                            Ok(sp) => p.socket_protocol = sp,
                            Err(e) => self.error(&key, v.span(), e),
                        }
                    }
                }
                "watchdog" => p.watchdog = self.duration(&key, v),
                "canary" => {
                    if let Some(n) = self.uint(&key, v, MAX_WORKERS as u64) {
                        p.canary = Some(n as usize);
                    }
                }
                "canary_hold" => p.canary_hold = self.duration(&key, v),
                "max_age" => p.max_age = self.duration(&key, v),
                "max_age_jitter" => {
                    if let Some(d) = self.duration(&key, v) {
                        p.max_age_jitter = d;
                    }
                }
                "max_rss" => {
                    let r = match v.get_ref() {
                        DeValue::String(s) => parse_bytes(s),
                        DeValue::Integer(i) => int_value(i)
                            .filter(|n| *n > 0)
                            .map(|n| n as u64)
                            .ok_or_else(|| format!("{} is not a size in bytes", i.as_str())),
                        other => Err(format!(
                            "expected a size such as \"512MiB\" or a number of bytes, found {}",
                            describe(other)
                        )),
                    };
                    match r {
                        Ok(b) => p.max_rss = Some(b),
                        Err(e) => self.error(&key, v.span(), e),
                    }
                }
                "max_rss_interval" => {
                    if let Some(d) = self.duration(&key, v) {
                        p.max_rss_interval = d;
                    }
                }
                "heartbeat_timeout" => p.heartbeat_timeout = self.duration(&key, v),
                "user" | "group" => {
                    let r = match v.get_ref() {
                        DeValue::String(s) => identity::parse_principal(s),
                        DeValue::Integer(i) => int_value(i)
                            .and_then(|n| u32::try_from(n).ok())
                            .map(identity::Principal::Id)
                            .ok_or_else(|| format!("{} is not a valid id", i.as_str())),
                        other => Err(format!(
                            "expected a name or a numeric id, found {}",
                            describe(other)
                        )),
                    };
                    match r {
                        Ok(who) if name == "user" => p.identity.user = Some(who),
                        Ok(who) => p.identity.group = Some(who),
                        Err(e) => self.error(&key, v.span(), e),
                    }
                }
                "umask" => {
                    let r = match v.get_ref() {
                        DeValue::String(s) => parse_mode(s),
                        DeValue::Integer(i) if i.radix() == 8 => int_value(i)
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| format!("{} is not a umask", i.as_str())),
                        DeValue::Integer(i) => Err(format!(
                            "{} is a decimal number; write the umask in octal: \"0027\" or 0o027",
                            i.as_str()
                        )),
                        other => Err(format!(
                            "expected an octal umask such as \"0027\", found {}",
                            describe(other)
                        )),
                    };
                    match r {
                        Ok(m) if m <= 0o777 => p.identity.umask = Some(m),
                        Ok(m) => self.error(
                            &key,
                            v.span(),
                            format!("{m:o} is not a umask (at most 0777)"),
                        ),
                        Err(e) => self.error(&key, v.span(), e),
                    }
                }
                "nice" => {
                    if let Some(n) = self.int_in(&key, v, -20, 19) {
                        p.identity.nice = Some(n);
                    }
                }
                "oom_score_adj" => {
                    if let Some(n) = self.int_in(&key, v, -1000, 1000) {
                        p.identity.oom_score_adj = Some(n);
                    }
                }
                "rlimits" => {
                    if let Some(entries) = self.table(&key, v) {
                        for (rname, rspan, val) in entries {
                            let k = format!("{key}.{rname}");
                            self.note(&k, val.span());
                            let Some(resource) = identity::Resource::from_name(&rname) else {
                                self.error(
                                    &k,
                                    rspan,
                                    format!(
                                        "unknown limit {rname:?} (known: {})",
                                        identity::Resource::names()
                                    ),
                                );
                                continue;
                            };
                            let r = match val.get_ref() {
                                DeValue::String(s) => identity::parse_limit(resource, s),
                                DeValue::Integer(i) => match int_value(i) {
                                    Some(n) if n >= 0 => {
                                        identity::parse_limit(resource, &n.to_string())
                                    }
                                    _ => Err(format!("{} is not a limit", i.as_str())),
                                },
                                other => Err(format!(
                                    "expected a number, \"unlimited\" or \"SOFT:HARD\", found {}",
                                    describe(other)
                                )),
                            };
                            match r {
                                Ok(l) => {
                                    p.identity.rlimits.insert(resource, l);
                                }
                                Err(e) => self.error(&k, val.span(), e),
                            }
                        }
                    }
                }
                "stop_group" => {
                    if let Some(b) = self.boolean(&key, v) {
                        p.stop_group = b;
                    }
                }
                "stdout" | "stderr" => {
                    if let Some(s) = self.string(&key, v) {
                        match output::parse_sink(&s) {
                            Ok(sink) if name == "stdout" => p.output.stdout = sink,
                            Ok(sink) => p.output.stderr = sink,
                            Err(e) => self.error(&key, v.span(), e),
                        }
                    }
                }
                "output_max_bytes" => {
                    if let Some(n) = self.size_or_zero(&key, v) {
                        p.output.max_bytes = n;
                    }
                }
                "output_backups" => {
                    if let Some(n) = self.uint(&key, v, u64::from(output::MAX_BACKUPS)) {
                        p.output.backups = n as u32;
                    }
                }
                _ => self.unknown(
                    &table,
                    &name,
                    kspan,
                    &schema::names_of(schema::Section::Pool),
                ),
            }
        }
        Some(p)
    }
}
