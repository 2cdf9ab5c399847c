//! The integration-test harness: runs the real `einhyrningsins` and
//! `einhyrningsinsctl` binaries with real workers in private temp dirs, over
//! real sockets.
//!
//! - [`MasterBuilder`] is the one way to start a master; [`Proc`] the one way
//!   to start anything else. Both tag what they start ([`procs`]), so that no
//!   process outlives its test, passing or failing.
//! - [`wait_for`] is the one way to wait: a condition polled with a deadline.
//!   Tests wait on `state` ([`Master::state`], [`Master::wait_acked`]...) and
//!   read the log only for what the log alone shows.

pub mod fds;
pub mod http;
pub mod load;
pub mod master;
pub mod procs;
pub mod prom;
pub mod rolls;
pub mod state;
pub mod tempdir;
pub mod wait;
pub mod wire;

pub use http::{distinct_answering_pids, free_port, http_get, http_get_status, pid_of_body};
pub use load::{read_response, Load, Sampler};
pub use master::{
    config_file, copy_worker, http_worker, touch, Master, MasterBuilder, CTL, MASTER,
};
pub use procs::{alive, environ, have, run_to_exit, wait_all_dead, Proc, Running};
pub use state::{all_pids, messages, request_at, versions, workers};
pub use tempdir::TempDir;
pub use wait::{holds_for, poll_until, wait_for};
pub use wire::{
    connect, exchange, json_reply, lossy, read_raw_line, read_to_eof, read_until_hangup, yaml_reply,
};
