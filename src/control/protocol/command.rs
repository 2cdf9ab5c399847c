//! The control commands, declared once.
//!
//! [`COMMANDS`] is the single table of what the master understands: each entry
//! has the command's name, its arguments, its help text, which pools it applies
//! to and whether it streams. The table drives the master's `help` reply, the
//! argument checks below, einhyrningsinsctl's completion, help and deadlines, and
//! a test holds docs/protocol.md to it. [`Command`] is a request parsed once into
//! a typed value, so the master's dispatch is an exhaustive `match` with no string
//! comparisons and no argument parsing left in it.

use nix::sys::signal::Signal;

use super::Request;
use crate::config::{parse_signal, MAX_WORKERS};

/// Which pools a command applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The master as a whole; `pool` is ignored.
    Global,
    /// The pool named by `pool`, or every pool without it.
    PoolOrAll,
    /// One pool: `pool` is required when the master runs more than one.
    OnePool,
    /// Sent by a worker about itself (`pid` names it).
    Worker,
}

/// One entry of the command table.
#[derive(Debug)]
pub struct CommandSpec {
    pub name: &'static str,
    /// The arguments as a usage string (`N`, `SIG...`, `[SIG]`), empty for none.
    pub args: &'static str,
    pub help: &'static str,
    pub scope: Scope,
    /// Sends progress replies (`"wait": true`) before its final one.
    pub streams: bool,
    /// May legitimately take minutes (rolling a large pool through slow acks):
    /// clients should not put a short deadline on it.
    pub long_running: bool,
    /// einhornsh cannot send a `pool` field: these commands also accept the pool
    /// name as one extra, last argument (`inc web`, `set_workers 4 web`).
    pub pool_as_last_arg: bool,
}

impl CommandSpec {
    /// `set_workers N`, `signal SIG...`, `inc`: name and argument usage.
    pub fn usage(&self) -> String {
        if self.args.is_empty() {
            self.name.to_string()
        } else {
            format!("{} {}", self.name, self.args)
        }
    }
}

const fn spec(
    name: &'static str,
    args: &'static str,
    scope: Scope,
    help: &'static str,
) -> CommandSpec {
    CommandSpec {
        name,
        args,
        help,
        scope,
        streams: false,
        long_running: false,
        pool_as_last_arg: false,
    }
}

const fn pool_last(mut s: CommandSpec) -> CommandSpec {
    s.pool_as_last_arg = true;
    s
}

const fn streaming(mut s: CommandSpec) -> CommandSpec {
    s.streams = true;
    s.long_running = true;
    s
}

const fn long(mut s: CommandSpec) -> CommandSpec {
    s.long_running = true;
    s
}

