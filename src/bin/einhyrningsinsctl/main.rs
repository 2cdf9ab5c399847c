//! `einhyrningsinsctl`: the operator's control client for an einhyrningsins master.
//!
//! One command per run (`-e CMD ARGS...` or plain words) for scripts and
//! deploy tooling, with exit statuses that tell "the master said no" from
//! "there is no master" from "the master did not finish in time"; or, without a
//! command, an interactive shell in the spirit of einhornsh. The wire protocol is
//! JSON lines on the master's unix control socket (BRIEF §3).

mod conn;
#[cfg(test)]
mod manual;
mod pools;
mod shell;
mod top;
mod words;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};
use einhyrningsins::protocol;

use conn::{Conn, CtlError, Outcome, Reply, EXIT_FAILURE};

/// Default deadline for the final reply of every other command.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

const AFTER_HELP: &str = "\
EXAMPLES:
    einhyrningsinsctl status
        Print the master's table of pools, workers, pids and ack states.
    einhyrningsinsctl -e inc --pool web
        One more worker in pool `web`.
    einhyrningsinsctl set_workers 4 --pool web
        The same command given as plain words.
    einhyrningsinsctl -d /run/app/einhorn.sock upgrade
        Rolling upgrade; progress lines are printed as the master sends them.
    einhyrningsinsctl --pool web upgrade --canary 1
        One new worker replaces one old one, then the pool holds with both
        versions; `promote` finishes the roll, `rollback` undoes it.
    einhyrningsinsctl reexec --upgrade
        Upgrade the master in place (same pid, sockets and workers; the new
        binary is checked first), then roll every pool.
    einhyrningsinsctl --timeout 10m upgrade_fleet --pool api
        Give up (exit 4) if the fleet upgrade has not finished in 10 minutes.
    einhyrningsinsctl -- signal -USR1
        `--` ends the options, so an argument may start with a dash.
    einhyrningsinsctl top --pool web
        Live view of pools and workers (state, version, age, RSS, CPU,
        restarts), refreshed every second; `q` quits. `top 250ms` refreshes
        faster. Needs a terminal; no metrics listener.
    einhyrningsinsctl
        Interactive shell (history, tab completion of command names).
    printf 'pool web\\ninc\\nstatus\\n' | einhyrningsinsctl
        Script mode: commands read from stdin, one per line, no prompts.

COMMANDS (sent to the master):
{COMMANDS}
SHELL COMMANDS (handled by the shell itself):
    pool NAME    send later commands to pool NAME (`pool -` clears, `pool` shows)
    quit, exit   leave (so does Ctrl-D)
    Words are split like a shell: quotes and backslashes are honoured and `#`
    starts a comment. `--pool NAME` inside a line applies to that line only.

EXIT STATUS:
    0   the master answered and reported success
    1   the master answered with an error reply, went away mid-command, or sent
        a reply that is not a JSON line (or one longer than 16 MiB)
    2   usage error
    3   no master answers at the socket path (connection refused, no such file,
        permission denied)
    4   no final reply within --timeout
    In script mode the status is that of the first command that failed.

ENVIRONMENT:
    EINHORN_SOCK_PATH   control socket path when -d is not given (every worker of
                        a master has it set to that master's socket)
    HOME                where the shell keeps its history
    USER, LOGNAME       the user name announced to the master with `ehlo`

FILES:
    /tmp/einhorn.sock                   default control socket
    $HOME/.einhyrningsinsctl_history    shell history (skipped if not writable)";

/// Control client for an einhyrningsins (einhorn-compatible) socket master.
#[derive(Debug, Parser)]
#[command(
    name = "einhyrningsinsctl",
    version,
    override_usage = "einhyrningsinsctl [OPTIONS] -e CMD [ARGS]...\n       \
        einhyrningsinsctl [OPTIONS] CMD [ARGS]...\n       \
        einhyrningsinsctl [OPTIONS]    (shell; script mode when stdin is not a terminal)",
    long_about = "Control client for an einhyrningsins socket master.\n\n\
        Sends one command to the master's control socket and prints its reply \
        (streamed progress lines as they arrive, e.g. during `upgrade`), or, \
        without a command, opens an interactive shell. When standard input is \
        not a terminal, the shell reads commands from it line by line (script \
        mode). The protocol is one JSON object per line on a unix socket, \
        compatible with einhorn's.",
    // after_long_help: set in main, from the master's command table.
)]
struct Cli {
    /// Control socket of the master [default: $EINHORN_SOCK_PATH, else /tmp/einhorn.sock]
    #[arg(short = 'd', long = "socket-path", value_name = "PATH")]
    socket_path: Option<PathBuf>,

