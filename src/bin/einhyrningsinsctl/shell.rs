//! The interactive shell (rustyline) and its non-terminal twin, script mode.
//!
//! Both run the same [`Session`], so a script piped into the client behaves
//! exactly like the same lines typed at the prompt. The session keeps one
//! connection open across commands, as einhornsh does, and greets the master
//! with `ehlo` on each (re)connect. When the master goes away (restart, `die`,
//! crash) the operator is told so and the next command reconnects: a shell
//! left open across a master restart keeps working.

use std::borrow::Cow;
use std::io::{self, BufRead, IsTerminal};
use std::path::PathBuf;

use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Config, Context, Editor, Helper};

use crate::conn::{Conn, CtlError, Outcome, EXIT_FAILURE};
use crate::{words, Settings};

const PROMPT: &str = "einhyrningsins> ";

/// The shell's own commands, offered by tab completion after the master's.
const SHELL_COMMANDS: &[&str] = &["pool", "quit", "exit"];

/// Command names offered by tab completion: the master's own table (minus the
/// `worker:*` messages workers send), then the shell's.
fn command_names() -> Vec<&'static str> {
    einhyrningsins::protocol::COMMANDS
        .iter()
        .filter(|c| c.scope != einhyrningsins::protocol::Scope::Worker)
        .map(|c| c.name)
        .chain(SHELL_COMMANDS.iter().copied())
        .collect()
}

/// Signal names offered after `signal` and `die`.
const SIGNALS: &[&str] = &[
    "HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "TTIN", "TTOU", "WINCH", "CONT", "STOP",
];

const SHELL_HELP: &str = "\
Shell commands: pool NAME (default pool for later commands; `pool -` clears it),
quit / exit / Ctrl-D (leave). `--pool NAME` in a line applies to that line only.";

/// Exit status for a line the shell itself cannot make sense of.
const EXIT_USAGE: u8 = 2;

/// Runs the shell (terminal on stdin) or script mode (anything else) and
/// returns the exit status.
pub fn run(settings: &Settings, pool: Option<String>) -> u8 {
    let mut session = Session {
        settings,
        pool,
        conn: None,
        next_id: 1,
        interactive: io::stdin().is_terminal(),
        user: user_name(),
    };
    if session.interactive {
        interactive(&mut session)
    } else {
        // A script is for a master: without one, say so and fail (exit 3)
        // even if no line of it would have reached the master.
        if let Err(e) = session.ensure_connected() {
            return crate::report(&e);
        }
        script(&mut session)
    }
}

fn interactive(session: &mut Session<'_>) -> u8 {
    // Bash-like completion (common prefix, then a list) rather than cycling:
    // what an operator's fingers expect from a shell.
    let config = Config::builder()
        .completion_type(CompletionType::List)
        .build();
    let mut rl = match Editor::<CtlHelper, DefaultHistory>::with_config(config) {
        Ok(rl) => rl,
        Err(e) => {
            eprintln!("einhyrningsinsctl: cannot set up the terminal: {e}");
            return EXIT_FAILURE;
        }
    };
    rl.set_helper(Some(CtlHelper));
    let history = history_path();
    if let Some(path) = &history {
        // A missing or unreadable history file only means an empty history.
        let _ = rl.load_history(path);
    }
    // Connect up front so the operator sees at once whether a master answers;
    // a failure is reported and retried at the first command.
    if let Err(e) = session.ensure_connected() {
        eprintln!("{e}");
    }
    loop {
        match rl.readline(PROMPT) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = rl.add_history_entry(line.as_str());
                    if let Some(path) = &history {
                        // Saved per command so a killed shell keeps its history;
                        // an unwritable $HOME is not worth an error.
                        let _ = rl.save_history(path);
                    }
                }
                if let Step::Quit = session.line(&line) {
                    break;
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("einhyrningsinsctl: cannot read the terminal: {e}");
                return EXIT_FAILURE;
            }
        }
    }
    0
}

fn script(session: &mut Session<'_>) -> u8 {
    let mut first_failure = 0;
    for (n, line) in io::stdin().lock().lines().enumerate() {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                eprintln!("einhyrningsinsctl: stdin line {}: cannot read: {e}", n + 1);
                return if first_failure == 0 {
                    EXIT_FAILURE
                } else {
                    first_failure
                };
            }
        };
        match session.line(&line) {
            Step::Quit => break,
            Step::Done(0) => {}
            Step::Done(code) => {
                if first_failure == 0 {
                    first_failure = code;
                }
            }
        }
    }
    first_failure
}

fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".einhyrningsinsctl_history"))
}

/// The name announced with `ehlo`, as einhornsh does with `$USER`.
fn user_name() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Ok(name) = std::env::var(var) {
            if !name.is_empty() {
                return name;
            }
        }
    }
    match nix::unistd::User::from_uid(nix::unistd::getuid()) {
        Ok(Some(user)) => user.name,
        _ => format!("uid {}", nix::unistd::getuid()),
    }
}

enum Step {
    Done(u8),
    Quit,
}

/// Connection, default pool and id counter shared by the lines of a session.
struct Session<'a> {
    settings: &'a Settings,
    pool: Option<String>,
    conn: Option<Conn>,
    next_id: u64,
    interactive: bool,
    user: String,
}

impl Session<'_> {
    fn line(&mut self, line: &str) -> Step {
        let mut words = match words::split(line) {
            Ok(words) => words,
            Err(e) => {
                eprintln!("cannot split the line: {e}");
                return Step::Done(EXIT_USAGE);
            }
        };
        if words.is_empty() {
            return Step::Done(0);
        }
        let command = words.remove(0);
        match command.as_str() {
            "quit" | "exit" => return Step::Quit,
            "pool" => return Step::Done(self.pool_command(&words)),
            _ => {}
        }
        let (args, pool) = match take_pool_flag(words) {
            Ok(split) => split,
            Err(msg) => {
                eprintln!("{msg}");
                return Step::Done(EXIT_USAGE);
            }
        };
        let pool = pool.or_else(|| self.pool.clone());
        let code = self.send(&command, &args, pool.as_deref());
        if command == "help" && self.interactive {
            say(SHELL_HELP);
        }
        Step::Done(code)
    }

    fn pool_command(&mut self, args: &[String]) -> u8 {
        match args {
            [] => {
                match &self.pool {
                    Some(p) => say(&format!("default pool: {p}")),
                    None => say("no default pool (commands go to the master's only pool)"),
                }
                0
            }
            [p] if p == "-" => {
                self.pool = None;
                0
            }
            [p] => match self.pool_names() {
                Ok(names) if names.contains(p) => {
                    self.pool = Some(p.clone());
                    0
                }
                Ok(names) => {
                    eprintln!(
                        "no pool named {p:?}; pools: {} (the default pool is {})",
                        names.join(", "),
                        self.pool.as_deref().unwrap_or("unset")
                    );
                    EXIT_FAILURE
                }
                Err(e) => {
                    eprintln!("{e}");
                    e.exit_code()
                }
            },
            _ => {
                eprintln!("usage: pool NAME (or `pool -` to clear)");
                EXIT_USAGE
            }
        }
    }

    /// Opens a connection if none is open (or the open one was closed by the
    /// master while idle) and greets the master.
    fn ensure_connected(&mut self) -> Result<(), CtlError> {
        if let Some(conn) = &self.conn {
            if !conn.is_closed() {
                return Ok(());
            }
            self.conn = None;
            eprintln!(
                "master went away: {} closed the connection; reconnecting",
                self.settings.path.display()
            );
        }
        let mut conn = Conn::connect(&self.settings.path)?;
        let id = self.take_id();
        let req = crate::conn::request("ehlo", &[], id, None, Some(&self.user));
        let interactive = self.interactive;
        let settings = self.settings;
        // The greeting is shown at the prompt only: in script mode stdout is
        // kept to the output of the commands the script asked for. An error
        // reply to ehlo (a master without it) does not stop the session.
        conn.request(&req, settings.timeout_for("ehlo"), &mut |r| {
            if interactive {
                settings.print(r)
            } else {
                Ok(())
            }
        })?;
        self.conn = Some(conn);
        Ok(())
    }

    /// The master's pool names (from `state`), to check `pool NAME`.
    fn pool_names(&mut self) -> Result<Vec<String>, CtlError> {
        self.ensure_connected()?;
        let id = self.take_id();
        let timeout = self.settings.timeout_for("state");
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Vec::new());
        };
        let mut message = String::new();
        let req = crate::conn::request("state", &[], id, None, None);
        let result = conn.request(&req, timeout, &mut |r| {
            message = r.reply.message.clone();
            Ok(())
        });
        if let Err(e) = result {
            if e.breaks_connection() {
                self.conn = None;
            }
            return Err(e);
        }
        Ok(crate::pools::names(&message))
    }

    fn send(&mut self, command: &str, args: &[String], pool: Option<&str>) -> u8 {
        if let Err(e) = self.ensure_connected() {
            eprintln!("{e}");
            return e.exit_code();
        }
        let id = self.take_id();
        let settings = self.settings;
        let Some(conn) = self.conn.as_mut() else {
            return EXIT_FAILURE;
        };
        let req = crate::conn::request(command, args, id, pool, None);
        match conn.request(&req, settings.timeout_for(command), &mut |r| {
            settings.print(r)
        }) {
            Ok(Outcome::Ok) => 0,
            Ok(Outcome::ErrorReply) => EXIT_FAILURE,
            Err(e) => {
                if e.breaks_connection() {
                    // Late replies on this connection would belong to a request
                    // we gave up on; a fresh one starts clean.
                    self.conn = None;
                }
                crate::report(&e)
            }
        }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

/// Prints a shell-local line; a closed stdout is no reason to panic (the
/// commands' own output reports it).
fn say(text: &str) {
    use std::io::Write;
    let _ = writeln!(io::stdout().lock(), "{text}");
}

/// Removes `--pool NAME`, `--pool=NAME`, `-p NAME` from a line's arguments.
fn take_pool_flag(words: Vec<String>) -> Result<(Vec<String>, Option<String>), String> {
    let mut args = Vec::with_capacity(words.len());
    let mut pool = None;
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        if w == "--pool" || w == "-p" {
            match it.next() {
                Some(p) => pool = Some(p),
                None => return Err(format!("{w} needs a pool name")),
            }
        } else if let Some(p) = w.strip_prefix("--pool=") {
            pool = Some(p.to_string());
        } else {
            args.push(w);
        }
    }
    Ok((args, pool))
}

