//! Logging: fern to stderr with timestamps and levels; WARN and above also to
//! syslog when asked. The level can change at run time (`louder`/`quieter`,
//! reload): fern passes everything and `log::set_max_level` does the filtering.
//!
//! With `[log] file`, lines go to that file instead of stderr, rotated at
//! `max_bytes` (src/output/file.rs) and reopened by [`reopen`]; while the
//! file cannot be written, they go to stderr. Worker lines of pools with
//! `stdout`/`stderr = "log"` come in through [`worker_line`]: same
//! destination, one write per line, never filtered by the level.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use log::LevelFilter;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("could not set up logging: {0}")]
    Init(#[from] log::SetLoggerError),
}

/// Install the global logger. Syslog problems are reported and skipped, never fatal.
pub fn init(config: &crate::config::LogConfig, process_name: &str) -> Result<(), LogError> {
    let (level, syslog) = (config.level, config.syslog);
    // Workers usually share the master's stderr (a terminal, the journal, a
    // container log). Each line is formatted into one buffer and written with a
    // single write(2), so lines from the master and workers never interleave
    // mid-line (std's stderr is unbuffered: formatting straight into it issues a
    // write per fragment).
    if let Some(path) = &config.file {
        let mut f =
            crate::output::file::RotatingFile::new(path.clone(), config.max_bytes, config.backups);
        if let Err(e) = f.open_now() {
            let _ = writeln!(
                std::io::stderr(),
                "einhyrningsins: cannot open the log file {}: {e}; logging to stderr until it can be written",
                path.display()
            );
        }
        *log_file() = Some(f);
    }
    let stderr = fern::Dispatch::new().chain(fern::Output::call(|record| {
        let line = format!(
            "{} {:<5} {}",
            humantime::format_rfc3339_millis(SystemTime::now()),
            record.level(),
            Escaped(&record.args().to_string())
        );
        emit(&line, false);
    }));
    let mut root = fern::Dispatch::new()
        .level(LevelFilter::Trace)
        .chain(stderr);
    let mut syslog_err = None;
    if syslog {
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_DAEMON,
            hostname: None,
            process: process_name.to_string(),
            pid: std::process::id(),
        };
        let logger = match &config.syslog_socket {
            Some(path) => syslog::unix_custom(formatter, path),
            None => syslog::unix(formatter),
        };
        match logger {
            Ok(logger) => {
                root = root.chain(
                    fern::Dispatch::new()
                        .level(LevelFilter::Warn)
                        .format(|out, message, _| {
                            out.finish(format_args!("{}", Escaped(&message.to_string())))
                        })
                        .chain(logger),
                );
            }
            Err(e) => syslog_err = Some(e),
        }
    }
    root.apply()?;
    log::set_max_level(level);
    if let Some(e) = syslog_err {
        let at = config
            .syslog_socket
            .as_ref()
            .map_or("/dev/log, /var/run/syslog or /var/run/log".into(), |p| {
                p.display().to_string()
            });
        log::warn!("syslog unavailable at {at}, logging to stderr only: {e}");
    }
    Ok(())
}

static LOG_FILE: Mutex<Option<crate::output::file::RotatingFile>> = Mutex::new(None);

fn log_file() -> MutexGuard<'static, Option<crate::output::file::RotatingFile>> {
    LOG_FILE.lock().unwrap_or_else(|p| p.into_inner())
}

/// One line (without its newline) to the log file, or stderr: one write(2).
/// Returns false when it was dropped (the file failed and stderr too).
fn emit(line: &str, cut: bool) -> bool {
    let now = Instant::now();
    if let Some(f) = log_file().as_mut() {
        let before = f.stats.dropped;
        f.push_line(line.as_bytes(), cut, now);
        f.flush(now);
        if f.stats.dropped == before {
            return true;
        }
    }
    let mut buf = String::with_capacity(line.len() + 8);
    buf.push_str(line);
    if cut {
        buf.push_str(" [cut]");
    }
    buf.push('\n');
    std::io::stderr().lock().write_all(buf.as_bytes()).is_ok()
}

