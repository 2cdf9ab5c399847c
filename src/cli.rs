//! The command line: einhorn's and einhyrningsins(1)'s classic flags, mapped onto a
//! one-pool [`Config`], or `--config FILE` for the multi-pool TOML file, or
//! `check FILE` to validate a file without running anything.
//!
//! Every existing einhorn / einhyrningsins invocation must keep working, which
//! has two consequences clap cannot express on its own, handled by a small argv
//! pre-pass ([`rewrite_ack_flag`]):
//! - `-m` is both einhyrningsins' bare "manual ack" switch and einhorn's
//!   `-m MODE` (`manual`, `timer` or FLOAT seconds). `einhyrningsins -m ./server`
//!   means bare `-m` followed by the program, so the word after `-m` is taken as the
//!   mode only when it is `manual`, `timer` or a number.
//! - `check` as the first word is the validation subcommand; a program literally
//!   named `check` must be written `./check` or after `--`.
//!
//! Whatever the front end, the result goes through [`Config::validate`], so a
//! setting means the same thing on the command line and in the file.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use nix::sys::signal::Signal;

use crate::config::{
    self, AckMode, Config, ConfigErrors, PoolConfig, UpgradeStrategy, DEFAULT_SOCKET,
};
use crate::config::{BindSpec, Family};

/// What the process was asked to do.
// Built once per process; boxing the Config would only make callers deref.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    /// Run the master with this validated configuration.
    Run(Config),
    /// `einhyrningsins check FILE`: load and validate FILE, print its summary.
    Check(PathBuf),
}

/// Why the command line was refused (or `--help` / `--version` was asked for).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Usage error, or `--help` / `--version` (print it with [`CliError::print`]).
    #[error("{0}")]
    Clap(#[from] clap::Error),
    /// The configuration (file or flags) is invalid; one line per problem.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
}

impl CliError {
    /// 0 for `--help` / `--version`, 2 for usage and configuration errors.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Clap(e) => e.exit_code(),
            CliError::Config(_) => 2,
        }
    }

    /// Print to the right stream: help and version to stdout, errors to stderr.
    pub fn print(&self) {
        match self {
            CliError::Clap(e) => {
                if e.print().is_err() {
                    eprintln!("{e}");
                }
            }
            CliError::Config(errs) => {
                for e in &errs.0 {
                    eprintln!("einhyrningsins: {e}");
                }
            }
        }
    }
}

const LONG_ABOUT: &str = "\
Graceful restarts for socket-based daemons.

einhyrningsins binds the listening sockets itself and runs COUNT copies of PROGRAM, \
each of which inherits the already-bound sockets as file descriptors and calls \
accept(2) on them. Because the sockets outlive every worker, workers can be replaced \
one by one (a rolling upgrade) with zero downtime and no refused connections.

With the classic flags, one pool of workers is built from the command line; every \
einhorn(1) and einhyrningsins(1) command line keeps working. With --config FILE, a \
TOML file declares one or more pools, and the file is re-read on `reload`, on SIGHUP \
and when it changes on disk. `einhyrningsins check FILE` validates a file and prints \
what it would run, without running anything.

