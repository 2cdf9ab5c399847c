//! The one temp dir type of the test suite.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh, short temp dir, removed on drop. Short because unix socket paths
/// must stay under ~108 bytes: `$TMPDIR/ehy-<label>-<pid>-<n>`.
pub struct TempDir(PathBuf);

impl TempDir {
    /// `label` (cut to 16 characters) only helps a human find the dir.
    pub fn new(label: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let label: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(16)
            .collect();
        let p = std::env::temp_dir().join(format!(
            "ehy-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// A temp dir labelled with the running test's name.
    pub fn for_test() -> TempDir {
        TempDir::new(&test_label())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The running test's function name (libtest names each test's thread after
/// it), or "test" when not on a test thread.
pub fn test_label() -> String {
    std::thread::current()
        .name()
        .and_then(|n| n.rsplit("::").next())
        .filter(|n| *n != "main")
        .unwrap_or("test")
        .to_string()
}
