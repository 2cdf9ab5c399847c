//! The master's errors: [`MasterError`] is fatal (at start, or the event loop
//! itself failing) and maps to an exit status; [`RuntimeError`] is a refusal of
//! one command or worker message, told to whoever asked, and the master carries
//! on. Each names what it is about: the pool, the pid, the path.

use std::io;
use std::path::PathBuf;

use crate::bind::BindError;
use crate::config::{ConfigErrors, MAX_WORKERS};
use crate::control::server::ControlError;
use crate::pool::PoolError;

/// Fatal errors, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("{location}: pool {pool}: {source}")]
    Bind {
        pool: String,
        location: String,
        source: BindError,
    },
    #[error("lockfile {path} is held by pid {holder}: another master is running")]
    Locked { path: PathBuf, holder: String },
    #[error("pidfile {path} names pid {pid}, which is alive: another master is running")]
    PidfileTaken { path: PathBuf, pid: i32 },
    #[error("{path} is a symbolic link; refusing to {op} through it")]
    Symlink { op: &'static str, path: PathBuf },
    #[error("could not {op} {path}: {source}")]
    File {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("event loop: {0}")]
    Poll(io::Error),
    #[error("resuming after re-exec: {0}")]
    Resume(String),
    /// Users, groups and limits this master cannot grant (each line names
    /// the key and where it was written).
    #[error("{}", .0.join("\n"))]
    Identity(Vec<String>),
    /// A pool's user could not reach the control socket to ack.
    #[error("{0}")]
    Reach(String),
    /// `[metrics] listen` cannot be had (address in use, ...).
    #[error(transparent)]
    Metrics(crate::metrics::http::MetricsError),
}

impl MasterError {
    /// Exit status: 2 for what the operator's configuration asked and cannot be
    /// had (address in use, socket taken, another master), 1 for the rest.
    pub fn exit_code(&self) -> i32 {
        match self {
            MasterError::Bind { .. }
            | MasterError::Control(_)
            | MasterError::Identity(_)
            | MasterError::Reach(_)
            | MasterError::Metrics(_) => 2,
            MasterError::Locked { .. }
            | MasterError::PidfileTaken { .. }
            | MasterError::Symlink { .. } => 2,
            MasterError::File { .. } | MasterError::Poll(_) | MasterError::Resume(_) => 1,
        }
    }
}

/// A command or worker message the master refuses; it keeps running.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no pool named {name:?}; pools: {pools}")]
    UnknownPool { name: String, pools: String },
    #[error(
        "{command} changes a count: say which pool (einhyrningsinsctl --pool NAME \
         {command}; in a request, \"pool\": NAME); pools: {pools}"
    )]
    PoolNeeded {
        command: &'static str,
        pools: String,
    },
    #[error("the master runs no pools")]
    NoPools,
    #[error("pid {pid} is not a worker of this master")]
    NotAWorker { pid: i32 },
    #[error("the master is shutting down")]
    ShuttingDown,
    #[error("pool {pool}: {count} is more than {MAX_WORKERS} workers")]
    TooManyWorkers { pool: String, count: usize },
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// Every pool refused to upgrade; one reason per pool.
    #[error("{}", .0.join("; "))]
    UpgradeRefused(Vec<String>),
    #[error("pool {pool}: cannot roll back to version {version}: {why}; nothing was changed")]
    ReleaseGone {
        pool: String,
        version: u64,
        why: String,
    },
    #[error("{0}")]
    Reexec(String),
    #[error("no config file to reload: the master was started from the command line")]
    NoConfigFile,
    #[error("{0}")]
    Config(ConfigErrors),
    /// Users, groups or limits of the new file this master cannot grant.
    #[error("{}", .0.join("; "))]
    Identity(Vec<String>),
    #[error("{location}: pools.{pool}.binds[{index}]: {source}")]
    Bind {
        pool: String,
        index: usize,
        location: String,
        source: BindError,
    },
}