/// Every command, in the order `help` lists them.
pub const COMMANDS: &[CommandSpec] = &[
    spec(
        "ehlo",
        "",
        Scope::Global,
        "say hello (einhornsh does this on connect)",
    ),
    spec("help", "", Scope::Global, "this list"),
    spec(
        "check",
        "",
        Scope::Global,
        "readiness probe: ok only when every pool has its count acked (systemd, Kubernetes)",
    ),
    pool_last(spec(
        "status",
        "",
        Scope::PoolOrAll,
        "human-readable table of pools and workers",
    )),
    pool_last(spec(
        "state",
        "",
        Scope::PoolOrAll,
        "machine-readable dump (JSON) of every pool and worker",
    )),
    pool_last(spec(
        "inc",
        "",
        Scope::OnePool,
        "one more worker (needs `pool` with several pools)",
    )),
    pool_last(spec(
        "dec",
        "",
        Scope::OnePool,
        "one fewer worker (needs `pool` with several pools)",
    )),
    pool_last(spec(
        "set_workers",
        "N",
        Scope::OnePool,
        "set the worker count, 0 to 100000 (needs `pool` with several pools)",
    )),
    pool_last(streaming(spec(
        "upgrade",
        "[--canary N]",
        Scope::PoolOrAll,
        "smooth rolling upgrade of `pool`, or of every pool; streams progress. \
         --canary N: only N new workers, then hold (promote or rollback); 0: a full upgrade",
    ))),
    pool_last(streaming(spec(
        "upgrade_fleet",
        "",
        Scope::PoolOrAll,
        "fleet upgrade: all new workers, then retire all old ones",
    ))),
    pool_last(streaming(spec(
        "promote",
        "",
        Scope::PoolOrAll,
        "a holding canary's version replaces the rest of the pool; streams progress",
    ))),
    pool_last(streaming(spec(
        "rollback",
        "",
        Scope::PoolOrAll,
        "retire a canary and restore the old version; without a canary, roll back to \
         the release the last upgrade replaced (if it is still on disk, unchanged)",
    ))),
    spec(
        "signal",
        "SIG...",
        Scope::PoolOrAll,
        "send signals to every worker (of `pool`, or of all pools)",
    ),
    spec(
        "die",
        "[SIG]",
        Scope::Global,
        "graceful shutdown; workers get SIG (default: each pool's stop_signal)",
    ),
    long(spec(
        "reload",
        "",
        Scope::Global,
        "re-read the config file and apply the difference",
    )),
    streaming(spec(
        "reexec",
        "[--upgrade]",
        Scope::Global,
        "upgrade the master itself: check the new binary, then exec it in place keeping \
         the pid, sockets, workers and state (einhorn's `reload`); it re-reads the config \
         file. --upgrade: then roll every pool (einhorn's `upgrade`)",
    )),
    streaming(spec(
        "events",
        "[-f]",
        Scope::Global,
        "recent lifecycle events as JSON lines; with -f, follow them as they happen",
    )),
    spec(
        "stats",
        "",
        Scope::PoolOrAll,
        "pools and workers with RSS and CPU read from /proc now, as one JSON document \
         (what `einhyrningsinsctl top` shows)",
    ),
    streaming(spec(
        "logs",
        "[-n N] [-f]",
        Scope::PoolOrAll,
        "recent output lines of the pool's workers (stdout/stderr = \"log\" or a file), \
         the last N (default 100); with -f, follow new lines, across upgrades",
    )),
    spec(
        "reopen_logs",
        "",
        Scope::Global,
        "reopen the workers' output files and the master's log file by path (after \
         logrotate renamed them; also SIGUSR1)",
    ),
    spec("version", "", Scope::Global, "master version"),
    spec("louder", "", Scope::Global, "more verbose logging"),
    spec("quieter", "", Scope::Global, "less verbose logging"),
    spec(
        "worker:ack",
        "",
        Scope::Worker,
        "a worker is ready (sent by workers: {\"command\":\"worker:ack\",\"pid\":N})",
    ),
    spec(
        "worker:ping",
        "",
        Scope::Worker,
        "a worker is alive (recorded with its request_id; no reply)",
    ),
];

/// The table entry of a command name.
pub fn lookup(name: &str) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// Longest `request_id` a `worker:ping` may store on a worker; a longer one is
/// cut (it is a hint shown by `status`, and every `state` reply carries it).
pub const MAX_PING_ID: usize = 256;

/// How an upgrade replaces workers when the request says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeKind {
    /// The pool's own `upgrade` setting (smooth unless configured otherwise).
    Configured,
    /// `upgrade_fleet`.
    Fleet,
}

/// A request, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Ehlo {
        user: Option<String>,
    },
    Help,
    Check,
    Status,
    State,
    Inc,
    Dec,
    SetWorkers(usize),
    /// `canary`: `Some(n)` for `--canary n` (0: a full upgrade even if the pool
    /// is configured for canaries); `None`: the pool's own `canary` setting.
    Upgrade {
        kind: UpgradeKind,
        canary: Option<usize>,
    },
    Promote,
    Rollback,
    Signal(Vec<Signal>),
    /// Graceful shutdown; `Some`: workers get this signal instead of their own.
    Die(Option<Signal>),
    Reload,
    /// Re-exec the master in place; `upgrade`: then roll every pool.
    Reexec {
        upgrade: bool,
    },
    /// The recent events, or (`follow`) a stream of them from now on.
    Events {
        follow: bool,
    },
    /// Pools and workers with their RSS and CPU, as JSON.
    Stats,
    /// The last `lines` output lines, and (`follow`) every new one.
    Logs {
        lines: usize,
        follow: bool,
    },
    ReopenLogs,
    Version,
    Louder,
    Quieter,
    WorkerAck {
        pid: i32,
    },
    WorkerPing {
        pid: i32,
        request_id: Option<String>,
    },
}

/// A command and the pool it addresses (`None`: all, or the only one).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub command: Command,
    pub pool: Option<String>,
}