    /// Pool the command applies to (needed by count-changing commands when the
    /// master runs several pools); in the shell, the initial default pool
    #[arg(short = 'p', long, value_name = "NAME")]
    pool: Option<String>,

    /// Print each reply as the raw JSON line the master sent, instead of its message
    #[arg(long)]
    json: bool,

    /// Give up waiting for the final reply after DUR ("30s", "500ms", "10m", or
    /// seconds); 0 waits forever. Default: none for upgrade, upgrade_fleet and
    /// reload, 30s otherwise
    #[arg(long, value_name = "DUR", value_parser = parse_timeout)]
    timeout: Option<Duration>,

    /// With `upgrade`: start a canary of N new workers and hold (then
    /// `promote` or `rollback`); 0 forces a full upgrade
    #[arg(long, value_name = "N")]
    canary: Option<usize>,

    /// With `reexec`: once the new master runs, roll every pool (einhorn's
    /// `upgrade`)
    #[arg(long)]
    upgrade: bool,

    /// With `logs` or `events`: follow new lines as they come
    #[arg(short = 'f', long)]
    follow: bool,

    /// With `logs`: how many recent lines (default 100)
    #[arg(short = 'n', long = "lines", value_name = "N")]
    lines: Option<usize>,

    /// Command to send; the remaining words are its arguments
    #[arg(short = 'e', long = "execute", value_name = "CMD")]
    execute: Option<String>,

    /// Hidden, for the completion scripts: print the master's pool names, one
    /// per line (nothing, exit 3, when no master answers)
    #[arg(long = "list-pools", hide = true)]
    list_pools: bool,