/// Tab completion of command names (first word) and signal names (after
/// `signal` / `die`).
struct CtlHelper;

impl Completer for CtlHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        Ok(complete(line, pos))
    }
}

fn complete(line: &str, pos: usize) -> (usize, Vec<Pair>) {
    let before = line.get(..pos).unwrap_or(line);
    let start = before
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_whitespace())
        .map_or(0, |(i, c)| i + c.len_utf8());
    let prefix = &before[start..];
    let previous: Vec<&str> = before[..start].split_whitespace().collect();
    let all;
    let names: &[&str] = match previous.first() {
        None => {
            all = command_names();
            &all
        }
        Some(&"signal") => SIGNALS,
        Some(&"die") if previous.len() == 1 => SIGNALS,
        Some(_) => &[],
    };
    let candidates = names
        .iter()
        .filter(|n| n.starts_with(prefix))
        .map(|n| Pair {
            display: n.to_string(),
            replacement: format!("{n} "),
        })
        .collect();
    (start, candidates)
}

impl Hinter for CtlHelper {
    type Hint = String;
}

impl Highlighter for CtlHelper {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        Cow::Borrowed(line)
    }
}

impl Validator for CtlHelper {}

impl Helper for CtlHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(line: &str) -> (usize, Vec<String>) {
        let (start, pairs) = complete(line, line.len());
        (start, pairs.into_iter().map(|p| p.display).collect())
    }

    #[test]
    fn completes_command_names_then_signals() {
        assert_eq!(
            names("up"),
            (0, vec!["upgrade".into(), "upgrade_fleet".into()])
        );
        assert_eq!(names("  qu"), (2, vec!["quieter".into(), "quit".into()]));
        assert_eq!(names("che"), (0, vec!["check".into()]));
        assert_eq!(
            names("signal HUP US"),
            (11, vec!["USR1".into(), "USR2".into()])
        );
        assert_eq!(
            names("die T"),
            (4, vec!["TERM".into(), "TTIN".into(), "TTOU".into()])
        );
        assert_eq!(names("die TERM T").1, Vec::<String>::new());
        assert_eq!(names("inc x").1, Vec::<String>::new());
    }

    #[test]
    fn pool_flag_is_taken_out_of_the_arguments() {
        let words = |ws: &[&str]| ws.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert_eq!(
            take_pool_flag(words(&["4", "--pool", "web"])),
            Ok((words(&["4"]), Some("web".into())))
        );
        assert_eq!(
            take_pool_flag(words(&["--pool=api", "HUP"])),
            Ok((words(&["HUP"]), Some("api".into())))
        );
        assert!(take_pool_flag(words(&["-p"])).is_err());
    }
}
