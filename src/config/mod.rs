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
//! The model types derive serde only for the master's re-exec state
//! (src/master/reexec.rs), never to read a file. A field added to them must be
//! `#[serde(default)]`: a state written by the previous release lacks it, and
//! the fixture test `the_format_1_fixture_stays_readable` fails otherwise.
//!
//! Relative paths (`cwd`, `watch`, the control socket, pidfile, unix binds,
//! `command[0]` with a slash) are kept exactly as written: like einhorn, they are
//! relative to the master's working directory, not to the config file.
//!
//! [`diff`] compares two configs for a reload (BRIEF §6): which pools start, stop,

mod bind;
mod diff;
mod error;
pub(crate) mod identity;
mod metrics;
pub(crate) mod output;
pub(crate) mod placeholders;
pub(crate) mod schema;
mod summary;
mod validate;
mod value;
mod walk;

#[cfg(test)]
pub(crate) use bind::BindSpecError;
pub(crate) use bind::{BindAddr, BindSpec, Family};
pub(crate) use diff::{diff, ConfigDiff};
pub(crate) use error::{ConfigError, ConfigErrors, Flags, Locations};
pub(crate) use metrics::{MetricsConfig, MetricsListen};
pub(crate) use value::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

/// Default control socket path, as einhorn.
pub const DEFAULT_SOCKET: &str = "/tmp/einhorn.sock";

/// The whole configuration of one master.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    /// The file this came from (`None` for the classic command line).
    pub source: Option<PathBuf>,
    pub control: ControlConfig,
    pub log: LogConfig,
    pub watch: WatchConfig,
    pub master: MasterConfig,
    /// `[metrics]` (absent from a state written before it existed).
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Pools by name; iteration order is the name order.
    pub pools: BTreeMap<String, PoolConfig>,
    /// Where each key was written (empty for the command line). Always compares
    /// equal, so two configs differing only in layout are equal.
    #[serde(skip)]
    pub locations: Locations,
    /// The classic command line's flag for each key (empty for a file).
    #[serde(skip)]
    pub flags: Flags,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ControlConfig {
    /// Path of the unix control socket.
    pub socket: PathBuf,
    /// File mode of the socket (default 0o600).
    pub mode: u32,
    /// Extra uids (besides the master's own and root) allowed to connect.
    pub allow_uids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogConfig {
    #[serde(with = "value::level_serde")]
    pub level: log::LevelFilter,
    /// Send WARN and above to syslog as well.
    pub syslog: bool,
    /// The syslog daemon's socket; `None`: /dev/log, then /var/run/syslog and
    /// /var/run/log (containers often mount it elsewhere).
    pub syslog_socket: Option<PathBuf>,
    /// `[log] file`: the master's log goes to this file (rotated) instead of
    /// stderr.
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default = "default_log_max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_log_backups")]
    pub backups: u32,
}

fn default_log_max_bytes() -> u64 {
    output::DEFAULT_MAX_BYTES
}

fn default_log_backups() -> u32 {
    output::DEFAULT_BACKUPS
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WatchConfig {
    /// Watch binaries, `watch` paths and the config file.
    pub enabled: bool,
    /// Quiet time after the last event before a pool rolls.
    pub debounce: Duration,
}

/// Settings of the master process itself (einhorn's `-e`, `-f`, `-c`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MasterConfig {
    pub pidfile: Option<PathBuf>,
    pub lockfile: Option<PathBuf>,
    pub command_name: Option<String>,
    /// `--subreaper` / `subreaper = true`: reap orphaned grandchildren (PR_SET_CHILD_SUBREAPER).
    pub subreaper: bool,
    /// `--reexec-as` / `reexec_as`: what `reexec` runs instead of the
    /// master's own binary (split on whitespace, as einhorn does).
    pub reexec_as: Option<String>,
    /// Run the new binary in its check mode before a re-exec
    /// (`--no-upgrade-check` turns it off).
    #[serde(default = "yes")]
    pub upgrade_check: bool,
    /// How long that check may take.
    #[serde(default = "default_check_timeout")]
    pub upgrade_check_timeout: Duration,
}

fn default_check_timeout() -> Duration {
    DEFAULT_UPGRADE_CHECK_TIMEOUT
}

/// The default of `[master] upgrade_check_timeout`.
pub const DEFAULT_UPGRADE_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

fn yes() -> bool {
    true
}

