//! einhyrningsins: a socket master that keeps pools of workers alive on shared
//! listening sockets and replaces them without downtime.
//!
//! Architecture in one paragraph: `cli` and `config` turn a command line or a TOML
//! file into one validated [`config::Config`]; `bind` turns address specs into
//! listening sockets; `pool` is a pure state machine (events in, actions out) that
//! decides which workers to spawn, signal and retire; `worker` does the fork/exec;
//! `master` runs the single mio event loop that feeds OS events to the pools and
//! carries out their actions; `control` speaks the einhorn-compatible control
//! protocol on a unix socket.

pub mod activation;
pub mod bind;
pub mod cli;
pub mod config;
pub mod control;
pub mod log;
pub mod master;
pub mod notify_ack;
pub mod pool;
pub mod sdnotify;
pub mod timer;
pub mod watch;
pub mod worker;

/// The control protocol as clients and tests see it: wire types and codec, and
/// the limits a client can run into.
pub mod protocol {
    pub use crate::control::codec::{
        decode, decode_reply, encode, encode_request, DecodeError, DecodeFailure, Encoding, Reply,
        Request, MAX_LINE,
    };
    pub use crate::control::server::MAX_CLIENTS;
}
