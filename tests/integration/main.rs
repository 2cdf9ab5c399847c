//! The integration tests: the real binaries, real workers, real sockets. One
//! test crate (one link, one binary), one module per behaviour, and the
//! harness they all share in `support/`.
//!
//! Run a subset by module: `cargo test --test integration upgrades::`.

// Tests may unwrap: a failed unwrap is a failed test (the crate denies it in src/).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod acks;
mod child_api;
mod cli;
mod config_file;
mod control_socket;
mod ctl_client;
mod ctl_shell;
mod einhorn_flags;
mod einhorn_wire_ruby;
mod events;
mod example_workers;
mod harness;
mod identity;
mod manuals;
mod metrics;
mod output;
mod pools_and_cli;
mod reexec;
mod reload;
mod respawn;
mod rollouts;
mod servers;
mod shutdown;
mod startup;
mod syslog;
mod systemd;
mod top;
mod upgrades;
mod watching;
