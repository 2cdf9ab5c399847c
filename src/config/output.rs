//! Where a pool's worker output goes (`stdout`, `stderr`, `output_max_bytes`,
//! `output_backups`) and the master's own log file (`[log] file`,
//! `max_bytes`, `backups`). Pure: values, their parsers, the `{pool}` /
//! `{index}` placeholders of a file path, and the rotation decision; the
//! master's capture (src/master/output.rs, src/output/) does the I/O.
//!
//! The keys are flat pool keys rather than a `[pools.NAME.output]` table:
//! every other pool setting is a flat key, `stdout = "log"` reads as what it
//! does, and one pair of rotation settings serves both streams (they often
//! share a file).

use std::path::PathBuf;

/// One stream of a worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sink {
    /// The master's own stdout/stderr, as before (not captured).
    #[default]
    Inherit,
    /// Each line into the master's log, with pool, index and pid.
    Log,
    /// /dev/null (not captured).
    Null,
    /// A file the master writes, rotated; `{pool}` and `{index}` expanded.
    File(String),
}

impl Sink {
    /// Whether the master reads this stream through a pipe (and so keeps its
    /// lines in the `logs` ring).
    pub fn captured(&self) -> bool {
        matches!(self, Sink::Log | Sink::File(_))
    }

    pub fn describe(&self) -> String {
        match self {
            Sink::Inherit => "inherit".into(),
            Sink::Log => "log".into(),
            Sink::Null => "null".into(),
            Sink::File(p) => p.clone(),
        }
    }
}

/// A pool's output settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Output {
    pub stdout: Sink,
    pub stderr: Sink,
    /// A file sink is rotated before a line would take it past this size;
    /// 0: never (logrotate with `reopen_logs`).
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` newest ... `path.N`); 0: the file is
    /// truncated at `max_bytes`.
    pub backups: u32,
}

/// supervisord's defaults: 50 MiB, 10 backups.
pub const DEFAULT_MAX_BYTES: u64 = 50 * 1024 * 1024;
pub const DEFAULT_BACKUPS: u32 = 10;
/// Most backups a file may keep (a guard against a typo).
pub const MAX_BACKUPS: u32 = 1000;

impl Default for Output {
    fn default() -> Output {
        Output {
            stdout: Sink::Inherit,
            stderr: Sink::Inherit,
            max_bytes: DEFAULT_MAX_BYTES,
            backups: DEFAULT_BACKUPS,
        }
    }
}

impl Output {
    pub fn captures(&self) -> bool {
        self.stdout.captured() || self.stderr.captured()
    }

    pub fn is_default(&self) -> bool {
        *self == Output::default()
    }

    /// For `check` and `status`: `stdout log, stderr /var/log/x.log (rotated
    /// at 50 MiB, 10 backups)`.
    pub fn describe(&self) -> String {
        let files = matches!(self.stdout, Sink::File(_)) || matches!(self.stderr, Sink::File(_));
        format!(
            "stdout {}, stderr {}{}",
            self.stdout.describe(),
            self.stderr.describe(),
            if files {
                format!(" ({})", describe_rotation(self.max_bytes, self.backups))
            } else {
                String::new()
            }
        )
    }
}

/// `rotated at 50 MiB, 10 backups` / `never rotated`.
pub fn describe_rotation(max_bytes: u64, backups: u32) -> String {
    if max_bytes == 0 {
        return "never rotated; reopened by reopen_logs and SIGUSR1".into();
    }
    let size = if max_bytes % (1024 * 1024) == 0 {
        format!("{} MiB", max_bytes / (1024 * 1024))
    } else if max_bytes % 1024 == 0 {
        format!("{} KiB", max_bytes / 1024)
    } else {
        format!("{max_bytes} bytes")
    };
    format!("rotated at {size}, {backups} backup(s)")
}

/// A `stdout`/`stderr` value: `inherit`, `log`, `null`, or a file path
/// (absolute or relative to the master's working directory) whose only
/// placeholders are `{pool}` and `{index}`.
pub fn parse_sink(s: &str) -> Result<Sink, String> {
    match s {
        "inherit" => Ok(Sink::Inherit),
        "log" => Ok(Sink::Log),
        "null" => Ok(Sink::Null),
        "" => Err("expected \"inherit\", \"log\", \"null\" or a file path".into()),
        path => {
            check_template(path)?;
            Ok(Sink::File(path.to_string()))
        }
    }
}