    /// Command and arguments as plain words (or only arguments, after -e)
    #[arg(value_name = "WORDS", allow_negative_numbers = true)]
    words: Vec<String>,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "none" {
        return Ok(Duration::ZERO);
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|e| format!("`{s}` is not a duration in seconds: {e}"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 30s, 500ms or 10m: {e}"))
}

/// The command line as clap sees it, `--help`'s epilogue included.
fn command() -> clap::Command {
    Cli::command().after_long_help(after_help())
}

/// `--help`'s epilogue, with the master's commands from its own table.
fn after_help() -> String {
    let mut list = String::new();
    for c in protocol::COMMANDS
        .iter()
        .filter(|c| c.scope != protocol::Scope::Worker)
    {
        list.push_str(&format!("    {:<22} {}\n", c.usage(), c.help));
    }
    AFTER_HELP.replace("{COMMANDS}", &list)
}

/// What every mode needs to talk to the master.
pub struct Settings {
    pub path: PathBuf,
    pub json: bool,
    pub timeout_flag: Option<Duration>,
}

impl Settings {
    /// Deadline for the final reply to `command`: the flag (0 = none), else
    /// none for long-running commands, else the default.
    pub fn timeout_for(&self, command: &str) -> Option<Duration> {
        match self.timeout_flag {
            Some(t) if t.is_zero() => None,
            Some(t) => Some(t),
            // Commands that may legitimately run for minutes (rolling a pool
            // through slow acks) get no default deadline (the master's table).
            None if protocol::command::lookup(command).is_some_and(|c| c.long_running) => None,
            None => Some(DEFAULT_TIMEOUT),
        }
    }

    /// Prints one reply: the raw line with `--json`, else its message (error
    /// replies on stderr so scripts can keep them apart from output).
    pub fn print(&self, reply: &Reply) -> io::Result<()> {
        if self.json {
            return writeln!(io::stdout().lock(), "{}", reply.raw);
        }
        let text = if reply.has_message {
            reply.reply.message.as_str()
        } else {
            reply.raw.as_str()
        };
        if text.is_empty() {
            return Ok(());
        }
        let newline = if text.ends_with('\n') { "" } else { "\n" };
        if reply.reply.error {
            write!(io::stderr().lock(), "{text}{newline}")
        } else {
            let mut out = io::stdout().lock();
            write!(out, "{text}{newline}")?;
            out.flush()
        }
    }
}

fn main() -> ExitCode {
    let cli = match command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let settings = Settings {
        path: conn::socket_path(cli.socket_path),
        json: cli.json,
        timeout_flag: cli.timeout,
    };
    if cli.list_pools {
        return ExitCode::from(pools::list(&settings));
    }
    let mut words = cli.words;
    let canary = cli.canary;
    let command = match cli.execute {
        Some(cmd) => Some(cmd),
        None if words.is_empty() => None,
        None => Some(words.remove(0)),
    };
    match command {
        Some(cmd) if cmd.trim().is_empty() => {
            eprintln!("einhyrningsinsctl: the command is empty (try --help)");
            ExitCode::from(2)
        }
        // A view of the master, not one of its commands (src/bin/einhyrningsinsctl/top.rs).
        Some(cmd) if cmd == "top" => {
            ExitCode::from(top::run(&settings, cli.pool.as_deref(), &words))
        }
        Some(cmd) if canary.is_some() && cmd != "upgrade" => {
            eprintln!("einhyrningsinsctl: --canary goes with `upgrade` only");
            ExitCode::from(2)
        }
        Some(cmd) if cli.upgrade && cmd != "reexec" => {
            eprintln!("einhyrningsinsctl: --upgrade goes with `reexec` only");
            ExitCode::from(2)
        }
        Some(cmd)
            if (cli.follow || cli.lines.is_some())
                && !matches!(cmd.as_str(), "logs" | "events") =>
        {
            eprintln!("einhyrningsinsctl: -f and -n go with `logs` (and -f with `events`)");
            ExitCode::from(2)
        }
        Some(cmd) => {
            if cli.follow {
                words.push("-f".to_string());
            }
            if let Some(n) = cli.lines {
                words.extend(["-n".to_string(), n.to_string()]);
            }
            if cli.upgrade {
                words.insert(0, "--upgrade".to_string());
            }
            if let Some(n) = canary {
                words.splice(0..0, ["--canary".to_string(), n.to_string()]);
            }
            ExitCode::from(one_shot(&settings, &cmd, &words, cli.pool.as_deref()))
        }
        None => ExitCode::from(shell::run(&settings, cli.pool)),
    }
}

/// Sends one command and returns the exit status.
fn one_shot(settings: &Settings, command: &str, args: &[String], pool: Option<&str>) -> u8 {
    let result = Conn::connect(&settings.path).and_then(|mut conn| {
        let req = conn::request(command, args, 1, pool, None);
        conn.request(&req, settings.timeout_for(command), &mut |r| {
            settings.print(r)
        })
    });
    match result {
        Ok(Outcome::Ok) => 0,
        Ok(Outcome::ErrorReply) => EXIT_FAILURE,
        Err(e) => report(&e),
    }
}

/// Prints `e` for the operator (unless only our own stdout is gone, where
/// nobody would read it) and returns its exit status.
pub fn report(e: &CtlError) -> u8 {
    match e {
        CtlError::Stdout(io_err) if io_err.kind() == io::ErrorKind::BrokenPipe => {}
        _ => eprintln!("einhyrningsinsctl: {e}"),
    }
    e.exit_code()
}
