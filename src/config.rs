//! The validated, immutable configuration every part of the master runs from.
//!
//! Two front ends produce it: the TOML file (`--config`, parsed here) and the
//! classic einhorn command line (`cli`). Both end in [`Config`], and both go through
//! [`Config::validate`], so a setting means the same thing whichever way it came.
//!
//! Parsing is two-stage. Stage one is toml's spanned document tree
//! ([`toml::de::DeTable`]): every key and value with its byte span. We walk that
//! tree by hand rather than deserialising into `deny_unknown_fields` serde structs
//! because serde stops at the first problem, and an operator fixing a config file
//! wants every problem at once (unknown keys, wrong types, bad binds), each with its
//! file, line, column and dotted key. Stage two is [`Config::validate`], the
//! semantic checks shared with the command line (non-empty command, duplicate
//! addresses, ranges). The walk also records where every key was written
//! ([`Locations`]), so that the master can later say "bind failed, app.toml:7" for
//! a problem only the OS can detect.
//!
//! Relative paths (`cwd`, `watch`, the control socket, pidfile, unix binds,
//! `command[0]` with a slash) are kept exactly as written: like einhorn, they are
//! relative to the master's working directory, not to the config file.
//!
//! [`diff`] compares two configs for a reload (BRIEF §6): which pools start, stop,
//! scale, roll, or only take new tunables.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::bind::{BindAddr, BindSpec};

/// Default control socket path, as einhorn.
pub const DEFAULT_SOCKET: &str = "/tmp/einhorn.sock";

/// The whole configuration of one master.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from (`None` for the classic command line).
    pub source: Option<PathBuf>,
    pub control: ControlConfig,
    pub log: LogConfig,
    pub watch: WatchConfig,
    pub master: MasterConfig,
    /// Pools by name; iteration order is the name order.
    pub pools: BTreeMap<String, PoolConfig>,
    /// Where each key was written (empty for the command line). Always compares
    /// equal, so two configs differing only in layout are equal.
    pub locations: Locations,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ControlConfig {
    /// Path of the unix control socket.
    pub socket: PathBuf,
    /// File mode of the socket (default 0o600).
    pub mode: u32,
    /// Extra uids (besides the master's own and root) allowed to connect.
    pub allow_uids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub level: log::LevelFilter,
    /// Send WARN and above to syslog as well.
    pub syslog: bool,
    /// The syslog daemon's socket; `None`: /dev/log, then /var/run/syslog and
    /// /var/run/log (containers often mount it elsewhere).
    pub syslog_socket: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WatchConfig {
    /// Watch binaries, `watch` paths and the config file.
    pub enabled: bool,
    /// Quiet time after the last event before a pool rolls.
    pub debounce: Duration,
}

/// Settings of the master process itself (einhorn's `-e`, `-f`, `-c`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MasterConfig {
    pub pidfile: Option<PathBuf>,
    pub lockfile: Option<PathBuf>,
    pub command_name: Option<String>,
    /// `--subreaper` / `subreaper = true`: reap orphaned grandchildren (PR_SET_CHILD_SUBREAPER).
    pub subreaper: bool,
}

/// How a worker proves it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// Alive for `ack_timer` = acked.
    Timer,
    /// Must send `worker:ack` within `ack_timeout`.
    Manual,
    /// Must send `READY=1` to the master's NOTIFY_SOCKET within `ack_timeout`
    /// (workers written for systemd's `Type=notify`; see `crate::notify_ack`).
    Notify,
}

/// Which socket-passing conventions a pool's workers get (`socket_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketProtocol {
    /// EINHORN_FD_COUNT / EINHORN_FD_n / EINHORN_FDS.
    pub einhorn: bool,
    /// Sockets at fds 3.. with LISTEN_FDS / LISTEN_FDNAMES / LISTEN_PID.
    pub systemd: bool,
}

