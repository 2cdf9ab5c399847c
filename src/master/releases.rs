//! What each version of a pool actually ran, so that `rollback` after a
//! finished upgrade can run the previous release again.
//!
//! With symlink-swap deploys (`releases/r1` -> `releases/r2` behind `current`),
//! the previous release's files are still on disk, but the pool's command now
//! names the new ones through the link. So when a version's first worker is
//! spawned, the master records the real files behind it: the executable (PATH
//! looked up, every symlink followed), the working directory, and every
//! argument that names an existing file, each with a fingerprint (device,
//! inode, size, mtime). A rollback runs exactly those paths, and only if every
//! one is still there and unchanged; otherwise it says what is gone or changed
//! and does nothing.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::config::PoolConfig;
use crate::watch::resolve_executable;

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Print {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn print(p: &Path) -> Option<Print> {
    let m = std::fs::metadata(p).ok()?;
    Some(Print {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    })
}

/// One version's resolved release.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Release {
    /// The executable, every symlink followed, and its fingerprint.
    exe: Option<(PathBuf, Print)>,
    /// The working directory, resolved.
    cwd: Option<PathBuf>,
    /// Arguments (by position) that named existing files: resolved path, print.
    files: Vec<(usize, PathBuf, Print)>,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
}

/// PATH as a pool's workers see it.
pub(super) fn path_env(spec: &PoolConfig) -> Option<OsString> {
    match spec.env.get("PATH") {
        Some(p) => Some(OsString::from(p)),
        None if spec.drop_env.iter().any(|v| v == "PATH") => None,
        None => std::env::var_os("PATH"),
    }
}

impl Release {
    /// Resolve what `spec` runs, now.
    pub(super) fn record(spec: &PoolConfig) -> Release {
        let cwd = spec
            .cwd
            .as_deref()
            .map(|c| std::fs::canonicalize(c).unwrap_or_else(|_| c.to_path_buf()));
        let exe = spec.command.first().and_then(|c0| {
            let found = resolve_executable(c0, spec.cwd.as_deref(), path_env(spec).as_deref())?;
            let real = std::fs::canonicalize(&found).ok()?;
            let p = print(&real)?;
            Some((real, p))
        });
        let mut files = Vec::new();
        for (i, a) in spec.command.iter().enumerate().skip(1) {
            if a.is_empty() || a.starts_with('-') {
                continue;
            }
            let path = match &spec.cwd {
                Some(c) if !Path::new(a).is_absolute() => c.join(a),
                _ => PathBuf::from(a),
            };
            if !path.is_file() {
                continue;
            }
            if let (Ok(real), Some(p)) = (std::fs::canonicalize(&path), print(&path)) {
                files.push((i, real, p));
            }
        }
        Release {
            exe,
            cwd,
            files,
            argv: spec.command.clone(),
            env: spec.env.clone(),
        }
    }

    /// The spec to run this release again: `spec` with the resolved paths, if
    /// every file is still there and unchanged.
    pub(super) fn spec_for(&self, spec: &PoolConfig) -> Result<Arc<PoolConfig>, String> {
        let mut s = spec.clone();
        if let Some((exe, p)) = &self.exe {
            if print(exe).as_ref() != Some(p) {
                return Err(gone_or_changed(exe));
            }
            if let Some(c0) = s.command.first_mut() {
                *c0 = exe.to_string_lossy().into_owned();
            }
        }
        for (i, path, p) in &self.files {
            if print(path).as_ref() != Some(p) {
                return Err(gone_or_changed(path));
            }
            if let Some(a) = s.command.get_mut(*i) {
                *a = path.to_string_lossy().into_owned();
            }
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.is_dir() {
                return Err(format!("its working directory {} is gone", cwd.display()));
            }
            s.cwd = Some(cwd.clone());
        }
        Ok(Arc::new(s))
    }

    pub(super) fn to_json(&self) -> Value {
        json!({
            "executable": self.exe.as_ref().map(|(p, _)| p.display().to_string()),
            "cwd": self.cwd.as_ref().map(|p| p.display().to_string()),
            "files": self.files.iter().map(|(_, p, _)| p.display().to_string()).collect::<Vec<_>>(),
            "argv": self.argv,
            "env": self.env,
        })
    }
}

fn gone_or_changed(p: &Path) -> String {
    if p.exists() {
        format!("{} has changed since that release ran", p.display())
    } else {
        format!("{} is gone", p.display())
    }
}

/// The releases the master remembers, by pool and version.
#[derive(Debug, Default)]
pub(super) struct Releases(HashMap<(String, u64), Release>);

impl Releases {
    /// Record `version` of `pool` the first time one of its workers starts.
    pub(super) fn note(&mut self, pool: &str, version: u64, spec: &PoolConfig) {
        self.0
            .entry((pool.to_string(), version))
            .or_insert_with(|| Release::record(spec));
    }

    pub(super) fn get(&self, pool: &str, version: u64) -> Option<&Release> {
        self.0.get(&(pool.to_string(), version))
    }

    /// Forget the versions of `pool` that are neither running nor wanted for
    /// a rollback.
    pub(super) fn keep_only(&mut self, pool: &str, keep: &[u64]) {
        self.0.retain(|(p, v), _| p != pool || keep.contains(v));
    }

    pub(super) fn forget_pool(&mut self, pool: &str) {
        self.0.retain(|(p, _), _| p != pool);
    }

    /// As a list (for the re-exec state: JSON keys must be strings).
    pub(super) fn to_list(&self) -> Vec<(String, u64, Release)> {
        self.0
            .iter()
            .map(|((p, v), r)| (p.clone(), *v, r.clone()))
            .collect()
    }

    pub(super) fn from_list(list: Vec<(String, u64, Release)>) -> Releases {
        Releases(list.into_iter().map(|(p, v, r)| ((p, v), r)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn a_symlinked_release_is_recorded_and_run_again_only_unchanged() {
        let d = TempDir::new("rel");
        for r in ["r1", "r2"] {
            std::fs::create_dir_all(d.join(r)).expect("mkdir");
            std::fs::write(d.join(r).join("app.py"), format!("print('{r}')")).expect("write");
        }
        let current = d.join("current");
        std::os::unix::fs::symlink(d.join("r1"), &current).expect("symlink");
        let mut spec = PoolConfig::new("web", vec!["/bin/sh".into(), "app.py".into()]);
        spec.cwd = Some(current.clone());
        let r1 = Release::record(&spec);
        // Deploy r2 by swapping the link.
        std::fs::remove_file(&current).expect("rm link");
        std::os::unix::fs::symlink(d.join("r2"), &current).expect("symlink");
        let again = r1.spec_for(&spec).expect("r1 is still there");
        let real_r1 = std::fs::canonicalize(d.join("r1")).expect("canonicalize");
        assert_eq!(again.cwd.as_deref(), Some(real_r1.as_path()));
        assert_eq!(again.command[1], real_r1.join("app.py").to_string_lossy());
        // A changed file of r1: the rollback says so.
        std::fs::write(d.join("r1").join("app.py"), "print('edited in place!')").expect("write");
        let err = r1.spec_for(&spec).expect_err("changed");
        assert!(err.contains("app.py") && err.contains("changed"), "{err}");
        // Gone: says so too.
        std::fs::remove_dir_all(d.join("r1")).expect("rm r1");
        let err = r1.spec_for(&spec).expect_err("gone");
        assert!(err.contains("gone"), "{err}");
    }
}
