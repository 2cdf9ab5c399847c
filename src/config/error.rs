//! Configuration errors (with file, line, column and dotted key) and where each
//! key was written.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

// ---------------------------------------------------------------------------
// Errors

/// One problem in a configuration, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    /// 1-based.
    pub line: Option<usize>,
    /// 1-based, in characters.
    pub column: Option<usize>,
    /// Dotted key, e.g. `pools.web.count` or `pools.web.binds[1]`; empty when the
    /// problem is not about one key (unreadable file, TOML syntax).
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => {
                write!(f, "{}:{line}", file.display())?;
                if let Some(col) = self.column {
                    write!(f, ":{col}")?;
                }
                f.write_str(": ")?;
            }
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, Some(line)) => {
                write!(f, "line {line}")?;
                if let Some(col) = self.column {
                    write!(f, ":{col}")?;
                }
                f.write_str(": ")?;
            }
            (None, None) => {}
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one configuration (never empty when returned as `Err`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![e])
    }
}

// ---------------------------------------------------------------------------
// Locations

/// Where each dotted key (`pools.web.binds[0]`) was written: (line, column),
/// both 1-based. Layout is not configuration, so this always compares equal.
#[derive(Debug, Clone, Default)]
pub struct Locations(BTreeMap<String, (usize, usize)>);

impl PartialEq for Locations {
    fn eq(&self, _: &Locations) -> bool {
        true
    }
}

impl Locations {
    pub fn insert(&mut self, key: impl Into<String>, line: usize, column: usize) {
        self.0.insert(key.into(), (line, column));
    }

    /// The exact key's position.
    pub fn get(&self, key: &str) -> Option<(usize, usize)> {
        self.0.get(key).copied()
    }

    /// The key's position, else its nearest recorded parent's (`pools.web.command`
    /// missing falls back to the `[pools.web]` header).
    pub fn find(&self, key: &str) -> Option<(usize, usize)> {
        let mut k = key;
        loop {
            if let Some(p) = self.get(k) {
                return Some(p);
            }
            let cut = match (k.rfind('.'), k.rfind('[')) {
                (Some(a), Some(b)) => a.max(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => return None,
            };
            k = &k[..cut];
        }
    }
}

// ---------------------------------------------------------------------------
// Flags

/// For a configuration built from the classic command line: the flag each
/// dotted key came from, as typed (`-n`, `-b 127.0.0.1:8080`), so that a
/// message names what the operator wrote rather than `pools.main.count`.
/// Like [`Locations`], it always compares equal.
#[derive(Debug, Clone, Default)]
pub struct Flags(BTreeMap<String, String>);

impl PartialEq for Flags {
    fn eq(&self, _: &Flags) -> bool {
        true
    }
}

impl Flags {
    pub fn insert(&mut self, key: impl Into<String>, flag: impl Into<String>) {
        self.0.insert(key.into(), flag.into());
    }

    /// The flag of the key, else of its nearest recorded parent.
    pub fn find(&self, key: &str) -> Option<&str> {
        let mut k = key;
        loop {
            if let Some(f) = self.0.get(k) {
                return Some(f);
            }
            let cut = k.rfind(['.', '['])?;
            k = &k[..cut];
        }
    }

    /// `errors` with each key replaced by the flag it came from, when known.
    pub fn rename(&self, mut errors: ConfigErrors) -> ConfigErrors {
        for e in &mut errors.0 {
            if let Some(f) = self.find(&e.key) {
                let f = f.to_string();
                // "address ... already bound by pools.main.binds[0]"
                for (k, v) in &self.0 {
                    if k.contains('[') {
                        e.message = e.message.replace(k, v);
                    }
                }
                for v in self.0.values() {
                    e.message = e.message.replace(&format!("{v} ({v})"), v);
                }
                e.message = e.message.trim_end().to_string();
                e.key = f;
            }
        }
        errors
    }
}