/// Most bytes of worker lines written at once: a block of whole lines no
/// longer than PIPE_BUF is written atomically even to a pipe shared with
/// other writers (workers with `"inherit"`, a journal), so lines stay whole;
/// a longer line is written alone.
pub const WORKER_BLOCK: usize = 4096;

/// Append a worker's line (`stdout`/`stderr = "log"`), attributed, with its
/// newline: `TIME INFO  pool web[0] pid 42 stdout: text`. `ts` is the time
/// the line was read, formatted once per read.
#[allow(clippy::too_many_arguments)]
pub fn format_worker_line(
    out: &mut String,
    ts: &str,
    pool: &str,
    index: u32,
    pid: i32,
    stream: &str,
    text: &str,
    cut: bool,
) {
    let _ = writeln!(
        out,
        "{ts} INFO  pool {pool}[{index}] pid {pid} {stream}: {}{}",
        Escaped(text),
        if cut { " [cut]" } else { "" }
    );
}

/// The time stamp of log lines, now.
pub fn timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Write a block of whole worker lines (see [`WORKER_BLOCK`]) with one
/// write(2), to the log file or stderr. Returns false if it was dropped.
pub fn write_worker_block(block: &str, lines: u64) -> bool {
    if block.is_empty() {
        return true;
    }
    let now = Instant::now();
    if let Some(f) = log_file().as_mut() {
        let before = f.stats.dropped;
        f.push_block(block.as_bytes(), lines, now);
        f.flush(now);
        if f.stats.dropped == before {
            return true;
        }
    }
    std::io::stderr().lock().write_all(block.as_bytes()).is_ok()
}

/// `reopen_logs`, SIGUSR1: the log file is opened again by its path.
pub fn reopen() {
    if let Some(f) = log_file().as_mut() {
        f.reopen(Instant::now());
        let _ = f.open_now();
    }
}

/// The log file's path and counters, for `status`.
pub fn file_stats() -> Option<(std::path::PathBuf, crate::output::file::FileStats)> {
    log_file()
        .as_ref()
        .map(|f| (f.path().to_path_buf(), f.stats.clone()))
}

/// Text from outside (command names, pool names in requests, file names, a
/// worker's status) reaches log lines: control characters are escaped so that
/// no line can be split, forged or made to rewrite the terminal.
pub struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0;
        if !s.chars().any(needs_escape) {
            return f.write_str(s);
        }
        for c in s.chars() {
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                c if needs_escape(c) => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\t') || matches!(c, '\u{2028}' | '\u{2029}')
}

const LEVELS: [LevelFilter; 6] = [
    LevelFilter::Off,
    LevelFilter::Error,
    LevelFilter::Warn,
    LevelFilter::Info,
    LevelFilter::Debug,
    LevelFilter::Trace,
];

/// One step more (`louder`) or less verbose; returns the new level.
pub fn step(louder: bool) -> LevelFilter {
    let cur = log::max_level();
    let i = LEVELS.iter().position(|l| *l == cur).unwrap_or(3);
    let j = if louder {
        (i + 1).min(LEVELS.len() - 1)
    } else {
        i.saturating_sub(1).max(1)
    };
    log::set_max_level(LEVELS[j]);
    LEVELS[j]
}

#[cfg(test)]
mod tests {
    use super::Escaped;

    #[test]
    fn control_characters_cannot_forge_a_line() {
        let forged = "inc\n2026-01-01T00:00:00.000Z INFO  pool web: upgrade done\r\u{1b}[2J";
        let out = Escaped(forged).to_string();
        assert!(!out.contains('\n') && !out.contains('\r') && !out.contains('\u{1b}'));
        assert_eq!(
            out,
            "inc\\n2026-01-01T00:00:00.000Z INFO  pool web: upgrade done\\r\\u{1b}[2J"
        );
        assert_eq!(Escaped("plain\ttext é").to_string(), "plain\ttext é");
    }
}