impl Default for SocketProtocol {
    fn default() -> SocketProtocol {
        SocketProtocol {
            einhorn: true,
            systemd: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeStrategy {
    /// One by one: each new ack retires one old worker.
    Smooth,
    /// All new at once; all old retired once every new one acked.
    Fleet,
}

/// One pool of identical workers.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    /// argv; `command[0]` is looked up in PATH at spawn time.
    pub command: Vec<String>,
    pub count: usize,
    /// Sockets, in the order workers see them (EINHORN_FD_0 ...).
    pub binds: Vec<BindSpec>,
    pub drop_env: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    pub ack: AckMode,
    pub ack_timer: Duration,
    pub ack_timeout: Duration,
    /// Steady state: give up respawning after this many consecutive failures
    /// (unlimited when `None`). Upgrades: abandon after this many failures
    /// (default [`DEFAULT_UPGRADE_RETRIES`] when `None`).
    pub retries: Option<u32>,
    pub respawn_delay: Duration,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub max_unacked: usize,
    /// Workers allowed beyond `count` during a smooth upgrade; `None` = `count`.
    pub max_surge: Option<usize>,
    pub upgrade: UpgradeStrategy,
    pub watch: Vec<PathBuf>,
    /// einhorn `-g`: pass an fd already connected to the control socket.
    pub command_socket_as_fd: bool,
    /// einhorn `-k`: workers get `stop_signal` if the master dies (PR_SET_PDEATHSIG).
    pub kill_children_on_exit: bool,
    /// `socket_protocol = ["einhorn"]` (default), `["systemd"]` or both.
    pub socket_protocol: SocketProtocol,
    /// `ack = "notify"`: an acked worker must send WATCHDOG=1 at least this often
    /// (it gets WATCHDOG_USEC) or it is replaced.
    pub watchdog: Option<Duration>,
}

pub const DEFAULT_UPGRADE_RETRIES: u32 = 3;
/// Most workers one pool may ask for: a guard against a typo forking millions.
pub const MAX_WORKERS: usize = 100_000;
pub const DEFAULT_ACK_TIMER: Duration = Duration::from_secs(1);
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RESPAWN_DELAY: Duration = Duration::from_secs(1);
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);
/// Cap of the exponential respawn backoff, as einhorn.
pub const MAX_RESPAWN_DELAY: Duration = Duration::from_secs(30);

/// Number of CPUs, einhorn's default for `max_unacked`.
pub fn default_max_unacked() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl PoolConfig {
    /// A pool with every setting at its default.
    pub fn new(name: impl Into<String>, command: Vec<String>) -> PoolConfig {
        PoolConfig {
            name: name.into(),
            command,
            count: 1,
            binds: Vec::new(),
            drop_env: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            ack: AckMode::Timer,
            ack_timer: DEFAULT_ACK_TIMER,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            retries: None,
            respawn_delay: DEFAULT_RESPAWN_DELAY,
            stop_signal: Signal::SIGUSR2,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            max_unacked: default_max_unacked(),
            max_surge: None,
            upgrade: UpgradeStrategy::Smooth,
            watch: Vec::new(),
            command_socket_as_fd: false,
            kill_children_on_exit: false,
            socket_protocol: SocketProtocol::default(),
            watchdog: None,
        }
    }

    /// Workers allowed beyond `count` during a smooth upgrade.
    pub fn surge(&self, count: usize) -> usize {
        self.max_surge.unwrap_or(count).max(1)
    }

    /// Failures after which an upgrade is abandoned.
    pub fn upgrade_retries(&self) -> u32 {
        self.retries.unwrap_or(DEFAULT_UPGRADE_RETRIES).max(1)
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            source: None,
            control: ControlConfig {
                socket: PathBuf::from(DEFAULT_SOCKET),
                mode: 0o600,
                allow_uids: Vec::new(),
            },
            log: LogConfig {
                level: log::LevelFilter::Info,
                syslog: false,
                syslog_socket: None,
            },
            watch: WatchConfig {
                enabled: true,
                debounce: DEFAULT_DEBOUNCE,
            },
            master: MasterConfig::default(),
            pools: BTreeMap::new(),
            locations: Locations::default(),
        }
    }
}

// ---------------------------------------------------------------------------
// Errors

/// One problem in a configuration, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    /// 1-based.
    pub line: Option<usize>,
    /// 1-based, in characters.
    pub column: Option<usize>,
    /// Dotted key, e.g. `pools.web.count` or `pools.web.binds[1]`; empty when the
    /// problem is not about one key (unreadable file, TOML syntax).
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => {
                write!(f, "{}:{line}", file.display())?;
                if let Some(col) = self.column {
                    write!(f, ":{col}")?;
                }
                f.write_str(": ")?;
            }
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, Some(line)) => {
                write!(f, "line {line}")?;
                if let Some(col) = self.column {
                    write!(f, ":{col}")?;
                }
                f.write_str(": ")?;
            }
            (None, None) => {}
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one configuration (never empty when returned as `Err`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![e])
    }
}

// ---------------------------------------------------------------------------
// Locations

/// Where each dotted key (`pools.web.binds[0]`) was written: (line, column),
/// both 1-based. Layout is not configuration, so this always compares equal.
#[derive(Debug, Clone, Default)]
pub struct Locations(BTreeMap<String, (usize, usize)>);

impl PartialEq for Locations {
    fn eq(&self, _: &Locations) -> bool {
        true
    }
}

impl Locations {
    pub fn insert(&mut self, key: impl Into<String>, line: usize, column: usize) {
        self.0.insert(key.into(), (line, column));
    }

    /// The exact key's position.
    pub fn get(&self, key: &str) -> Option<(usize, usize)> {
        self.0.get(key).copied()
    }

    /// The key's position, else its nearest recorded parent's (`pools.web.command`
    /// missing falls back to the `[pools.web]` header).
    pub fn find(&self, key: &str) -> Option<(usize, usize)> {
        let mut k = key;
        loop {
            if let Some(p) = self.get(k) {
                return Some(p);
            }
            let cut = match (k.rfind('.'), k.rfind('[')) {
                (Some(a), Some(b)) => a.max(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => return None,
            };
            k = &k[..cut];
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

// ---------------------------------------------------------------------------
// Value parsers shared with the command line

/// Parse a duration: `"500ms"`, `"2s"`, `"1m"`, `"1h"`, `"1.5s"`, `"1m30s"`, or a
/// bare number of seconds (`"2"`, `"0.5"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return secs_to_duration(secs);
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("{s:?} is not a duration ({e}); write e.g. \"500ms\", \"2s\", \"1m\" or a number of seconds")
    })
}

fn secs_to_duration(secs: f64) -> Result<Duration, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!(
            "{secs} is not a duration: expected a non-negative number of seconds"
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{secs} seconds: {e}"))
}

/// Parse a signal: `"USR2"`, `"SIGUSR2"`, `"usr2"` or a number (`"12"`); kill(1)'s
/// spelling with a leading dash (`"-USR1"`, `"-9"`) is accepted too, since that is
/// what an operator types after `signal`.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let t = s.trim();
    let t = t.strip_prefix('-').unwrap_or(t);
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("{n} is not a signal number"));
    }
    let up = t.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    Signal::from_str(&name)
        .map_err(|_| format!("unknown signal {s:?} (write e.g. \"USR2\", \"SIGTERM\" or a number)"))
}

