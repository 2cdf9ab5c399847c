//! The validated, immutable configuration every part of the master runs from.
//!
//! Two front ends produce it: the TOML file (`--config`, parsed here) and the
//! classic einhorn command line (`cli`). Both end in [`Config`], and both go through
//! [`Config::validate`], so a setting means the same thing whichever way it came.
//!
//! Parsing is two-stage: raw serde structs with `deny_unknown_fields` and spans,
//! then a validated [`Config`] that collects every problem with its file, line and
//! key. [`diff`] compares two configs for a reload.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::bind::BindSpec;

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
}

/// How a worker proves it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// Alive for `ack_timer` = acked.
    Timer,
    /// Must send `worker:ack` within `ack_timeout`.
    Manual,
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
}

pub const DEFAULT_UPGRADE_RETRIES: u32 = 3;
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
            },
            watch: WatchConfig {
                enabled: true,
                debounce: DEFAULT_DEBOUNCE,
            },
            master: MasterConfig::default(),
            pools: BTreeMap::new(),
        }
    }
}