Workers are controlled with einhyrningsinsctl(1) (or einhorn's einhornsh) over the \
control socket (-d).";

const AFTER_LONG_HELP: &str = "\
CHILD API
    Every worker gets these environment variables:
      EINHORN_FD_COUNT      number of sockets passed (one per -b, in order)
      EINHORN_FD_<n>        fd number of socket n, n = 0 .. EINHORN_FD_COUNT-1
      EINHORN_FDS           the same fd numbers, space-separated
      EINHORN_SOCK_PATH     path of the master's control socket
      EINHORN_SOCK_FD       with -g: an fd already connected to the control socket
      EINHORN_MASTER_PID    pid of the master
      EINHORN_CHILD_INDEX   lowest index free at spawn, unique among live workers:
                            0..COUNT-1 when steady, COUNT and up during upgrades
    In manual ack mode (-m) a worker must write
      {\"command\":\"worker:ack\",\"pid\":<PID>}
    plus a newline to the control socket once it is ready, or it is killed and
    replaced. A worker is stopped gracefully with SIGUSR2 (--stop-signal) and
    killed with SIGKILL if still alive after the signal timeout (-t).
    Variables named by --drop-env-var are removed; all others pass through.
    Listening sockets are non-blocking (O_NONBLOCK, shared by all workers) unless
    the bind says b. In PROGRAM's arguments, {fd:N} (or {fd:NAME}, for a bind
    with name=NAME) is replaced by the fd number of socket N; {{fd: is a literal
    {fd:. Recipes for gunicorn, uvicorn, nginx, ...: docs/workers.md.

SIGNALS (sent to the master)
    HUP          smooth rolling upgrade of every pool (and re-read --config FILE)
    INT, USR2    graceful shutdown: stop respawning, USR2 every worker, exit when
                 all are gone
    TERM         stop respawning, TERM every worker, exit when all are gone
    QUIT         QUIT every worker, exit at once
    TTIN, TTOU   one more / one fewer worker (single pool)
    CHLD         reap; a worker that died unasked is replaced

CONFIGURATION FILE (--config, check)
{KEYS}    Every key, its type, default and reload effect: einhyrningsins.toml(5),
    docs/configuration.md. Durations: \"500ms\", \"2s\", \"1m\" or a number of seconds. Relative paths are
    relative to the master's working directory. With --config, only -v, -q, -d,
    --syslog, --watch/--no-watch, -e, -f and -c may be given; they override the file.

EXAMPLES
    Four workers sharing one socket:
      einhyrningsins -n 4 -b 127.0.0.1:8080,r -- ./server --flag
    Manual ack, two sockets, IPv6 only:
      einhyrningsins -m -6 -b [::1]:80,r -b [::1]:443,r ./server
    einhorn spelling: timer ack after 2.5 s, respawn delay 3 s:
      einhyrningsins -m 2.5 -s 3 -n 2 -b 0.0.0.0:9000 ./worker
    Pools from a file, verbose, control socket elsewhere:
      einhyrningsins --config app.toml -v -d /run/app/einhorn.sock
    Validate a file without running anything:
      einhyrningsins check app.toml
    Rolling upgrade of a running master:
      einhyrningsinsctl -e upgrade        (or: kill -HUP <master pid>)

EXIT STATUS
    0   normal exit after a shutdown; --help, --version; check found no problem
    1   the master failed while running
    2   usage error or invalid configuration (file, key and line are named), a
        PROGRAM that cannot be run, an address that cannot be bound or a control
        socket that cannot be created at start";

/// `--help`'s epilogue, with the file's keys listed from the schema.
fn after_long_help() -> String {
    AFTER_LONG_HELP.replace("{KEYS}", &config::schema::help_summary())
}

/// The whole command line as clap sees it, `--help`'s epilogue included: what
/// parses, and what einhyrningsins(1) and the completion scripts are generated
/// from (src/manual/).
pub fn command() -> clap::Command {
    Args::command().after_long_help(after_long_help())
}

/// `check FILE`, as its own command (for the manual page and completions).
#[cfg(test)]
pub fn check_command() -> clap::Command {
    CheckArgs::command().name("check")
}

/// The classic flags. Field names are the clap ids used to spot flags that make
/// no sense together with `--config`.
#[derive(Parser, Debug)]
#[command(
    name = "einhyrningsins",
    version,
    about = "Graceful restarts for socket-based daemons (einhorn-compatible socket master)",
    long_about = LONG_ABOUT,
    override_usage = "einhyrningsins [OPTIONS] [--] PROGRAM [ARGS...]\n       \
                      einhyrningsins --config FILE [GLOBAL OPTIONS]\n       \
                      einhyrningsins check FILE"
)]
struct Args {
    /// How many worker processes to run [default: 1]
    #[arg(short = 'n', long = "number", value_name = "COUNT")]
    number: Option<usize>,

    /// Socket to bind and pass to workers; repeatable. OPT: r (SO_REUSEADDR),
    /// b (blocking; listeners are O_NONBLOCK otherwise, as einhorn's; n is
    /// accepted), nodelay (TCP_NODELAY), reuseport, backlog=N, mode=OCTAL
    /// (unix sockets), name=NAME. Also [IPV6]:PORT and unix:/PATH.
    #[arg(short = 'b', long = "bind", value_name = "ADDR:PORT[,OPT...]", value_parser = bind_arg)]
    bind: Vec<BindSpec>,

    /// Resolve bind host names to IPv4 addresses only
    #[arg(short = '4', long = "ipv4-only", conflicts_with = "ipv6_only")]
    ipv4_only: bool,

    /// Resolve bind host names to IPv6 addresses only
    #[arg(short = '6', long = "ipv6-only")]
    ipv6_only: bool,

    /// More verbose logging: -v debug, -vv trace
    // Not exclusive with -q: einhorn accepts both (each one louder / quieter).
    #[arg(short = 'v', long, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Less logging: -q warnings and errors only, -qq errors only
    #[arg(short = 'q', long, action = clap::ArgAction::Count)]
    quiet: u8,

    /// Also log WARN and above to syslog
    #[arg(long)]
    syslog: bool,

    /// Manual ack: each worker must send worker:ack to the control socket in time.
    /// einhorn's `-m manual`, `-m timer` and `-m SECONDS` work too.
    #[arg(short = 'm', long = "manual", conflicts_with = "ack_mode")]
    manual: bool,

    /// Ack mode: manual, timer, or SECONDS (timer ack after that long alive)
    #[arg(long = "ack-mode", value_name = "MODE", value_parser = ack_arg)]
    ack_mode: Option<AckArg>,

    /// Remove VAR from the workers' environment; repeatable
    #[arg(long = "drop-env-var", value_name = "VAR")]
    drop_env_var: Vec<String>,

    /// Path of the control socket [default: /tmp/einhorn.sock]
    #[arg(short = 'd', long = "socket-path", value_name = "PATH")]
    socket_path: Option<PathBuf>,

    /// Give up after COUNT consecutive failed spawns (upgrades: abandon after COUNT
    /// failures, default 3)
    #[arg(short = 'r', long, value_name = "COUNT")]
    retries: Option<u32>,

    /// listen(2) backlog for every -b without its own backlog=N
    #[arg(short = 'l', long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    backlog: Option<i32>,

    /// Delay before respawning a dead worker (grows x1.5 per crash, capped at 30 s)
    /// [default: 1]
    #[arg(short = 's', long, value_name = "SECS", value_parser = duration_arg)]
    seconds: Option<Duration>,

    /// How long a stopping worker may take before SIGKILL [default: 30]
    #[arg(short = 't', long = "signal-timeout", value_name = "SECS", value_parser = duration_arg)]
    signal_timeout: Option<Duration>,

    /// Give each worker an fd already connected to the control socket
    /// (EINHORN_SOCK_FD)
    #[arg(short = 'g', long = "command-socket-as-fd")]
    command_socket_as_fd: bool,

    /// Workers get their stop signal if the master dies
    #[arg(short = 'k', long = "kill-children-on-exit")]
    kill_children_on_exit: bool,

    /// Write the master's pid to PATH
    #[arg(short = 'e', long, value_name = "PATH")]
    pidfile: Option<PathBuf>,

    /// Hold an exclusive lock on PATH while running
    #[arg(short = 'f', long, value_name = "PATH")]
    lockfile: Option<PathBuf>,

    /// Name of the master in logs and the process list; also the pool name
    /// [default pool name: main]
    #[arg(short = 'c', long = "command-name", value_name = "NAME")]
    command_name: Option<String>,

    /// Become a child subreaper (PR_SET_CHILD_SUBREAPER): orphans of workers are
    /// re-parented to the master and reaped quietly, as by PID 1 in a container
    #[arg(long)]
    subreaper: bool,

    /// Serve Prometheus metrics at GET /metrics on ADDR (HOST:PORT, or a unix
    /// socket path with a `/`); off by default
    #[arg(long, value_name = "ADDR", value_parser = metrics_arg)]
    metrics: Option<crate::config::MetricsListen>,

    /// At most N unacked workers at a time while upgrading [default: number of CPUs]
    #[arg(long = "max-unacked", value_name = "N")]
    max_unacked: Option<usize>,

    /// At most N workers beyond COUNT during a smooth upgrade [default: COUNT]
    #[arg(long = "max-upgrade-additional", value_name = "N")]
    max_upgrade_additional: Option<usize>,

    /// Signal that asks a worker to stop gracefully [default: USR2]
    #[arg(long = "stop-signal", value_name = "SIG", value_parser = signal_arg)]
    stop_signal: Option<Signal>,

    /// Upgrade strategy: smooth (one by one) or fleet (all at once) [default: smooth]
    #[arg(long, value_name = "STRATEGY", value_parser = upgrade_arg)]
    upgrade: Option<UpgradeStrategy>,

    /// Read pools from a TOML file instead of PROGRAM and pool flags
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Roll a pool when its binary or watched files change (the default)
    #[arg(long, overrides_with = "no_watch")]
    watch: bool,

    /// Do not watch files
    #[arg(long = "no-watch", overrides_with = "watch")]
    no_watch: bool,

    /// einhorn's MASTER[:WORKER[:RENICE_CMD]]: the workers' niceness (pool
    /// `nice`): WORKER if given, else MASTER. The master keeps its own (start it
    /// under nice(1)); RENICE_CMD is not needed (setpriority(2))
    #[arg(long, value_name = "LEVEL", value_parser = nice_arg, allow_hyphen_values = true)]
    nice: Option<NiceArg>,

    /// What `reexec` runs in place of this binary, split on whitespace
    /// ([master] reexec_as)
    #[arg(long = "reexec-as", value_name = "CMDLINE")]
    reexec_as: Option<String>,

    /// `reexec` execs the new binary without running its check mode first
    /// ([master] upgrade_check = false)
    #[arg(long = "no-upgrade-check")]
    no_upgrade_check: bool,

    /// einhorn (Ruby only): load PATH into the master and fork without exec.
    /// Accepted and ignored with a warning: workers are always exec'd
    #[arg(short = 'p', long, value_name = "PATH")]
    preload: Option<PathBuf>,

    /// einhorn (Ruby only): run Ruby's GC before forking. Accepted and ignored
    /// with a warning
    #[arg(long = "gc-before-fork")]
    gc_before_fork: bool,

    /// The worker program and its arguments (passed through untouched)
    #[arg(value_name = "PROGRAM", trailing_var_arg = true, num_args = 1..)]
    program: Vec<String>,
}

/// `einhyrningsins check FILE`.
#[derive(Parser, Debug)]
#[command(
    name = "einhyrningsins check",
    about = "Validate a TOML configuration file without running anything",
    long_about = "Validate a TOML configuration file without running anything: every \
                  problem is reported with file, line and key (exit status 2); a valid \
                  file prints a summary of its pools (exit status 0)."
)]
struct CheckArgs {
    /// The TOML file to validate
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

/// einhorn's ack mode argument.
#[derive(Debug, Clone, Copy, PartialEq)]
enum AckArg {
    Manual,
    /// Timer ack, optionally after this long.
    Timer(Option<Duration>),
}

fn ack_arg(s: &str) -> Result<AckArg, String> {
    match s.trim() {
        "manual" => Ok(AckArg::Manual),
        "timer" => Ok(AckArg::Timer(None)),
        t => match t.parse::<f64>() {
            Ok(secs) if secs.is_finite() && secs >= 0.0 => {
                config::parse_duration(t).map(|d| AckArg::Timer(Some(d)))
            }
            _ => Err(format!(
                "{s:?}: expected manual, timer, or a number of seconds"
            )),
        },
    }
}

/// einhorn's `--nice MASTER[:WORKER[:RENICE_CMD]]`.
#[derive(Debug, Clone, PartialEq)]
struct NiceArg {
    master: i32,
    worker: Option<i32>,
    renice_cmd: Option<String>,
}

impl NiceArg {
    /// The workers' level: WORKER when given, else MASTER (einhorn's workers
    /// inherit the master's level unless WORKER renices them).
    fn workers(&self) -> i32 {
        self.worker.unwrap_or(self.master)
    }
}

fn nice_arg(s: &str) -> Result<NiceArg, String> {
    let mut parts = s.splitn(3, ':');
    let level = |p: Option<&str>| -> Result<Option<i32>, String> {
        match p.map(str::trim) {
            None | Some("") => Ok(None),
            Some(t) => match t.parse::<i32>() {
                Ok(n) if (-20..=19).contains(&n) => Ok(Some(n)),
                _ => Err(format!(
                    "{t:?} is not a nice level from -20 to 19 (MASTER[:WORKER[:RENICE_CMD]])"
                )),
            },
        }
    };
    let master = level(parts.next())?;
    let worker = level(parts.next())?;
    let renice_cmd = parts.next().filter(|c| !c.is_empty()).map(str::to_string);
    match (master, worker) {
        (Some(master), worker) => Ok(NiceArg {
            master,
            worker,
            renice_cmd,
        }),
        (None, Some(w)) => Ok(NiceArg {
            master: w,
            worker: Some(w),
            renice_cmd,
        }),
        (None, None) => Err("expected a nice level from -20 to 19".to_string()),
    }
}

fn bind_arg(s: &str) -> Result<BindSpec, String> {
    BindSpec::parse(s).map_err(|e| e.to_string())
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    config::parse_duration(s)
}

fn signal_arg(s: &str) -> Result<Signal, String> {
    config::parse_signal(s)
}

fn upgrade_arg(s: &str) -> Result<UpgradeStrategy, String> {
    config::parse_upgrade(s)
}

/// Whether the word after `-m` is einhorn's mode argument rather than the program.
fn is_ack_mode_word(s: &str) -> bool {
    s == "manual" || s == "timer" || s.parse::<f64>().is_ok_and(|f| f.is_finite() && f >= 0.0)
}

/// Short options that take a value (the next word, or the rest of the word).
const SHORT_WITH_VALUE: &str = "nbdrlstefcp";
/// Short options that are switches; `m` is handled specially.
const SHORT_SWITCHES: &str = "46vqgkhVm";
/// Long options that take a value.
const LONG_WITH_VALUE: &[&str] = &[
    "number",
    "bind",
    "drop-env-var",
    "socket-path",
    "retries",
    "backlog",
    "seconds",
    "signal-timeout",
    "pidfile",
    "lockfile",
    "command-name",
    "max-unacked",
    "max-upgrade-additional",
    "stop-signal",
    "upgrade",
    "config",
    "ack-mode",
    "nice",
    "reexec-as",
    "preload",
];

/// Rewrite einhorn's `-m MODE` (and `-mMODE`, `--manual MODE`, `-km MODE`) into
/// `--ack-mode=MODE`, leaving a bare `-m` alone. Scanning stops at `--` or at the
/// program name, so the program's own arguments are never touched.
fn rewrite_ack_flag(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    if let Some(argv0) = it.next() {
        out.push(argv0);
    }
    let rest: Vec<OsString> = it.collect();
    let next_is_mode = |i: usize| {
        rest.get(i + 1)
            .and_then(|n| n.to_str())
            .is_some_and(is_ack_mode_word)
    };
    let mut i = 0;
    while i < rest.len() {
        let Some(s) = rest[i].to_str() else {
            break; // not UTF-8: not one of our options, so it is the program
        };
        if s == "--" || s == "-" || !s.starts_with('-') {
            break;
        }
        if let Some(long) = s.strip_prefix("--") {
            if long == "manual" && next_is_mode(i) {
                out.push(ack_mode_arg(&rest[i + 1]));
                i += 2;
                continue;
            }
            out.push(rest[i].clone());
            if !long.contains('=') && LONG_WITH_VALUE.contains(&long) {
                if let Some(v) = rest.get(i + 1) {
                    out.push(v.clone());
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        let cluster = &s[1..];
        if let Some(mode) = cluster.strip_prefix('m') {
            if !mode.is_empty() && is_ack_mode_word(mode) {
                out.push(OsString::from(format!("--ack-mode={mode}")));
                i += 1;
                continue;
            }
        }
        let switches_then_m =
            cluster.ends_with('m') && cluster.chars().all(|c| SHORT_SWITCHES.contains(c));
        if switches_then_m && next_is_mode(i) {
            let before = &cluster[..cluster.len() - 1];
            if !before.is_empty() {
                out.push(OsString::from(format!("-{before}")));
            }
            out.push(ack_mode_arg(&rest[i + 1]));
            i += 2;
            continue;
        }
        out.push(rest[i].clone());
        // Does this cluster end with an option that takes the next word?
        for (j, c) in cluster.char_indices() {
            if SHORT_WITH_VALUE.contains(c) {
                if j + c.len_utf8() == cluster.len() {
                    if let Some(v) = rest.get(i + 1) {
                        out.push(v.clone());
                    }
                    i += 1;
                }
                break;
            }
        }
        i += 1;
    }
    out.extend(rest.into_iter().skip(i));
    out
}

fn ack_mode_arg(mode: &OsString) -> OsString {
    let mut a = OsString::from("--ack-mode=");
    a.push(mode);
    a
}

/// Pool-shaping options: meaningless with `--config`, where the file shapes pools.
const POOL_ARGS: &[(&str, &str)] = &[
    ("number", "-n/--number"),
    ("bind", "-b/--bind"),
    ("ipv4_only", "-4/--ipv4-only"),
    ("ipv6_only", "-6/--ipv6-only"),
    ("manual", "-m/--manual"),
    ("ack_mode", "--ack-mode"),
    ("drop_env_var", "--drop-env-var"),
    ("retries", "-r/--retries"),
    ("backlog", "-l/--backlog"),
    ("seconds", "-s/--seconds"),
    ("signal_timeout", "-t/--signal-timeout"),
    ("command_socket_as_fd", "-g/--command-socket-as-fd"),
    ("kill_children_on_exit", "-k/--kill-children-on-exit"),
    ("max_unacked", "--max-unacked"),
    ("max_upgrade_additional", "--max-upgrade-additional"),
    ("stop_signal", "--stop-signal"),
    ("upgrade", "--upgrade"),
    ("nice", "--nice"),
    ("program", "PROGRAM"),
];

/// Parse the command line (`args` includes argv\[0\]) into what to do. Every
/// resulting [`Config`] has passed [`Config::validate`].
#[cfg_attr(not(test), allow(dead_code))]
pub fn parse_args<I, T>(args: I) -> Result<Invocation, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    parse_args_warn(args).map(|(inv, _)| inv)
}

/// [`parse_args`], and the warnings to print before anything runs: einhorn
/// flags that are accepted but do nothing here (and why).
pub fn parse_args_warn<I, T>(args: I) -> Result<(Invocation, Vec<String>), CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    if args.get(1).is_some_and(|a| a == "check") {
        let mut sub = vec![OsString::from("einhyrningsins check")];
        sub.extend(args.into_iter().skip(2));
        let c = CheckArgs::try_parse_from(sub)?;
        return Ok((Invocation::Check(c.file), Vec::new()));
    }
    let mut cmd = command();
    let matches = cmd.try_get_matches_from_mut(rewrite_ack_flag(args))?;
    let a = Args::from_arg_matches(&matches)?;

    let mut cfg = match &a.config {
        Some(file) => {
            let given: Vec<&str> = POOL_ARGS
                .iter()
                .filter(|(id, _)| explicit(&matches, id))
                .map(|(_, flag)| *flag)
                .collect();
            if !given.is_empty() {
                return Err(cmd
                    .error(
                        ErrorKind::ArgumentConflict,
                        format!(
                            "--config {} declares the pools; it cannot be combined with {}",
                            file.display(),
                            given.join(", ")
                        ),
                    )
                    .into());
            }
            Config::load(file)?
        }
        None => {
            if a.program.is_empty() {
                return Err(cmd
                    .error(
                        ErrorKind::MissingRequiredArgument,
                        "nothing to run: give a PROGRAM (einhyrningsins [OPTIONS] -- PROGRAM [ARGS...]) or --config FILE",
                    )
                    .into());
            }
            one_pool(&a)
        }
    };
    apply_globals(&a, &mut cfg);
    cfg.validate().map_err(|e| cfg.flags.rename(e))?;
    Ok((Invocation::Run(cfg), warnings(&a)))
}

/// What the einhorn flags that do nothing here are told.
fn warnings(a: &Args) -> Vec<String> {
    let mut w = Vec::new();
    if let Some(p) = &a.preload {
        w.push(format!(
            "-p/--preload {}: ignored: einhorn loads that Ruby code into its master \
             and forks workers from it without exec; einhyrningsins execs PROGRAM \
             for every worker (see docs/einhorn.md)",
            p.display()
        ));
    }
    if a.gc_before_fork {
        w.push(
            "--gc-before-fork: ignored: it runs Ruby's garbage collector in einhorn's \
             master before a fork; einhyrningsins is not Ruby and execs every worker \
             (see docs/einhorn.md)"
                .to_string(),
        );
    }
    if let Some(n) = &a.nice {
        if n.worker.is_some_and(|w| w != n.master) {
            w.push(format!(
                "--nice {}:{}: workers run at niceness {}; the master keeps its own \
                 (start it under `nice -n {}` to lower it too)",
                n.master,
                n.workers(),
                n.workers(),
                n.master
            ));
        }
        if let Some(c) = &n.renice_cmd {
            w.push(format!(
                "--nice: RENICE_CMD {c:?} is not run: workers' niceness is set with \
                 setpriority(2)"
            ));
        }
    }
    w
}

fn explicit(m: &ArgMatches, id: &str) -> bool {
    m.value_source(id) == Some(ValueSource::CommandLine)
}

/// The pool name from `-c`: einhorn allows any text there (it is a process
/// title), while pool names are `[A-Za-z0-9_.-]+`, so other characters become `_`.
fn pool_name(command_name: Option<&str>) -> String {
    let name: String = command_name
        .unwrap_or("main")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "main".to_string()
    } else {
        name
    }
}

fn one_pool(a: &Args) -> Config {
    let name = pool_name(a.command_name.as_deref());
    let mut p = PoolConfig::new(name.clone(), a.program.clone());
    if let Some(n) = a.number {
        p.count = n;
    }
    let family = if a.ipv4_only {
        Family::V4Only
    } else if a.ipv6_only {
        Family::V6Only
    } else {
        Family::Any
    };
    p.binds = a
        .bind
        .iter()
        .cloned()
        .map(|mut b| {
            b.family = family;
            if b.backlog.is_none() {
                b.backlog = a.backlog;
            }
            b
        })
        .collect();
    p.drop_env = a.drop_env_var.clone();
    if a.manual {
        p.ack = AckMode::Manual;
    }
    match a.ack_mode {
        Some(AckArg::Manual) => p.ack = AckMode::Manual,
        Some(AckArg::Timer(t)) => {
            p.ack = AckMode::Timer;
            if let Some(t) = t {
                p.ack_timer = t;
            }
        }
        None => {}
    }
    p.retries = a.retries;
    if let Some(s) = a.seconds {
        p.respawn_delay = s;
    }
    if let Some(t) = a.signal_timeout {
        p.stop_timeout = t;
    }
    p.command_socket_as_fd = a.command_socket_as_fd;
    p.kill_children_on_exit = a.kill_children_on_exit;
    if let Some(n) = a.max_unacked {
        p.max_unacked = n;
    }
    p.max_surge = a.max_upgrade_additional;
    if let Some(s) = a.stop_signal {
        p.stop_signal = s;
    }
    if let Some(u) = a.upgrade {
        p.upgrade = u;
    }
    if let Some(n) = &a.nice {
        p.identity.nice = Some(n.workers());
    }
    let mut cfg = Config::default();
    let key = |k: &str| format!("pools.{name}.{k}");
    for (k, flag) in [
        ("command", "PROGRAM"),
        ("count", "-n"),
        ("binds", "-b"),
        ("drop_env", "--drop-env-var"),
        ("ack", "-m"),
        ("ack_timer", "-m"),
        ("retries", "-r"),
        ("respawn_delay", "-s"),
        ("stop_timeout", "-t"),
        ("max_unacked", "--max-unacked"),
        ("max_surge", "--max-upgrade-additional"),
        ("stop_signal", "--stop-signal"),
        ("upgrade", "--upgrade"),
        ("nice", "--nice"),
    ] {
        cfg.flags.insert(key(k), flag);
    }
    for (i, b) in p.binds.iter().enumerate() {
        cfg.flags
            .insert(format!("{}[{i}]", key("binds")), format!("-b {}", b.raw));
    }
    cfg.flags
        .insert(format!("pools.{name}"), "the command line");
    cfg.flags.insert("control.socket", "-d");
    cfg.pools.insert(name, p);
    cfg
}

/// Flags that describe the master rather than a pool: on the command line they
/// override the file.
fn apply_globals(a: &Args, cfg: &mut Config) {
    if a.verbose > 0 || a.quiet > 0 {
        cfg.log.level = match i16::from(a.verbose) - i16::from(a.quiet) {
            i16::MIN..=-2 => log::LevelFilter::Error,
            -1 => log::LevelFilter::Warn,
            0 => log::LevelFilter::Info,
            1 => log::LevelFilter::Debug,
            2.. => log::LevelFilter::Trace,
        };
    }
    if a.syslog {
        cfg.log.syslog = true;
    }
    if let Some(s) = &a.socket_path {
        cfg.control.socket = s.clone();
    } else if cfg.source.is_none() {
        cfg.control.socket = PathBuf::from(DEFAULT_SOCKET);
    }
    if a.watch {
        cfg.watch.enabled = true;
    }
    if a.no_watch {
        cfg.watch.enabled = false;
    }
    if a.pidfile.is_some() {
        cfg.master.pidfile = a.pidfile.clone();
    }
    if a.lockfile.is_some() {
        cfg.master.lockfile = a.lockfile.clone();
    }
    if a.command_name.is_some() {
        cfg.master.command_name = a.command_name.clone();
    }
    if a.subreaper {
        cfg.master.subreaper = true;
    }
    if let Some(m) = &a.metrics {
        cfg.metrics.listen = Some(m.clone());
    }
    if a.reexec_as.is_some() {
        cfg.master.reexec_as = a.reexec_as.clone();
    }
    if a.no_upgrade_check {
        cfg.master.upgrade_check = false;
    }
}

fn metrics_arg(s: &str) -> Result<crate::config::MetricsListen, String> {
    crate::config::MetricsListen::parse(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BindAddr;
    use std::path::Path;

    fn run(args: &[&str]) -> Result<Config, CliError> {
        let mut v = vec!["einhyrningsins"];
        v.extend_from_slice(args);
        match parse_args(v)? {
            Invocation::Run(c) => Ok(c),
            Invocation::Check(p) => panic!("check {p:?}"),
        }
    }

    fn pool(c: &Config) -> &PoolConfig {
        match c.pools.values().next() {
            Some(p) if c.pools.len() == 1 => p,
            _ => panic!("expected one pool: {c:?}"),
        }
    }

    fn usage_error(args: &[&str]) -> String {
        match run(args) {
            Ok(c) => panic!("{args:?} accepted: {c:?}"),
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn defaults_for_a_bare_program() -> Result<(), CliError> {
        let c = run(&["./server"])?;
        let p = pool(&c);
        assert_eq!(p, &PoolConfig::new("main", vec!["./server".into()]));
        assert_eq!(c.control.socket, PathBuf::from("/tmp/einhorn.sock"));
        assert_eq!(c.log.level, log::LevelFilter::Info);
        assert!(c.source.is_none() && c.watch.enabled && !c.log.syslog);
        assert!(p.env.is_empty());
        Ok(())
    }

    #[test]
    fn each_pool_flag_maps_to_its_field() -> Result<(), CliError> {
        let c = run(&[
            "-n",
            "4",
            "-b",
            "127.0.0.1:8080,r",
            "--bind",
            "[::1]:9090,n,backlog=7",
            "-6",
            "--drop-env-var",
            "SECRET",
            "--drop-env-var",
            "TOKEN",
            "-r",
            "5",
            "-l",
            "99",
            "-s",
            "2.5",
            "-t",
            "10s",
            "-g",
            "-k",
            "-c",
            "web",
            "--max-unacked",
            "3",
            "--max-upgrade-additional",
            "2",
            "--stop-signal",
            "TERM",
            "--upgrade",
            "fleet",
            "--",
            "./server",
            "--port",
            "1",
        ])?;
        let p = pool(&c);
        assert_eq!(p.name, "web");
        assert_eq!(c.master.command_name.as_deref(), Some("web"));
        assert_eq!(p.command, vec!["./server", "--port", "1"]);
        assert_eq!(p.count, 4);
        assert_eq!(p.binds.len(), 2);
        assert_eq!(
            p.binds[0].addr,
            BindAddr::Inet {
                host: "127.0.0.1".into(),
                port: 8080
            }
        );
        assert!(p.binds[0].reuseaddr);
        assert!(p.binds.iter().all(|b| b.family == Family::V6Only));
        assert_eq!(p.binds[0].backlog, Some(99));
        assert_eq!(p.binds[1].backlog, Some(7), "own backlog wins over -l");
        assert_eq!(p.drop_env, vec!["SECRET", "TOKEN"]);
        assert_eq!(p.retries, Some(5));
        assert_eq!(p.respawn_delay, Duration::from_millis(2500));
        assert_eq!(p.stop_timeout, Duration::from_secs(10));
        assert!(p.command_socket_as_fd && p.kill_children_on_exit);
        assert_eq!(p.max_unacked, 3);
        assert_eq!(p.max_surge, Some(2));
        assert_eq!(p.stop_signal, Signal::SIGTERM);
        assert_eq!(p.upgrade, UpgradeStrategy::Fleet);
        assert_eq!(p.ack, AckMode::Timer);
        Ok(())
    }

    #[test]
    fn global_flags_map_to_their_fields() -> Result<(), CliError> {
        let c = run(&[
            "-vv",
            "--syslog",
            "-d",
            "/run/x.sock",
            "-e",
            "/run/x.pid",
            "-f",
            "/run/x.lock",
            "--no-watch",
            "-4",
            "-b",
            "localhost:1",
            "./s",
        ])?;
        assert_eq!(c.log.level, log::LevelFilter::Trace);
        assert!(c.log.syslog);
        assert_eq!(c.control.socket, PathBuf::from("/run/x.sock"));
        assert_eq!(c.master.pidfile, Some(PathBuf::from("/run/x.pid")));
        assert_eq!(c.master.lockfile, Some(PathBuf::from("/run/x.lock")));
        assert!(!c.watch.enabled);
        assert_eq!(pool(&c).binds[0].family, Family::V4Only);
        assert_eq!(run(&["-v", "./s"])?.log.level, log::LevelFilter::Debug);
        assert_eq!(run(&["-q", "./s"])?.log.level, log::LevelFilter::Warn);
        assert_eq!(
            run(&["--quiet", "--quiet", "./s"])?.log.level,
            log::LevelFilter::Error
        );
        assert!(run(&["--no-watch", "--watch", "./s"])?.watch.enabled);
        // einhorn takes both; each -v is one step louder, each -q one quieter.
        assert_eq!(run(&["-v", "-q", "./s"])?.log.level, log::LevelFilter::Info);
        assert_eq!(
            run(&["-q", "-vv", "./s"])?.log.level,
            log::LevelFilter::Debug
        );
        usage_error(&["-4", "-6", "./s"]);
        Ok(())
    }

    #[test]
    fn m_forms() -> Result<(), CliError> {
        // Bare -m followed by the program.
        let c = run(&["-m", "./server", "-m", "x"])?;
        assert_eq!(pool(&c).ack, AckMode::Manual);
        assert_eq!(pool(&c).command, vec!["./server", "-m", "x"]);
        let c = run(&["--manual", "--", "./server"])?;
        assert_eq!(pool(&c).ack, AckMode::Manual);
        // einhorn's -m MODE.
        let c = run(&["-m", "manual", "./server"])?;
        assert_eq!(
            (pool(&c).ack, pool(&c).command.clone()),
            (AckMode::Manual, vec!["./server".to_string()])
        );
        let c = run(&["-m", "timer", "./server"])?;
        assert_eq!(pool(&c).ack, AckMode::Timer);
        let c = run(&["-m", "2.5", "-n", "2", "./server"])?;
        assert_eq!(pool(&c).ack, AckMode::Timer);
        assert_eq!(pool(&c).ack_timer, Duration::from_millis(2500));
        assert_eq!(pool(&c).count, 2);
        let c = run(&["-m3", "./server"])?;
        assert_eq!(pool(&c).ack_timer, Duration::from_secs(3));
        let c = run(&["-km", "manual", "./server"])?;
        assert!(pool(&c).kill_children_on_exit && pool(&c).ack == AckMode::Manual);
        let c = run(&["--ack-mode", "manual", "./server"])?;
        assert_eq!(pool(&c).ack, AckMode::Manual);
        // A value-taking option's argument is never mistaken for -m.
        let words = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let argv = words(&["e", "-c", "-m", "manual", "-x"]);
        assert_eq!(rewrite_ack_flag(argv.clone()), argv);
        let argv = words(&["e", "--command-name", "-m", "timer"]);
        assert_eq!(rewrite_ack_flag(argv.clone()), argv);
        assert_eq!(
            rewrite_ack_flag(words(&["e", "-vm", "1", "-n", "2", "p", "-m", "manual"])),
            words(&["e", "-v", "--ack-mode=1", "-n", "2", "p", "-m", "manual"])
        );
        // The program's own -m is untouched.
        let c = run(&["./server", "-m", "manual"])?;
        assert_eq!(pool(&c).command, vec!["./server", "-m", "manual"]);
        assert_eq!(pool(&c).ack, AckMode::Timer);
        usage_error(&["--ack-mode", "sometimes", "./s"]);
        Ok(())
    }

    #[test]
    fn program_arguments_pass_through_untouched() -> Result<(), CliError> {
        let c = run(&["-n", "2", "--", "prog", "-x", "--y", "--", "-n", "9"])?;
        assert_eq!(pool(&c).command, vec!["prog", "-x", "--y", "--", "-n", "9"]);
        assert_eq!(pool(&c).count, 2);
        let c = run(&["-n", "2", "prog", "-x", "--y", "-b", "1.2.3.4:5"])?;
        assert_eq!(
            pool(&c).command,
            vec!["prog", "-x", "--y", "-b", "1.2.3.4:5"]
        );
        assert!(pool(&c).binds.is_empty());
        let c = run(&["--", "-weird"])?;
        assert_eq!(pool(&c).command, vec!["-weird"]);
        Ok(())
    }

    #[test]
    fn bad_bind_names_the_spec() {
        let e = usage_error(&["-b", "127.0.0.1:http", "./s"]);
        assert!(e.contains("127.0.0.1:http"), "{e}");
        let e = usage_error(&["-b", "1.2.3.4:1,bogus", "./s"]);
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["-n", "four", "./s"][..],
            &["--stop-signal", "USR9", "./s"],
            &["--upgrade", "yolo", "./s"],
            &["-s", "soon", "./s"],
            &["-l", "0", "./s"],
            &["--frobnicate", "./s"],
        ] {
            usage_error(args);
        }
    }

    #[test]
    fn everything_goes_through_validate() {
        match run(&["--max-unacked", "0", "./s"]) {
            Err(CliError::Config(ConfigErrors(e))) => {
                assert_eq!(e[0].key, "--max-unacked", "{e:?}");
            }
            other => panic!("{other:?}"),
        }
        match run(&["-b", "127.0.0.1:80", "-b", "127.0.0.1:80,r", "./s"]) {
            Err(e @ CliError::Config(_)) => {
                assert_eq!(e.exit_code(), 2);
                assert!(e.to_string().contains("already bound"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        match run(&["--max-upgrade-additional", "0", "./s"]) {
            Err(CliError::Config(_)) => {}
            other => panic!("{other:?}"),
        }
        match run(&["", "x"]) {
            Err(CliError::Config(_)) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn command_name_becomes_a_valid_pool_name() -> Result<(), CliError> {
        let c = run(&["-c", "my app", "./s"])?;
        assert!(c.pools.contains_key("my_app"), "{c:?}");
        assert_eq!(c.master.command_name.as_deref(), Some("my app"));
        Ok(())
    }

    #[test]
    fn neither_program_nor_config_is_refused() {
        let e = usage_error(&[]);
        assert!(e.contains("PROGRAM") && e.contains("--config"), "{e}");
        usage_error(&["-n", "3"]);
    }

    fn temp_toml(tag: &str, text: &str) -> std::io::Result<PathBuf> {
        let dir = std::env::temp_dir().join(format!("einh-cli-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("app.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    const TWO_POOLS: &str = "[control]\nsocket = \"/tmp/file.sock\"\n[log]\nlevel = \"warn\"\n\
        [pools.web]\ncommand = [\"./web\"]\n[pools.jobs]\ncommand = [\"./jobs\"]\n";

    #[test]
    fn config_with_program_or_pool_flags_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let path = temp_toml("conflict", TWO_POOLS)?;
        let p = path.to_string_lossy().to_string();
        let e = usage_error(&["--config", &p, "./server"]);
        assert!(e.contains("PROGRAM"), "{e}");
        let e = usage_error(&["--config", &p, "-n", "3", "-m", "-b", "1.2.3.4:5"]);
        assert!(
            e.contains("-n/--number") && e.contains("-m/--manual") && e.contains("-b/--bind"),
            "{e}"
        );
        std::fs::remove_file(&path)?;
        Ok(())
    }

    #[test]
    fn config_file_with_global_overrides() -> Result<(), Box<dyn std::error::Error>> {
        let path = temp_toml("globals", TWO_POOLS)?;
        let p = path.to_string_lossy().to_string();
        let plain = run(&["--config", &p])?;
        assert_eq!(plain.pools.len(), 2);
        assert_eq!(plain.source.as_deref(), Some(path.as_path()));
        assert_eq!(plain.control.socket, PathBuf::from("/tmp/file.sock"));
        assert_eq!(plain.log.level, log::LevelFilter::Warn);
        let c = run(&[
            "--config",
            &p,
            "-v",
            "-d",
            "/tmp/flag.sock",
            "--syslog",
            "--no-watch",
            "-e",
            "/tmp/p.pid",
            "-f",
            "/tmp/l.lock",
            "-c",
            "appname",
        ])?;
        assert_eq!(c.log.level, log::LevelFilter::Debug);
        assert_eq!(c.control.socket, PathBuf::from("/tmp/flag.sock"));
        assert!(c.log.syslog && !c.watch.enabled);
        assert_eq!(c.master.pidfile.as_deref(), Some(Path::new("/tmp/p.pid")));
        assert_eq!(c.master.lockfile.as_deref(), Some(Path::new("/tmp/l.lock")));
        assert_eq!(c.master.command_name.as_deref(), Some("appname"));
        assert_eq!(c.pools, plain.pools, "-c does not rename file pools");
        std::fs::remove_file(&path)?;
        Ok(())
    }

    #[test]
    fn invalid_config_file_is_a_config_error() -> Result<(), Box<dyn std::error::Error>> {
        let path = temp_toml("invalid", "[pools.web]\ncount = \"four\"\n")?;
        let p = path.to_string_lossy().to_string();
        match run(&["--config", &p]) {
            Err(e @ CliError::Config(_)) => {
                assert_eq!(e.exit_code(), 2);
                let s = e.to_string();
                assert!(s.contains(&format!("{p}:2:9: pools.web.count")), "{s}");
                assert!(s.contains("pools.web.command"), "{s}");
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(&path)?;
        Ok(())
    }

    #[test]
    fn check_subcommand() -> Result<(), CliError> {
        assert_eq!(
            parse_args(["einhyrningsins", "check", "app.toml"])?,
            Invocation::Check(PathBuf::from("app.toml"))
        );
        match parse_args(["einhyrningsins", "check"]) {
            Err(e) => assert_eq!(e.exit_code(), 2),
            Ok(i) => panic!("{i:?}"),
        }
        // A program called check is still reachable.
        let c = run(&["--", "check"])?;
        assert_eq!(pool(&c).command, vec!["check"]);
        Ok(())
    }

    #[test]
    fn help_and_version_exit_zero_and_document_the_contract() {
        match parse_args(["einhyrningsins", "--help"]) {
            Err(e) => {
                assert_eq!(e.exit_code(), 0);
                let s = e.to_string();
                for needle in [
                    "EINHORN_FD_COUNT",
                    "EINHORN_SOCK_PATH",
                    "TTIN",
                    "HUP",
                    "EXIT STATUS",
                    "EXAMPLES",
                    "--max-upgrade-additional",
                    "--drop-env-var",
                ] {
                    assert!(s.contains(needle), "{needle} missing from help");
                }
            }
            Ok(i) => panic!("{i:?}"),
        }
        match parse_args(["einhyrningsins", "--version"]) {
            Err(e) => {
                assert_eq!(e.exit_code(), 0);
                assert!(e.to_string().contains(env!("CARGO_PKG_VERSION")));
            }
            Ok(i) => panic!("{i:?}"),
        }
        match parse_args(["einhyrningsins", "-h"]) {
            Err(e) => assert_eq!(e.exit_code(), 0),
            Ok(i) => panic!("{i:?}"),
        }
    }

    /// Every option of einhorn's `--help` (einhorn 1.0) and of the
    /// einhyrningsins(1) page is accepted, in einhorn's spelling, and lands
    /// where it should (or is warned about).
    #[test]
    fn every_einhorn_flag_is_accepted() -> Result<(), CliError> {
        let cases: &[&[&str]] = &[
            &["-b", "127.0.0.1:9000"],
            &["--bind", "127.0.0.1:9000,r,n"],
            &["-c", "name"],
            &["--command-name", "name"],
            &["-d", "/tmp/x.sock"],
            &["--socket-path", "/tmp/x.sock"],
            &["-e", "/tmp/x.pid"],
            &["--pidfile", "/tmp/x.pid"],
            &["-f", "/tmp/x.lock"],
            &["--lockfile", "/tmp/x.lock"],
            &["-g"],
            &["--command-socket-as-fd"],
            &["-k"],
            &["--kill-children-on-exit"],
            &["-l", "100"],
            &["--backlog", "100"],
            &["-m", "manual"],
            &["-m", "2.5"],
            &["--ack-mode", "manual"],
            &["-m"],
            &["--manual"],
            &["-n", "3"],
            &["--number", "3"],
            &["-p", "app.rb"],
            &["--preload", "app.rb"],
            &["-q"],
            &["--quiet"],
            &["-s", "3"],
            &["--seconds", "3"],
            &["-v"],
            &["--verbose"],
            &["--drop-env-var", "SECRET"],
            &["--reexec-as=/usr/local/bin/einhorn-wrapper --flag"],
            &["--reexec-as", "/usr/local/bin/einhorn-wrapper"],
            &["--nice", "5"],
            &["--nice", "0:5"],
            &["--nice", "0:5:/usr/bin/renice"],
            &["--gc-before-fork"],
            &["--no-upgrade-check"],
            &["-t", "10"],
            &["--signal-timeout=10"],
            &["--max-unacked=2"],
            &["--max-upgrade-additional=2"],
            &["-4"],
            &["--ipv4-only"],
            &["-6"],
            &["--ipv6-only"],
            &["--syslog"],
            &["-r", "3"],
            &["--retries", "3"],
        ];
        for flags in cases {
            let mut args = flags.to_vec();
            args.extend(["--", "./server", "arg"]);
            let c = run(&args).unwrap_or_else(|e| panic!("{flags:?}: {e}"));
            assert_eq!(pool(&c).command, vec!["./server", "arg"], "{flags:?}");
        }
        Ok(())
    }

    #[test]
    fn einhorn_master_flags_map_onto_the_master() -> Result<(), CliError> {
        let c = run(&[
            "--reexec-as",
            "/opt/wrapper --x",
            "--no-upgrade-check",
            "./s",
        ])?;
        assert_eq!(c.master.reexec_as.as_deref(), Some("/opt/wrapper --x"));
        assert!(!c.master.upgrade_check);
        let c = run(&["./s"])?;
        assert!(c.master.upgrade_check && c.master.reexec_as.is_none());
        Ok(())
    }

    fn warned(args: &[&str]) -> (Config, Vec<String>) {
        let mut v = vec!["einhyrningsins"];
        v.extend_from_slice(args);
        match parse_args_warn(v) {
            Ok((Invocation::Run(c), w)) => (c, w),
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn nice_sets_the_pools_niceness() {
        let (c, w) = warned(&["--nice", "5", "./s"]);
        assert_eq!(pool(&c).identity.nice, Some(5));
        assert!(w.is_empty(), "{w:?}");
        let (c, w) = warned(&["--nice", "-3", "./s"]);
        assert_eq!(pool(&c).identity.nice, Some(-3), "{w:?}");
        let (c, w) = warned(&["--nice", "2:7", "./s"]);
        assert_eq!(pool(&c).identity.nice, Some(7));
        assert!(w.len() == 1 && w[0].contains("nice -n 2"), "{w:?}");
        let (c, w) = warned(&["--nice", "7:7:/usr/bin/renice", "./s"]);
        assert_eq!(pool(&c).identity.nice, Some(7));
        assert!(w.len() == 1 && w[0].contains("RENICE_CMD"), "{w:?}");
        for bad in ["20", "x", "", "1:99"] {
            let e = usage_error(&["--nice", bad, "./s"]);
            assert!(e.contains("--nice"), "{bad}: {e}");
        }
    }

    #[test]
    fn ruby_only_flags_are_accepted_with_a_warning() {
        let (c, w) = warned(&["-p", "app.rb", "--gc-before-fork", "-n", "2", "./s"]);
        assert_eq!(pool(&c).count, 2);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("--preload app.rb") && w[0].contains("ignored"),
            "{w:?}"
        );
        assert!(
            w[1].contains("--gc-before-fork") && w[1].contains("ignored"),
            "{w:?}"
        );
        // -p takes a value: the program is not mistaken for it.
        let (c, _) = warned(&["-p", "app.rb", "./s", "-p"]);
        assert_eq!(pool(&c).command, vec!["./s", "-p"]);
    }

    #[test]
    fn classic_errors_name_the_flag_not_the_key() {
        let e = usage_error(&["-n", "200000", "./s"]);
        assert!(e.starts_with("-n: "), "{e}");
        assert!(!e.contains("pools.main"), "{e}");
        let e = usage_error(&["-b", "127.0.0.1:1", "-b", "127.0.0.1:1,r", "./s"]);
        assert!(e.contains("-b 127.0.0.1:1,r: "), "{e}");
        assert!(!e.contains("pools.main"), "{e}");
        let e = usage_error(&["--max-upgrade-additional", "0", "./s"]);
        assert!(e.contains("--max-upgrade-additional"), "{e}");
    }

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
        CheckArgs::command().debug_assert();
    }

    #[test]
    fn absurd_durations_on_the_command_line_are_usage_errors() {
        for flag in ["-t", "-s", "-m"] {
            let e = usage_error(&[flag, "1e19", "./server"]);
            assert!(e.contains("7 days") || e.contains("1e19"), "{flag}: {e}");
        }
    }
}