/// Parse an ack mode: `"timer"` or `"manual"`.
pub fn parse_ack_mode(s: &str) -> Result<AckMode, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "timer" => Ok(AckMode::Timer),
        "manual" => Ok(AckMode::Manual),
        "notify" => Ok(AckMode::Notify),
        _ => Err(format!(
            "unknown ack mode {s:?} (expected \"timer\", \"manual\" or \"notify\")"
        )),
    }
}

/// Parse `socket_protocol`: a non-empty list of `"einhorn"` and `"systemd"`.
pub fn parse_socket_protocol(list: &[String]) -> Result<SocketProtocol, String> {
    let mut sp = SocketProtocol {
        einhorn: false,
        systemd: false,
    };
    for s in list {
        match s.trim().to_ascii_lowercase().as_str() {
            "einhorn" => sp.einhorn = true,
            "systemd" => sp.systemd = true,
            _ => {
                return Err(format!(
                    "unknown socket protocol {s:?} (expected \"einhorn\" and/or \"systemd\")"
                ))
            }
        }
    }
    if !sp.einhorn && !sp.systemd {
        return Err("must name at least one of \"einhorn\" and \"systemd\"".into());
    }
    Ok(sp)
}

/// Parse an upgrade strategy: `"smooth"` or `"fleet"`.
pub fn parse_upgrade(s: &str) -> Result<UpgradeStrategy, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "smooth" => Ok(UpgradeStrategy::Smooth),
        "fleet" => Ok(UpgradeStrategy::Fleet),
        _ => Err(format!(
            "unknown upgrade strategy {s:?} (expected \"smooth\" or \"fleet\")"
        )),
    }
}

/// Parse a log level: error|warn|info|debug|trace|off.
pub fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    log::LevelFilter::from_str(s.trim()).map_err(|_| {
        format!("unknown log level {s:?} (expected error, warn, info, debug, trace or off)")
    })
}

/// Parse a file mode written as octal text (`"0600"`, `"600"`, `"0o600"`).
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(m),
        _ => Err(format!(
            "{s:?} is not an octal file mode (write e.g. \"0600\")"
        )),
    }
}

/// Whether `name` is a valid pool name: `[A-Za-z0-9_.-]+`.
pub fn valid_pool_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The einhorn name of a signal without `SIG` (`USR2`), for summaries.
fn signal_name(s: Signal) -> &'static str {
    let n = s.as_str();
    n.strip_prefix("SIG").unwrap_or(n)
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

// ---------------------------------------------------------------------------
// Loading and validation