impl Default for MasterConfig {
    fn default() -> MasterConfig {
        MasterConfig {
            pidfile: None,
            lockfile: None,
            command_name: None,
            subreaper: false,
            reexec_as: None,
            upgrade_check: true,
            upgrade_check_timeout: DEFAULT_UPGRADE_CHECK_TIMEOUT,
        }
    }
}

/// How a worker proves it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AckMode {
    /// Alive for `ack_timer` = acked.
    Timer,
    /// Must send `worker:ack` within `ack_timeout`.
    Manual,
    /// Must send `READY=1` to the master's NOTIFY_SOCKET within `ack_timeout`
    /// (workers written for systemd's `Type=notify`; see `crate::systemd::worker_notify`).
    Notify,
}

/// Which socket-passing conventions a pool's workers get (`socket_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum UpgradeStrategy {
    /// One by one: each new ack retires one old worker.
    Smooth,
    /// All new at once; all old retired once every new one acked.
    Fleet,
}

/// One pool of identical workers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    #[serde(with = "value::signal_serde")]
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
    /// Upgrades start as a canary of this many new workers and hold (see
    /// `promote`, `rollback`); `None`: full upgrades.
    pub canary: Option<usize>,
    /// A holding canary that stayed healthy this long is promoted.
    pub canary_hold: Option<Duration>,
    /// Replace a worker through the smooth engine once it is this old.
    pub max_age: Option<Duration>,
    /// Up to this much is added to each worker's `max_age`, spread evenly, so a
    /// pool does not recycle all at once.
    pub max_age_jitter: Duration,
    /// Replace a worker whose RSS exceeds this many bytes.
    pub max_rss: Option<u64>,
    /// How often RSS is sampled for `max_rss`.
    pub max_rss_interval: Duration,
    /// Einhorn-protocol workers: one that sends no `worker:ping` for this long
    /// after acking is replaced.
    pub heartbeat_timeout: Option<Duration>,
    /// `user`, `group`, `umask`, `nice`, `rlimits`, `oom_score_adj`.
    #[serde(default)]
    pub identity: identity::Identity,
    /// Stop signals go to the worker's whole process group (the SIGKILL
    /// escalation always does), and what is left of the group when the
    /// worker exits is killed.
    #[serde(default)]
    pub stop_group: bool,
    /// `stdout`, `stderr`, `output_max_bytes`, `output_backups`.
    #[serde(default)]
    pub output: output::Output,
}

pub const DEFAULT_UPGRADE_RETRIES: u32 = 3;
/// Most workers one pool may ask for: a guard against a typo forking millions.
pub const MAX_WORKERS: usize = 100_000;
pub const DEFAULT_ACK_TIMER: Duration = Duration::from_secs(1);
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RESPAWN_DELAY: Duration = Duration::from_secs(1);
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);
pub const DEFAULT_RSS_INTERVAL: Duration = Duration::from_secs(10);
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
            canary: None,
            canary_hold: None,
            max_age: None,
            max_age_jitter: Duration::ZERO,
            max_rss: None,
            max_rss_interval: DEFAULT_RSS_INTERVAL,
            heartbeat_timeout: None,
            identity: identity::Identity::default(),
            stop_group: false,
            output: output::Output::default(),
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
                file: None,
                max_bytes: output::DEFAULT_MAX_BYTES,
                backups: output::DEFAULT_BACKUPS,
            },
            watch: WatchConfig {
                enabled: true,
                debounce: DEFAULT_DEBOUNCE,
            },
            master: MasterConfig::default(),
            metrics: MetricsConfig::default(),
            pools: BTreeMap::new(),
            locations: Locations::default(),
            flags: Flags::default(),
        }
    }
}

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

    /// `file:line` of a dotted key (or of its nearest parent), for messages about
    /// problems found after parsing, e.g. a bind that fails. Without a file:
    /// `line N` when known, else the bare key.
    pub fn locate(&self, key: &str) -> String {
        match (self.locations.find(key), &self.source) {
            (Some((line, _)), Some(file)) => format!("{}:{line}", file.display()),
            (Some((line, _)), None) => format!("line {line}"),
            (None, None) if self.flags.find(key).is_some() => {
                self.flags.find(key).unwrap_or(key).to_string()
            }
            (None, _) => key.to_string(),
        }
    }
}

#[cfg(test)]
pub(crate) mod props;
#[cfg(test)]
mod tests;