/// Why a request is not a command the master can run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("Unknown command: {name:?}. Commands: {known}")]
    Unknown { name: String, known: String },
    #[error("{name} takes no arguments")]
    NoArguments { name: &'static str },
    #[error("usage: {usage}")]
    Usage { usage: String },
    #[error("{name}: {arg:?} is not {expected}")]
    BadArgument {
        name: &'static str,
        arg: String,
        expected: String,
    },
    #[error("{name} without a pid")]
    NoPid { name: &'static str },
}

impl Command {
    /// Parse a decoded request. `is_pool` says whether a word names a pool of
    /// this master, for the einhornsh form with the pool as the last argument.
    pub fn parse(req: &Request, is_pool: impl Fn(&str) -> bool) -> Result<Parsed, CommandError> {
        let Some(spec) = lookup(&req.command) else {
            return Err(CommandError::Unknown {
                name: req.command.clone(),
                known: COMMANDS
                    .iter()
                    .map(|c| c.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let mut args: &[String] = &req.args;
        let mut pool = req.pool.clone();
        if pool.is_none() && spec.pool_as_last_arg {
            let takes: &[usize] = match spec.name {
                "set_workers" => &[1],
                "upgrade" => &[0, 2],
                _ => &[0],
            };
            if let Some((last, rest)) = args.split_last() {
                if takes.contains(&rest.len()) && is_pool(last) {
                    pool = Some(last.clone());
                    args = rest;
                }
            }
        }
        let name = spec.name;
        let none = |args: &[String]| {
            if args.is_empty() {
                Ok(())
            } else {
                Err(CommandError::NoArguments { name })
            }
        };
        let usage = || CommandError::Usage {
            usage: spec.usage(),
        };
        let command = match name {
            "ehlo" => Command::Ehlo {
                user: req.user.clone(),
            },
            "help" => Command::Help,
            "check" => Command::Check,
            "status" => none(args).map(|()| Command::Status)?,
            "stats" => none(args).map(|()| Command::Stats)?,
            "state" => none(args).map(|()| Command::State)?,
            "inc" => none(args).map(|()| Command::Inc)?,
            "dec" => none(args).map(|()| Command::Dec)?,
            "set_workers" => match args {
                [n] => Command::SetWorkers(parse_count(name, n)?),
                _ => return Err(usage()),
            },
            "upgrade" => {
                let canary = match args {
                    [] => None,
                    [flag, n] if flag == "--canary" => Some(parse_count(name, n)?),
                    [one] => match one.strip_prefix("--canary=") {
                        Some(n) => Some(parse_count(name, n)?),
                        None => return Err(usage()),
                    },
                    _ => return Err(usage()),
                };
                Command::Upgrade {
                    kind: UpgradeKind::Configured,
                    canary,
                }
            }
            "upgrade_fleet" => none(args).map(|()| Command::Upgrade {
                kind: UpgradeKind::Fleet,
                canary: Some(0),
            })?,
            "promote" => none(args).map(|()| Command::Promote)?,
            "rollback" => none(args).map(|()| Command::Rollback)?,
            "signal" => {
                if args.is_empty() {
                    return Err(usage());
                }
                let sigs = args
                    .iter()
                    .map(|a| parse_signal(a).map_err(|why| bad(name, a, why)))
                    .collect::<Result<Vec<_>, _>>()?;
                Command::Signal(sigs)
            }
            "die" => match args {
                [] => Command::Die(None),
                [s] => Command::Die(Some(parse_signal(s).map_err(|why| bad(name, s, why))?)),
                _ => return Err(usage()),
            },
            "reload" => Command::Reload,
            "reexec" => match args {
                [] => Command::Reexec { upgrade: false },
                [f] if f == "--upgrade" => Command::Reexec { upgrade: true },
                _ => return Err(usage()),
            },
            "events" => match args {
                [] => Command::Events { follow: false },
                [f] if matches!(f.as_str(), "-f" | "--follow" | "follow") => {
                    Command::Events { follow: true }
                }
                _ => return Err(usage()),
            },
            "logs" => parse_logs(args).ok_or_else(usage)?,
            "reopen_logs" => none(args).map(|()| Command::ReopenLogs)?,
            "version" => Command::Version,
            "louder" => Command::Louder,
            "quieter" => Command::Quieter,
            "worker:ack" => Command::WorkerAck {
                pid: req.pid.ok_or(CommandError::NoPid { name })?,
            },
            "worker:ping" => Command::WorkerPing {
                pid: req.pid.ok_or(CommandError::NoPid { name })?,
                request_id: req.request_id.as_ref().map(|v| {
                    let text = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    cut(text, MAX_PING_ID)
                }),
            },
            other => unreachable_command(other)?,
        };
        Ok(Parsed { command, pool })
    }

    /// The table entry of this command.
    pub fn spec(&self) -> &'static CommandSpec {
        let name = match self {
            Command::Ehlo { .. } => "ehlo",
            Command::Help => "help",
            Command::Check => "check",
            Command::Status => "status",
            Command::State => "state",
            Command::Inc => "inc",
            Command::Dec => "dec",
            Command::SetWorkers(_) => "set_workers",
            Command::Upgrade {
                kind: UpgradeKind::Configured,
                ..
            } => "upgrade",
            Command::Upgrade {
                kind: UpgradeKind::Fleet,
                ..
            } => "upgrade_fleet",
            Command::Promote => "promote",
            Command::Rollback => "rollback",
            Command::Signal(_) => "signal",
            Command::Die(_) => "die",
            Command::Reload => "reload",
            Command::Reexec { .. } => "reexec",
            Command::Events { .. } => "events",
            Command::Stats => "stats",
            Command::Logs { .. } => "logs",
            Command::ReopenLogs => "reopen_logs",
            Command::Version => "version",
            Command::Louder => "louder",
            Command::Quieter => "quieter",
            Command::WorkerAck { .. } => "worker:ack",
            Command::WorkerPing { .. } => "worker:ping",
        };
        // Every name above is in the table (a unit test walks them all).
        lookup(name).unwrap_or(&COMMANDS[0])
    }

    pub fn name(&self) -> &'static str {
        self.spec().name
    }
}

/// Most lines `logs -n` returns (the rings hold fewer).
pub const MAX_LOG_LINES: usize = 100_000;

/// `logs` arguments: `-n N` (`-nN`, `--lines N`, `--lines=N`), `-f` (`--follow`).
fn parse_logs(args: &[String]) -> Option<Command> {
    let mut lines = 100;
    let mut follow = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let n = match a.as_str() {
            "-f" | "--follow" | "follow" => {
                follow = true;
                continue;
            }
            "-n" | "--lines" => it.next()?.as_str(),
            other => other
                .strip_prefix("--lines=")
                .or_else(|| other.strip_prefix("-n"))?,
        };
        lines = n.parse::<usize>().ok()?.min(MAX_LOG_LINES);
    }
    Some(Command::Logs { lines, follow })
}

/// A table entry without a parser is a bug of this file; say so instead of
/// panicking on a request.
fn unreachable_command(name: &str) -> Result<Command, CommandError> {
    Err(CommandError::Unknown {
        name: name.to_string(),
        known: "(internal error: no parser for this command)".into(),
    })
}

fn bad(name: &'static str, arg: &str, expected: String) -> CommandError {
    CommandError::BadArgument {
        name,
        arg: arg.to_string(),
        expected,
    }
}

/// A worker count from outside: 0 to [`MAX_WORKERS`].
fn parse_count(name: &'static str, s: &str) -> Result<usize, CommandError> {
    match s.trim().parse::<usize>() {
        Ok(n) if n <= MAX_WORKERS => Ok(n),
        _ => Err(CommandError::BadArgument {
            name,
            arg: s.to_string(),
            expected: format!("a worker count (0-{MAX_WORKERS})"),
        }),
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::Encoding;

    fn req(command: &str, args: &[&str]) -> Request {
        let mut r = Request::new(command, Encoding::Json);
        r.args = args.iter().map(|s| s.to_string()).collect();
        r
    }

    fn parse(command: &str, args: &[&str]) -> Result<Parsed, CommandError> {
        Command::parse(&req(command, args), |p| p == "web")
    }

    #[test]
    fn every_table_entry_parses_and_maps_back_to_itself() {
        for spec in COMMANDS {
            let mut r = req(spec.name, &[]);
            r.pid = Some(7);
            let args: &[&str] = match spec.name {
                "set_workers" => &["3"],
                "signal" => &["HUP"],
                _ => &[],
            };
            r.args = args.iter().map(|s| s.to_string()).collect();
            let parsed =
                Command::parse(&r, |_| false).unwrap_or_else(|e| panic!("{}: {e}", spec.name));
            assert_eq!(parsed.command.name(), spec.name);
            assert!(!spec.help.is_empty());
        }
    }

    /// docs/protocol.md lists every command of the table.
    #[test]
    fn the_protocol_doc_lists_every_command() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md"))
            .unwrap_or_default();
        for spec in COMMANDS {
            let listed = doc.contains(&format!("| `{}` |", spec.name))
                || doc.contains(&format!("`{}` / `", spec.name))
                || doc.contains(&format!(" / `{}` |", spec.name));
            assert!(listed, "docs/protocol.md does not list `{}`", spec.name);
        }
    }

    #[test]
    fn reexec_takes_only_upgrade() -> Result<(), CommandError> {
        assert_eq!(
            parse("reexec", &[])?.command,
            Command::Reexec { upgrade: false }
        );
        assert_eq!(
            parse("reexec", &["--upgrade"])?.command,
            Command::Reexec { upgrade: true }
        );
        assert!(matches!(
            parse("reexec", &["now"]),
            Err(CommandError::Usage { .. })
        ));
        assert!(lookup("reexec").is_some_and(|c| c.streams && c.scope == Scope::Global));
        Ok(())
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in COMMANDS.iter().enumerate() {
            assert!(
                COMMANDS[i + 1..].iter().all(|b| b.name != a.name),
                "{} twice",
                a.name
            );
        }
    }

    #[test]
    fn the_pool_may_come_as_the_last_argument() -> Result<(), CommandError> {
        assert_eq!(parse("inc", &["web"])?.pool.as_deref(), Some("web"));
        let p = parse("set_workers", &["4", "web"])?;
        assert_eq!(
            (p.command, p.pool.as_deref()),
            (Command::SetWorkers(4), Some("web"))
        );
        // Not a pool: an argument, refused as such.
        assert_eq!(
            parse("inc", &["nosuch"]),
            Err(CommandError::NoArguments { name: "inc" })
        );
        // `pool` given: the last argument stays an argument.
        let mut r = req("inc", &["web"]);
        r.pool = Some("api".into());
        assert!(Command::parse(&r, |_| true).is_err());
        Ok(())
    }

    #[test]
    fn upgrade_takes_a_canary_and_the_pool_last() -> Result<(), CommandError> {
        assert_eq!(
            parse("upgrade", &["--canary", "2", "web"])?,
            Parsed {
                command: Command::Upgrade {
                    kind: UpgradeKind::Configured,
                    canary: Some(2)
                },
                pool: Some("web".into())
            }
        );
        assert_eq!(
            parse("upgrade", &["--canary=0"])?.command,
            Command::Upgrade {
                kind: UpgradeKind::Configured,
                canary: Some(0)
            }
        );
        assert_eq!(parse("upgrade", &["web"])?.pool.as_deref(), Some("web"));
        assert!(parse("upgrade", &["--canary"]).is_err());
        assert!(parse("upgrade", &["--canary", "x"]).is_err());
        assert_eq!(parse("promote", &["web"])?.command, Command::Promote);
        assert_eq!(parse("rollback", &[])?.command, Command::Rollback);
        Ok(())
    }

    #[test]
    fn counts_are_capped_at_the_pool_maximum() {
        assert!(parse("set_workers", &["100000"]).is_ok());
        for bad in ["100001", "-1", "x", "18446744073709551616"] {
            match parse("set_workers", &[bad]) {
                Err(CommandError::BadArgument { expected, .. }) => {
                    assert!(expected.contains("0-100000"), "{expected}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(matches!(
            parse("set_workers", &[]),
            Err(CommandError::Usage { .. })
        ));
    }

    #[test]
    fn signals_and_die() -> Result<(), CommandError> {
        assert_eq!(
            parse("signal", &["HUP", "-USR1", "9"])?.command,
            Command::Signal(vec![Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGKILL])
        );
        assert!(matches!(
            parse("signal", &["NOPE"]),
            Err(CommandError::BadArgument { .. })
        ));
        assert!(matches!(
            parse("signal", &[]),
            Err(CommandError::Usage { .. })
        ));
        assert_eq!(parse("die", &[])?.command, Command::Die(None));
        assert_eq!(
            parse("die", &["TERM"])?.command,
            Command::Die(Some(Signal::SIGTERM))
        );
        assert!(parse("die", &["TERM", "INT"]).is_err());
        Ok(())
    }

    #[test]
    fn worker_messages_need_a_pid_and_pings_are_bounded() -> Result<(), CommandError> {
        assert_eq!(
            parse("worker:ack", &[]),
            Err(CommandError::NoPid { name: "worker:ack" })
        );
        let mut r = req("worker:ping", &[]);
        r.pid = Some(42);
        r.request_id = Some(serde_json::Value::String("é".repeat(70_000)));
        match Command::parse(&r, |_| false)?.command {
            Command::WorkerPing { pid, request_id } => {
                assert_eq!(pid, 42);
                let id = request_id.unwrap_or_default();
                assert!(id.len() <= MAX_PING_ID && id.starts_with('é'));
            }
            other => panic!("{other:?}"),
        }
        r.request_id = Some(serde_json::json!(17));
        assert_eq!(
            Command::parse(&r, |_| false)?.command,
            Command::WorkerPing {
                pid: 42,
                request_id: Some("17".into())
            }
        );
        Ok(())
    }

    #[test]
    fn unknown_commands_list_the_known_ones() {
        match parse("frobnicate", &[]) {
            Err(e @ CommandError::Unknown { .. }) => {
                let text = e.to_string();
                assert!(text.contains("\"frobnicate\"") && text.contains("set_workers"));
            }
            other => panic!("{other:?}"),
        }
    }
}