impl Config {
    /// Read, parse and validate a TOML file. An unreadable file is one error
    /// naming the path.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            line: None,
            column: None,
            key: String::new(),
            message: format!("cannot read config file: {e}"),
        })?;
        Config::from_toml_str(&text, Some(path))
    }

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

    /// Semantic checks shared by both front ends. Errors carry file and line when
    /// the config came from a file.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs: Vec<(String, String)> = Vec::new();
        let mut err = |key: String, msg: String| errs.push((key, msg));

        if self.control.socket.as_os_str().is_empty() {
            err("control.socket".into(), "must not be empty".into());
        }
        if self.control.mode > 0o7777 {
            err(
                "control.mode".into(),
                format!(
                    "{:o} is not a file mode (at most 7777 octal)",
                    self.control.mode
                ),
            );
        }

        // Address text -> first key that bound it.
        let mut bound: BTreeMap<String, String> = BTreeMap::new();
        for (name, pool) in &self.pools {
            let p = format!("pools.{name}");
            if !valid_pool_name(name) {
                err(
                    p.clone(),
                    format!("invalid pool name {name:?}: use letters, digits, '_', '.', '-'"),
                );
            }
            if pool.name != *name {
                err(
                    p.clone(),
                    format!("pool is filed as {name:?} but named {:?}", pool.name),
                );
            }
            match pool.command.first() {
                None => err(
                    format!("{p}.command"),
                    "missing: every pool needs a program, e.g. command = [\"./server\", \"--flag\"]"
                        .into(),
                ),
                Some(c) if c.trim().is_empty() => {
                    err(format!("{p}.command[0]"), "program name is empty".into())
                }
                Some(_) => {}
            }
            for (i, a) in pool.command.iter().enumerate() {
                if a.contains('\0') {
                    err(format!("{p}.command[{i}]"), "contains a NUL byte".into());
                }
            }
            if pool.count > MAX_WORKERS {
                err(
                    format!("{p}.count"),
                    format!("{} is more than {MAX_WORKERS} workers", pool.count),
                );
            }
            if pool.max_unacked == 0 {
                err(
                    format!("{p}.max_unacked"),
                    "must be at least 1 (0 would never start a worker)".into(),
                );
            }
            if pool.max_surge == Some(0) {
                err(
                    format!("{p}.max_surge"),
                    "must be at least 1 (0 would never start a new worker during an upgrade)"
                        .into(),
                );
            }
            if pool.ack != AckMode::Timer && pool.ack_timeout.is_zero() {
                err(
                    format!("{p}.ack_timeout"),
                    "must be more than 0 in manual and notify ack modes".into(),
                );
            }
            if pool.watchdog.is_some() && pool.ack != AckMode::Notify {
                err(
                    format!("{p}.watchdog"),
                    "needs ack = \"notify\" (workers ping with WATCHDOG=1 on the notify socket)"
                        .into(),
                );
            }
            if pool.watchdog.is_some_and(|w| w.is_zero()) {
                err(format!("{p}.watchdog"), "must be more than 0".into());
            }
            for (i, v) in pool.drop_env.iter().enumerate() {
                if v.is_empty() || v.contains('=') || v.contains('\0') {
                    err(
                        format!("{p}.drop_env[{i}]"),
                        format!("{v:?} is not an environment variable name"),
                    );
                }
            }
            for (k, v) in &pool.env {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    err(
                        format!("{p}.env"),
                        format!("{k:?} is not an environment variable name"),
                    );
                } else if v.contains('\0') {
                    err(format!("{p}.env.{k}"), "value contains a NUL byte".into());
                }
            }
            for (i, b) in pool.binds.iter().enumerate() {
                let key = format!("{p}.binds[{i}]");
                // Port 0 asks the kernel for a fresh port each time: never a clash.
                if matches!(b.addr, BindAddr::Inet { port: 0, .. }) {
                    continue;
                }
                let addr = b.addr_text();
                match bound.get(&addr) {
                    Some(first) => err(
                        key,
                        format!(
                            "address {addr} is already bound by {} ({})",
                            first,
                            self.locate(first)
                        ),
                    ),
                    None => {
                        bound.insert(addr, key);
                    }
                }
            }
        }

        if errs.is_empty() {
            return Ok(());
        }
        Err(ConfigErrors(
            errs.into_iter()
                .map(|(key, message)| {
                    let pos = self.locations.find(&key);
                    ConfigError {
                        file: self.source.clone(),
                        line: pos.map(|p| p.0),
                        column: pos.map(|p| p.1),
                        key,
                        message,
                    }
                })
                .collect(),
        ))
    }

    /// `file:line` of a dotted key (or of its nearest parent), for messages about
    /// problems found after parsing, e.g. a bind that fails. Without a file:
    /// `line N` when known, else the bare key.
    pub fn locate(&self, key: &str) -> String {
        match (self.locations.find(key), &self.source) {
            (Some((line, _)), Some(file)) => format!("{}:{line}", file.display()),
            (Some((line, _)), None) => format!("line {line}"),
            (None, _) => key.to_string(),
        }
    }

    /// Human summary for `einhyrningsins check`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "control socket: {} (mode {:04o}{})",
            self.control.socket.display(),
            self.control.mode,
            if self.control.allow_uids.is_empty() {
                String::new()
            } else {
                format!(", also uids {:?}", self.control.allow_uids)
            }
        );
        let _ = writeln!(
            s,
            "log: {}{}; watch: {}",
            self.log.level.as_str().to_ascii_lowercase(),
            if self.log.syslog { " + syslog" } else { "" },
            if self.watch.enabled {
                format!("on (debounce {})", fmt_duration(self.watch.debounce))
            } else {
                "off".to_string()
            }
        );
        if self.pools.is_empty() {
            let _ = writeln!(s, "no pools");
        }
        for (name, p) in &self.pools {
            let _ = writeln!(s, "\npool {name}:");
            let argv: Vec<String> = p
                .command
                .iter()
                .map(|a| {
                    if a.is_empty() || a.chars().any(|c| c.is_whitespace() || c == '"') {
                        format!("{a:?}")
                    } else {
                        a.clone()
                    }
                })
                .collect();
            let _ = writeln!(s, "  command:  {}", argv.join(" "));
            let _ = writeln!(s, "  count:    {}", p.count);
            if p.binds.is_empty() {
                let _ = writeln!(s, "  binds:    none");
            } else {
                let b: Vec<&str> = p.binds.iter().map(|b| b.raw.as_str()).collect();
                let _ = writeln!(s, "  binds:    {}", b.join("  "));
            }
            let ack = match p.ack {
                AckMode::Timer => format!("timer ({})", fmt_duration(p.ack_timer)),
                AckMode::Manual => format!("manual (within {})", fmt_duration(p.ack_timeout)),
                AckMode::Notify => format!(
                    "notify (READY=1 within {}{})",
                    fmt_duration(p.ack_timeout),
                    p.watchdog
                        .map_or(String::new(), |w| format!(", watchdog {}", fmt_duration(w)))
                ),
            };
            let _ = writeln!(s, "  ack:      {ack}");
            let surge = match p.max_surge {
                Some(n) => n.to_string(),
                None => "count".to_string(),
            };
            let _ = writeln!(
                s,
                "  upgrade:  {} (max_unacked {}, max_surge {surge})",
                match p.upgrade {
                    UpgradeStrategy::Smooth => "smooth",
                    UpgradeStrategy::Fleet => "fleet",
                },
                p.max_unacked
            );
            let _ = writeln!(
                s,
                "  stop:     {} then SIGKILL after {}",
                signal_name(p.stop_signal),
                fmt_duration(p.stop_timeout)
            );
        }
        s
    }
}

// ---------------------------------------------------------------------------
// The walk over the spanned TOML tree

type Val<'i> = Spanned<DeValue<'i>>;

const TOP_KEYS: &[&str] = &["control", "log", "watch", "master", "pools"];
const CONTROL_KEYS: &[&str] = &["socket", "mode", "allow_uids"];
const LOG_KEYS: &[&str] = &["level", "syslog", "syslog_socket"];
const WATCH_KEYS: &[&str] = &["enabled", "debounce"];
const MASTER_KEYS: &[&str] = &["pidfile", "lockfile", "command_name", "subreaper"];
const POOL_KEYS: &[&str] = &[
    "command",
    "count",
    "binds",
    "drop_env",
    "env",
    "cwd",
    "ack",
    "ack_timer",
    "ack_timeout",
    "retries",
    "respawn_delay",
    "stop_signal",
    "stop_timeout",
    "max_unacked",
    "max_surge",
    "upgrade",
    "watch",
    "command_socket_as_fd",
    "kill_children_on_exit",
    "socket_protocol",
    "watchdog",
];

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
                Some(n) if n >= 0 => Ok(Duration::from_secs(n as u64)),
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
                _ => self.unknown("control", &name, kspan, CONTROL_KEYS),
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
                _ => self.unknown("log", &name, kspan, LOG_KEYS),
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
                _ => self.unknown("watch", &name, kspan, WATCH_KEYS),
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
                _ => self.unknown("master", &name, kspan, MASTER_KEYS),
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
                _ => self.unknown(&table, &name, kspan, POOL_KEYS),
            }
        }
        Some(p)
    }
}