fn check_template(t: &str) -> Result<(), String> {
    let mut rest = t;
    while let Some(i) = rest.find('{') {
        let after = &rest[i..];
        if let Some(tail) = after
            .strip_prefix("{pool}")
            .or_else(|| after.strip_prefix("{index}"))
        {
            rest = tail;
        } else {
            let end = after.find('}').map_or(after.len(), |j| j + 1);
            return Err(format!(
                "{:?}: unknown placeholder (a file path may use {{pool}} and {{index}})",
                &after[..end]
            ));
        }
    }
    if t.ends_with('/') {
        return Err(format!("{t:?} names a directory, not a file"));
    }
    Ok(())
}

/// The file of one worker: `{pool}` and `{index}` replaced.
pub fn expand(template: &str, pool: &str, index: u32) -> PathBuf {
    PathBuf::from(
        template
            .replace("{pool}", pool)
            .replace("{index}", &index.to_string()),
    )
}

/// Rotate before writing `incoming` bytes to a file of `size` bytes? Never
/// for an empty file (a line longer than the limit still gets written).
pub fn should_rotate(size: u64, incoming: u64, max_bytes: u64) -> bool {
    max_bytes > 0 && size > 0 && size.saturating_add(incoming) > max_bytes
}

/// The renames of one rotation, oldest first: `path.(N-1)` → `path.N` ...
/// `path` → `path.1`. With no backups there are none (the file is truncated).
pub fn rotation_renames(path: &std::path::Path, backups: u32) -> Vec<(PathBuf, PathBuf)> {
    let name = |n: u32| {
        let mut s = path.as_os_str().to_os_string();
        if n > 0 {
            s.push(format!(".{n}"));
        }
        PathBuf::from(s)
    };
    (0..backups).rev().map(|n| (name(n), name(n + 1))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinks_parse_and_placeholders_are_checked() {
        assert_eq!(parse_sink("log"), Ok(Sink::Log));
        assert_eq!(parse_sink("null"), Ok(Sink::Null));
        assert_eq!(parse_sink("inherit"), Ok(Sink::Inherit));
        assert_eq!(
            parse_sink("/var/log/{pool}-{index}.log"),
            Ok(Sink::File("/var/log/{pool}-{index}.log".into()))
        );
        assert!(parse_sink("").is_err());
        let e = parse_sink("/x/{pid}.log").unwrap_err();
        assert!(e.contains("{pid}"), "{e}");
        assert!(parse_sink("/x/{pool").unwrap_err().contains("{pool"));
        assert!(parse_sink("/var/log/").is_err());
        assert!(Sink::Log.captured() && Sink::File("a".into()).captured());
        assert!(!Sink::Null.captured() && !Sink::Inherit.captured());
    }

    #[test]
    fn placeholders_expand_per_worker() {
        assert_eq!(
            expand("/l/{pool}.{index}.{pool}", "web", 3),
            PathBuf::from("/l/web.3.web")
        );
        assert_eq!(expand("/l/all.log", "web", 3), PathBuf::from("/l/all.log"));
    }

    #[test]
    fn rotation_happens_before_the_line_that_would_cross_the_limit() {
        assert!(!should_rotate(0, 500, 100), "an empty file takes any line");
        assert!(!should_rotate(90, 10, 100));
        assert!(should_rotate(91, 10, 100));
        assert!(!should_rotate(u64::MAX - 1, 10, 0), "0: never");
        assert!(should_rotate(u64::MAX - 1, 10, 100), "no overflow");
    }

    #[test]
    fn renames_shift_backups_oldest_first() {
        let r = rotation_renames(std::path::Path::new("/l/a.log"), 3);
        let got: Vec<(String, String)> = r
            .iter()
            .map(|(a, b)| (a.display().to_string(), b.display().to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("/l/a.log.2".into(), "/l/a.log.3".into()),
                ("/l/a.log.1".into(), "/l/a.log.2".into()),
                ("/l/a.log".into(), "/l/a.log.1".into()),
            ]
        );
        assert!(rotation_renames(std::path::Path::new("/l/a.log"), 0).is_empty());
    }
}
