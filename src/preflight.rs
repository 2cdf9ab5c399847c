//! What can be checked on this machine before a master starts: that each
//! pool's program exists and can be executed (at start it is an error, exit 2,
//! instead of a master that crash-loops forever holding its control socket),
//! and, for `check`, what else a file names that is not there: a `cwd`, the
//! control socket's directory, `watch` paths.
//!
//! A mistyped command line is the common case (`einhyrningsins chek app.toml`,
//! `einhyrningsins app.toml` without `--config`), so a missing program comes
//! with a hint when it looks like a subcommand or a file.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::{Config, PoolConfig};
use crate::control::protocol;
use crate::watch::{pool_path_env, resolve_executable};

/// A pool whose program cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("{at}: {program:?} is not a file in PATH{hint}")]
    NotInPath {
        at: String,
        program: String,
        hint: String,
    },
    #[error("{at}: {} does not exist{hint}", path.display())]
    Missing {
        at: String,
        path: PathBuf,
        hint: String,
    },
    #[error("{at}: {} is not a regular file", path.display())]
    NotAFile { at: String, path: PathBuf },
    #[error("{at}: {} is not executable (no execute permission){hint}", path.display())]
    NotExecutable {
        at: String,
        path: PathBuf,
        hint: String,
    },
}

/// Every pool's program, checked as execvp would find it; one error per pool
/// that cannot be run.
pub fn programs(config: &Config) -> Vec<ProgramError> {
    config
        .pools
        .iter()
        .filter_map(|(name, p)| program(config, name, p).err())
        .collect()
}

fn program(config: &Config, name: &str, pool: &PoolConfig) -> Result<PathBuf, ProgramError> {
    let at = config.locate(&format!("pools.{name}.command"));
    let at = if config.source.is_some() {
        format!("{at}: pools.{name}.command")
    } else {
        at
    };
    let Some(cmd0) = pool.command.first() else {
        // validate() refuses an empty command; nothing to check here.
        return Ok(PathBuf::new());
    };
    let classic = config.source.is_none();
    let hint = hint(cmd0, &pool.command, classic);
    let path_env = pool_path_env(pool);
    let Some(path) = resolve_executable(cmd0, pool.cwd.as_deref(), path_env.as_deref()) else {
        return Err(ProgramError::NotInPath {
            at,
            program: cmd0.clone(),
            hint,
        });
    };
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(_) => return Err(ProgramError::Missing { at, path, hint }),
    };
    if !meta.is_file() {
        return Err(ProgramError::NotAFile { at, path });
    }
    let executable = meta.permissions().mode() & 0o111 != 0
        && (!pool.identity.is_empty()
            || nix::unistd::access(&path, nix::unistd::AccessFlags::X_OK).is_ok());
    if !executable {
        return Err(ProgramError::NotExecutable { at, path, hint });
    }
    Ok(path)
}

/// Words a user may type believing they are subcommands.
const NOT_SUBCOMMANDS: &[&str] = &["completions", "completion", "man", "help", "version", "run"];

/// Why the program may not be what the user meant, as "; ..." (or empty).
fn hint(cmd0: &str, command: &[String], classic: bool) -> String {
    let rest = command[1..].join(" ");
    let looks_like_config = [".toml", ".conf", ".cfg", ".ini"]
        .iter()
        .any(|e| cmd0.ends_with(e));
    if classic && looks_like_config {
        return format!("; to run the pools of a file, say `einhyrningsins --config {cmd0}`");
    }
    if cmd0.contains('/') {
        return String::new();
    }
    if cmd0 != "check" && distance(cmd0, "check") <= 2 {
        return format!("; did you mean `einhyrningsins check {rest}`?");
    }
    if cmd0.starts_with("completion") {
        return "; einhyrningsins has no such subcommand (its only one is `check FILE`): \
                completion scripts for bash, zsh and fish are in contrib/completions/ \
                (README, Install)"
            .to_string();
    }
    if NOT_SUBCOMMANDS.contains(&cmd0) {
        return format!(
            "; einhyrningsins has no `{cmd0}` subcommand (its only one is `check FILE`): \
             see `einhyrningsins --help` or man einhyrningsins"
        );
    }
    if protocol::command::lookup(cmd0).is_some() {
        return format!("; `{cmd0}` is a command for a running master: `einhyrningsinsctl {cmd0}`");
    }
    if Path::new(cmd0).is_file() {
        return format!("; a program in the working directory is written ./{cmd0}");
    }
    String::new()
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// What `check` warns about: programs that cannot be run, and paths the file
/// names that are not there. None of these is an error for a file checked on
/// another machine than the one it will run on.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut w: Vec<String> = programs(config).iter().map(|e| e.to_string()).collect();
    let at = |key: &str| {
        let loc = config.locate(key);
        if loc == key {
            key.to_string()
        } else {
            format!("{loc}: {key}")
        }
    };
    if let Some(dir) = config.control.socket.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if !dir.is_dir() {
            w.push(format!(
                "{}: the control socket's directory {} does not exist",
                at("control.socket"),
                dir.display()
            ));
        }
    }
    for (name, p) in &config.pools {
        if let Some(cwd) = &p.cwd {
            if !cwd.is_dir() {
                w.push(format!(
                    "{}: {} is not a directory",
                    at(&format!("pools.{name}.cwd")),
                    cwd.display()
                ));
            }
        }
        for (i, path) in p.watch.iter().enumerate() {
            if fs::symlink_metadata(path).is_err() {
                w.push(format!(
                    "{}: {} does not exist (it is watched for its creation)",
                    at(&format!("pools.{name}.watch[{i}]")),
                    path.display()
                ));
            }
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_is_levenshtein() {
        assert_eq!(distance("chek", "check"), 1);
        assert_eq!(distance("cehck", "check"), 2);
        assert_eq!(distance("check", "check"), 0);
        assert!(distance("server", "check") > 2);
    }

    #[test]
    fn hints_name_what_was_meant() {
        let cmd = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(hint("chek", &cmd(&["chek", "a.toml"]), true).contains("check a.toml"));
        assert!(hint("app.toml", &cmd(&["app.toml"]), true).contains("--config app.toml"));
        assert!(hint("completions", &cmd(&["completions", "bash"]), true)
            .contains("contrib/completions"));
        assert!(hint("status", &cmd(&["status"]), true).contains("einhyrningsinsctl status"));
        assert_eq!(hint("/opt/server", &cmd(&["/opt/server"]), true), "");
    }
}