// ---------------------------------------------------------------------------
// Reload diff

/// What a reload changes (BRIEF §6). Pool names in each list are in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Pools only in the new config: start them.
    pub added: Vec<String>,
    /// Pools only in the old config: drain them.
    pub removed: Vec<String>,
    /// (pool, old count, new count).
    pub scaled: Vec<(String, usize, usize)>,
    /// Pools whose workers must be replaced, with the keys that changed.
    pub rolled: Vec<(String, Vec<&'static str>)>,
    /// Pools not rolled whose new tunables apply in place (retries, delays,
    /// stop signal/timeout, max_unacked, max_surge, upgrade, watch).
    pub retuned: Vec<String>,
    /// Pools identical in both.
    pub unchanged: Vec<String>,
    /// Changed global sections: "control", "log", "watch", "master".
    pub global: Vec<&'static str>,
}

impl ConfigDiff {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.scaled.is_empty()
            && self.rolled.is_empty()
            && self.retuned.is_empty()
            && self.global.is_empty()
    }
}

/// Compare two configs for a reload. Every pool present in both ends up in
/// `unchanged`, or in one or more of `scaled`, `rolled`, `retuned` (a pool can
/// be scaled and rolled, or scaled and retuned). The caller should swap in the new
/// [`PoolConfig`] for every kept pool that is not unchanged.
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let mut d = ConfigDiff::default();
    if old.control != new.control {
        d.global.push("control");
    }
    if old.log != new.log {
        d.global.push("log");
    }
    if old.watch != new.watch {
        d.global.push("watch");
    }
    if old.master != new.master {
        d.global.push("master");
    }
    for name in old.pools.keys() {
        if !new.pools.contains_key(name) {
            d.removed.push(name.clone());
        }
    }
    for (name, n) in &new.pools {
        let Some(o) = old.pools.get(name) else {
            d.added.push(name.clone());
            continue;
        };
        if o == n {
            d.unchanged.push(name.clone());
            continue;
        }
        if o.count != n.count {
            d.scaled.push((name.clone(), o.count, n.count));
        }
        let mut roll = Vec::new();
        let mut check = |changed: bool, key: &'static str| {
            if changed {
                roll.push(key);
            }
        };
        check(o.command != n.command, "command");
        check(o.env != n.env, "env");
        check(o.drop_env != n.drop_env, "drop_env");
        check(o.cwd != n.cwd, "cwd");
        check(o.ack != n.ack, "ack");
        check(o.ack_timer != n.ack_timer, "ack_timer");
        check(o.ack_timeout != n.ack_timeout, "ack_timeout");
        check(o.binds != n.binds, "binds");
        check(
            o.command_socket_as_fd != n.command_socket_as_fd,
            "command_socket_as_fd",
        );
        check(
            o.kill_children_on_exit != n.kill_children_on_exit,
            "kill_children_on_exit",
        );
        check(o.socket_protocol != n.socket_protocol, "socket_protocol");
        check(o.watchdog != n.watchdog, "watchdog");
        let retune = o.retries != n.retries
            || o.respawn_delay != n.respawn_delay
            || o.stop_signal != n.stop_signal
            || o.stop_timeout != n.stop_timeout
            || o.max_unacked != n.max_unacked
            || o.max_surge != n.max_surge
            || o.upgrade != n.upgrade
            || o.watch != n.watch;
        if !roll.is_empty() {
            d.rolled.push((name.clone(), roll));
        } else if retune {
            d.retuned.push(name.clone());
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
[control]
socket = "/run/app/einhorn.sock"
mode = "0660"
allow_uids = [1000, 1001]

[log]
level = "debug"
syslog = true
syslog_socket = "/run/log/syslog.sock"

[watch]
enabled = false
debounce = "500ms"

[master]
pidfile = "/run/app.pid"
lockfile = "app.lock"
command_name = "app"

[pools.web]
command = ["./bin/web", "--workers-from-env"]
count = 4
binds = ["127.0.0.1:8080,r", "[::1]:8080,r,n"]
drop_env = ["AWS_SECRET_ACCESS_KEY"]
env = { RUST_LOG = "info" }
cwd = "/srv/web"
ack = "manual"
ack_timer = "1.5s"
ack_timeout = 45
retries = 3
respawn_delay = 0.25
stop_signal = "SIGTERM"
stop_timeout = "1m"
max_unacked = 2
max_surge = 1
upgrade = "fleet"
watch = ["/srv/web/REVISION"]
command_socket_as_fd = true
kill_children_on_exit = true

[pools.jobs]
command = ["./bin/jobs"]
count = 0
"#;

    fn errors_of(text: &str) -> Vec<ConfigError> {
        match Config::from_toml_str(text, Some(Path::new("app.toml"))) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(ConfigErrors(v)) => v,
        }
    }

    #[test]
    fn full_file_maps_every_key() -> Result<(), ConfigErrors> {
        let c = Config::from_toml_str(FULL, Some(Path::new("app.toml")))?;
        assert_eq!(c.source.as_deref(), Some(Path::new("app.toml")));
        assert_eq!(c.control.socket, PathBuf::from("/run/app/einhorn.sock"));
        assert_eq!(c.control.mode, 0o660);
        assert_eq!(c.control.allow_uids, vec![1000, 1001]);
        assert_eq!(c.log.level, log::LevelFilter::Debug);
        assert!(c.log.syslog);
        assert_eq!(
            c.log.syslog_socket.as_deref(),
            Some(Path::new("/run/log/syslog.sock"))
        );
        assert!(!c.watch.enabled);
        assert_eq!(c.watch.debounce, Duration::from_millis(500));
        assert_eq!(c.master.pidfile, Some(PathBuf::from("/run/app.pid")));
        assert_eq!(c.master.lockfile, Some(PathBuf::from("app.lock")));
        assert_eq!(c.master.command_name.as_deref(), Some("app"));
        let w = &c.pools["web"];
        assert_eq!(w.name, "web");
        assert_eq!(w.command, vec!["./bin/web", "--workers-from-env"]);
        assert_eq!(w.count, 4);
        assert_eq!(w.binds.len(), 2);
        assert_eq!(w.binds[1].addr_text(), "[::1]:8080");
        assert!(w.binds[1].nonblock);
        assert_eq!(w.drop_env, vec!["AWS_SECRET_ACCESS_KEY"]);
        assert_eq!(w.env.get("RUST_LOG").map(String::as_str), Some("info"));
        assert_eq!(w.cwd, Some(PathBuf::from("/srv/web")));
        assert_eq!(w.ack, AckMode::Manual);
        assert_eq!(w.ack_timer, Duration::from_millis(1500));
        assert_eq!(w.ack_timeout, Duration::from_secs(45));
        assert_eq!(w.retries, Some(3));
        assert_eq!(w.respawn_delay, Duration::from_millis(250));
        assert_eq!(w.stop_signal, Signal::SIGTERM);
        assert_eq!(w.stop_timeout, Duration::from_secs(60));
        assert_eq!(w.max_unacked, 2);
        assert_eq!(w.max_surge, Some(1));
        assert_eq!(w.upgrade, UpgradeStrategy::Fleet);
        assert_eq!(w.watch, vec![PathBuf::from("/srv/web/REVISION")]);
        assert!(w.command_socket_as_fd && w.kill_children_on_exit);
        let j = &c.pools["jobs"];
        assert_eq!(j.count, 0);
        assert_eq!(j.ack, AckMode::Timer);
        assert_eq!(j.stop_signal, Signal::SIGUSR2);
        assert_eq!(j.max_surge, None);
        Ok(())
    }

    #[test]
    fn minimal_file_gets_defaults() -> Result<(), ConfigErrors> {
        let c = Config::from_toml_str("[pools.a]\ncommand = [\"x\"]\n", None)?;
        let d = Config::default();
        assert_eq!(c.control, d.control);
        assert_eq!(c.log, d.log);
        assert_eq!(c.watch, d.watch);
        assert_eq!(c.pools["a"], PoolConfig::new("a", vec!["x".into()]));
        Ok(())
    }

    #[test]
    fn type_error_has_file_line_column_key_and_found_value() {
        let text = "[pools.web]\ncommand = [\"x\"]\ncount = \"four\"\n";
        let e = errors_of(text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            e[0].to_string(),
            "app.toml:3:9: pools.web.count: expected a non-negative integer, found string \"four\""
        );
    }

    #[test]
    fn every_problem_is_reported_not_only_the_first() {
        let text = r#"
[control]
sockett = "/tmp/x"

[pools.web]
command = ["x"]
count = -1
binds = ["127.0.0.1:8080", "8080", "127.0.0.1:8080"]
ack = "sometimes"
stop_signal = "USR9"
colour = "blue"
respawn_delay = "soon"

[pools.jobs]
count = 2
"#;
        let e = errors_of(text);
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "control.sockett",
            "pools.web.count",
            "pools.web.binds[1]",
            "pools.web.ack",
            "pools.web.stop_signal",
            "pools.web.colour",
            "pools.web.respawn_delay",
            "pools.jobs.command",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        // Sorted by position, every one with a line.
        assert!(e.iter().all(|e| e.line.is_some()), "{e:?}");
        let lines: Vec<usize> = e.iter().filter_map(|e| e.line).collect();
        assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{lines:?}");
        let unknown = e.iter().find(|e| e.key == "pools.web.colour");
        match unknown {
            Some(u) => {
                assert_eq!(u.line, Some(11));
                assert!(u.message.contains("`colour`") && u.message.contains("[pools.web]"));
            }
            None => panic!("no colour error"),
        }
        let bind = e.iter().find(|e| e.key == "pools.web.binds[1]");
        assert!(
            matches!(bind, Some(b) if b.message.contains("\"8080\"")),
            "{bind:?}"
        );
        // Missing command points at the pool header.
        let missing = e.iter().find(|e| e.key == "pools.jobs.command");
        assert!(
            matches!(missing, Some(m) if m.line == Some(14)),
            "{missing:?}"
        );
    }

    #[test]
    fn duplicate_binds_are_refused_naming_both_places() {
        let text = r#"[pools.a]
command = ["a"]
binds = ["127.0.0.1:9000,r"]

[pools.b]
command = ["b"]
binds = ["unix:/tmp/s.sock", "127.0.0.1:9000"]
"#;
        let e = errors_of(text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].key, "pools.b.binds[1]");
        assert_eq!(e[0].line, Some(7));
        assert!(e[0].message.contains("127.0.0.1:9000"), "{}", e[0]);
        assert!(
            e[0].message.contains("pools.a.binds[0] (app.toml:3)"),
            "{}",
            e[0]
        );
        // Within one pool too; port 0 never clashes.
        let e = errors_of("[pools.a]\ncommand=[\"a\"]\nbinds=[\"/tmp/x\", \"unix:/tmp/x\"]\n");
        assert_eq!(e[0].key, "pools.a.binds[1]");
        let ok = Config::from_toml_str(
            "[pools.a]\ncommand=[\"a\"]\nbinds=[\"127.0.0.1:0\", \"127.0.0.1:0\"]\n",
            None,
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn command_must_be_argv() {
        let e = errors_of("[pools.a]\ncommand = \"./server --flag\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].message.contains("argv"), "{}", e[0]);
        let e = errors_of("[pools.a]\ncommand = []\n");
        assert_eq!(e[0].key, "pools.a.command");
        let e = errors_of("[pools.a]\ncommand = [1]\n");
        assert_eq!(e[0].key, "pools.a.command[0]");
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let e = errors_of("[pools.a]\ncommand = [\"a\"\ncount = 1\n");
        assert!(!e.is_empty());
        assert!(e[0].line.is_some() && e[0].column.is_some(), "{e:?}");
        assert!(e[0].to_string().starts_with("app.toml:"), "{}", e[0]);
        assert!(e[0].message.contains("syntax"), "{}", e[0]);
        // Duplicate keys are a TOML error too.
        let e = errors_of("[pools.a]\ncommand = [\"a\"]\ncount = 1\ncount = 2\n");
        assert_eq!(e[0].line, Some(4), "{e:?}");
    }

    #[test]
    fn unknown_top_level_and_wrong_table_types() {
        let e = errors_of("pool = 1\ncontrol = 3\n[pools]\n\"bad name\" = {command=[\"x\"]}\n");
        let msgs: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert!(
            msgs.iter()
                .any(|m| m.contains("app.toml:1:1: pool: unknown key `pool` at the top level")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("control: expected a table, found integer 3")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("invalid pool name \"bad name\"")),
            "{msgs:?}"
        );
    }

    #[test]
    fn ranges_and_formats() {
        let e = errors_of("[pools.a]\ncommand=[\"a\"]\nmax_unacked = 0\nmax_surge = 0\n");
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["pools.a.max_unacked", "pools.a.max_surge"]);
        assert_eq!(e[0].line, Some(3));
        let e = errors_of("[control]\nmode = \"0999\"\n[log]\nlevel = \"loud\"\n");
        assert_eq!(e.len(), 2, "{e:?}");
        let c = Config::from_toml_str("[control]\nmode = 0o640\n", None);
        assert!(matches!(c, Ok(c) if c.control.mode == 0o640));
        let c = Config::from_toml_str("[control]\nmode = 600\n", None);
        assert!(matches!(c, Ok(c) if c.control.mode == 0o600));
        let e = errors_of("[pools.a]\ncommand=[\"a\"]\nack_timer = -1\nstop_timeout = true\n");
        assert_eq!(e.len(), 2, "{e:?}");
        let e = errors_of("[pools.a]\ncommand=[\"a\"]\nack = \"manual\"\nack_timeout = 0\n");
        assert_eq!(e[0].key, "pools.a.ack_timeout");
        // A typo must not fork millions of workers.
        let e = errors_of("[pools.a]\ncommand=[\"a\"]\ncount = 40000000\n");
        assert_eq!(
            (e[0].key.as_str(), e[0].line),
            ("pools.a.count", Some(3)),
            "{e:?}"
        );
        assert!(
            Config::from_toml_str("[pools.a]\ncommand=[\"a\"]\ncount = 100000\n", None).is_ok()
        );
    }

    #[test]
    fn socket_protocol_ack_notify_and_watchdog() -> Result<(), ConfigErrors> {
        let c = Config::from_toml_str(
            "[pools.a]\ncommand=[\"a\"]\nsocket_protocol = [\"systemd\", \"einhorn\"]\nack = \"notify\"\nwatchdog = \"2s\"\n[pools.b]\ncommand=[\"b\"]\nsocket_protocol = [\"systemd\"]\n",
            None,
        )?;
        let a = &c.pools["a"];
        assert_eq!(
            a.socket_protocol,
            SocketProtocol {
                einhorn: true,
                systemd: true
            }
        );
        assert_eq!(a.ack, AckMode::Notify);
        assert_eq!(a.watchdog, Some(Duration::from_secs(2)));
        assert!(!c.pools["b"].socket_protocol.einhorn && c.pools["b"].socket_protocol.systemd);
        assert_eq!(c.pools["b"].watchdog, None, "no watchdog unless asked");
        let e = errors_of("[pools.a]\ncommand=[\"a\"]\nsocket_protocol = []\n");
        assert_eq!(e[0].key, "pools.a.socket_protocol");
        let e = errors_of("[pools.a]\ncommand=[\"a\"]\nsocket_protocol = [\"inetd\"]\n");
        assert!(e[0].message.contains("inetd"), "{}", e[0].message);
        let e = errors_of("[pools.a]\ncommand=[\"a\"]\nwatchdog = \"1s\"\n");
        assert_eq!(e[0].key, "pools.a.watchdog");
        Ok(())
    }

    #[test]
    fn value_parsers() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_signal("USR2"), Ok(Signal::SIGUSR2));
        assert_eq!(parse_signal("SIGTERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("quit"), Ok(Signal::SIGQUIT));
        assert_eq!(parse_signal("15"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("-USR1"), Ok(Signal::SIGUSR1));
        assert_eq!(parse_signal("-9"), Ok(Signal::SIGKILL));
        assert!(parse_signal("--9").is_err() && parse_signal("-").is_err());
        assert!(parse_signal("USR9").is_err());
        assert!(parse_signal("999").is_err());
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert!(parse_mode("8").is_err());
        assert!(valid_pool_name("web-1.a_b") && !valid_pool_name("a b") && !valid_pool_name(""));
        let st = Config::from_toml_str("[pools.a]\ncommand=[\"a\"]\nstop_signal = 3\n", None);
        assert!(matches!(st, Ok(c) if c.pools["a"].stop_signal == Signal::SIGQUIT));
    }

    #[test]
    fn locations_and_layout_independent_equality() -> Result<(), ConfigErrors> {
        let a = Config::from_toml_str(
            "[pools.web]\ncommand = [\"x\"]\nbinds = [\n  \"127.0.0.1:1\",\n  \"127.0.0.1:2\",\n]\n",
            Some(Path::new("app.toml")),
        )?;
        assert_eq!(a.locate("pools.web.binds[1]"), "app.toml:5");
        assert_eq!(a.locate("pools.web.cwd"), "app.toml:1");
        assert_eq!(a.locate("nowhere"), "nowhere");
        let b = Config::from_toml_str(
            "\n\n[pools.web]\nbinds = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\ncommand = [\"x\"]\n",
            Some(Path::new("app.toml")),
        )?;
        assert_eq!(a, b);
        assert_eq!(b.locate("pools.web.binds[1]"), "app.toml:4");
        Ok(())
    }

    #[test]
    fn load_names_an_unreadable_path() {
        match Config::load(Path::new("/nonexistent/einhyrningsins.toml")) {
            Ok(_) => panic!("loaded a missing file"),
            Err(e) => {
                let s = e.to_string();
                assert!(
                    s.starts_with("/nonexistent/einhyrningsins.toml: cannot read"),
                    "{s}"
                );
            }
        }
    }

    #[test]
    fn load_reads_a_real_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("einh-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("app.toml");
        std::fs::write(&path, FULL)?;
        let c = Config::load(&path);
        std::fs::remove_dir_all(&dir)?;
        let c = c?;
        assert_eq!(c.source.as_deref(), Some(path.as_path()));
        assert_eq!(c.pools.len(), 2);
        Ok(())
    }

    #[test]
    fn summary_names_pools_and_socket() -> Result<(), ConfigErrors> {
        let c = Config::from_toml_str(FULL, None)?;
        let s = c.summary();
        for needle in [
            "/run/app/einhorn.sock",
            "pool web:",
            "./bin/web --workers-from-env",
            "count:    4",
            "127.0.0.1:8080,r",
            "manual",
            "fleet",
            "pool jobs:",
            "TERM",
        ] {
            assert!(s.contains(needle), "{needle:?} not in\n{s}");
        }
        Ok(())
    }

    #[test]
    fn validate_catches_cli_built_configs() {
        let mut c = Config::default();
        let mut p = PoolConfig::new("main", vec![]);
        p.max_unacked = 0;
        c.pools.insert("main".into(), p);
        match c.validate() {
            Ok(()) => panic!("accepted"),
            Err(ConfigErrors(e)) => {
                assert_eq!(e.len(), 2, "{e:?}");
                assert!(e.iter().all(|e| e.file.is_none() && e.line.is_none()));
                assert_eq!(
                    e[0].to_string().split(':').next(),
                    Some("pools.main.command")
                );
            }
        }
    }

    fn two_pools() -> Result<Config, ConfigErrors> {
        Config::from_toml_str(
            r#"
[pools.web]
command = ["./web"]
count = 2
binds = ["127.0.0.1:8080"]
[pools.jobs]
command = ["./jobs"]
[pools.cron]
command = ["./cron"]
"#,
            None,
        )
    }

    #[test]
    fn diff_identical_is_empty() -> Result<(), ConfigErrors> {
        let a = two_pools()?;
        let d = diff(&a, &a.clone());
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(d.unchanged, vec!["cron", "jobs", "web"]);
        Ok(())
    }

    #[test]
    fn diff_classifies_every_kind_of_change() -> Result<(), ConfigErrors> {
        let old = two_pools()?;
        let mut new = old.clone();
        new.pools.remove("cron");
        new.pools.insert(
            "mail".into(),
            PoolConfig::new("mail", vec!["./mail".into()]),
        );
        if let Some(w) = new.pools.get_mut("web") {
            w.count = 5;
            w.command.push("--v2".into());
            w.binds.clear();
        }
        if let Some(j) = new.pools.get_mut("jobs") {
            j.stop_timeout = Duration::from_secs(3);
            j.count = 3;
        }
        new.log.level = log::LevelFilter::Trace;
        new.control.socket = "/tmp/other.sock".into();
        let d = diff(&old, &new);
        assert_eq!(d.added, vec!["mail"]);
        assert_eq!(d.removed, vec!["cron"]);
        assert_eq!(
            d.scaled,
            vec![("jobs".to_string(), 1, 3), ("web".to_string(), 2, 5)]
        );
        assert_eq!(
            d.rolled,
            vec![("web".to_string(), vec!["command", "binds"])]
        );
        assert_eq!(d.retuned, vec!["jobs"]);
        assert!(d.unchanged.is_empty());
        assert_eq!(d.global, vec!["control", "log"]);
        Ok(())
    }

    #[test]
    fn diff_scale_only_and_rolled_keys() -> Result<(), ConfigErrors> {
        let old = two_pools()?;
        let mut new = old.clone();
        if let Some(w) = new.pools.get_mut("web") {
            w.count = 0;
        }
        if let Some(j) = new.pools.get_mut("jobs") {
            j.env.insert("A".into(), "1".into());
            j.cwd = Some("/srv".into());
            j.ack = AckMode::Manual;
            j.max_surge = Some(2);
        }
        let d = diff(&old, &new);
        assert_eq!(d.scaled, vec![("web".to_string(), 2, 0)]);
        assert_eq!(
            d.rolled,
            vec![("jobs".to_string(), vec!["env", "cwd", "ack"])]
        );
        // A rolled pool takes its new tunables with the roll.
        assert!(d.retuned.is_empty());
        assert_eq!(d.unchanged, vec!["cron"]);
        assert!(d.global.is_empty());
        Ok(())
    }
}
