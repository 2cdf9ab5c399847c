//! einhyrningsins: a socket master that keeps pools of workers alive on shared
//! listening sockets and replaces them without downtime.
//!
//! The crate is a library only so that its two binaries share code; its public
//! surface is [`main`] (the master's entry point) and [`protocol`] (the wire
//! types, used by einhyrningsinsctl and by tests). Everything else is private to
//! the crate, so the compiler reports what nobody uses.
//!
//! The architecture, the dependency rule and the life of an event, a request, an
//! upgrade and a reload are in docs/architecture.md. In one paragraph: `cli` and
//! `config` turn a command line or a TOML file into one validated
//! [`config::Config`]; `pool` is a pure state machine (events in, actions out)
//! that decides which workers to spawn, signal and retire; `master` runs the
//! single mio event loop that feeds OS events to the pools and carries out their
//! actions, using `bind` (listening sockets), `spawn` (fork/exec), `control`
//! (the control socket), `systemd` (systemd's protocols), `watch` (the file
//! watcher thread), `timer` (the deadline queue) and `log`.

mod bind;
mod cli;
mod config;
mod control;
mod identity;
mod log;
mod master;
mod metrics;
mod output;
mod pool;
mod preflight;
mod procfs;
mod spawn;
mod systemd;
mod timer;
mod watch;

#[cfg(test)]
mod arch_tests;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(test)]
mod manual;
#[cfg(test)]
mod testutil;

pub use control::protocol;

use std::process::ExitCode;

/// The `einhyrningsins` binary: parse the command line or config file, take the
/// sockets, run the master loop. Exit status: 0 normal, 1 runtime failure, 2
/// usage, configuration, or a socket that cannot be had at start.
pub fn main() -> ExitCode {
    // A new image after `reexec` (src/master/reexec.rs): first, while there is
    // one thread, as it takes the state's variable out of the environment.
    if let Some(fd) = master::take_resume_fd() {
        return resume(fd);
    }
    // Hidden: `--exec-trampoline PROGRAM ARGS...` (src/systemd/activation.rs).
    if let Some(status) = systemd::activation::trampoline_main() {
        return ExitCode::from(status);
    }
    // Hidden: the new binary's check before a `reexec` (src/master/reexec.rs).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).and_then(|a| a.to_str()) == Some(master::CHECK_ARG) {
        return ExitCode::from(master::check_main(&args[2..]));
    }
    let config = match cli::parse_args_warn(std::env::args_os()) {
        Ok((cli::Invocation::Run(config), warnings)) => {
            for w in warnings {
                eprintln!("einhyrningsins: warning: {w}");
            }
            config
        }
        Ok((cli::Invocation::Check(path), _)) => return check(&path),
        Err(e) => {
            e.print();
            return code(e.exit_code());
        }
    };
    // A program that cannot be run would crash-loop forever, holding the
    // control socket: refuse it before anything starts.
    let problems = preflight::programs(&config);
    if !problems.is_empty() {
        for p in problems {
            eprintln!("einhyrningsins: {p}");
        }
        return ExitCode::from(2);
    }
    let name = config
        .master
        .command_name
        .clone()
        .unwrap_or_else(|| "einhyrningsins".into());
    if let Err(e) = log::init(&config.log, &name) {
        eprintln!("einhyrningsins: {e}");
        return ExitCode::from(1);
    }
    match master::run(config, master::Launch::from_env()) {
        Ok(status) => code(status),
        Err(e) => {
            ::log::error!("{e}");
            code(e.exit_code())
        }
    }
}

/// The new image after a re-exec: take over from the state the old one left.
fn resume(fd: Result<std::os::fd::RawFd, String>) -> ExitCode {
    let fd = match fd {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("einhyrningsins: cannot resume after re-exec: {e}");
            return ExitCode::from(1);
        }
    };
    match master::resume(fd) {
        Ok(status) => code(status),
        Err(e) => {
            ::log::error!("{e}");
            code(e.exit_code())
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::Config::load(path) {
        Ok(c) => {
            // Users, groups and limits: what this master could grant if it
            // ran now, as this user.
            if let Err(problems) = identity::resolve_config(&c) {
                for p in problems {
                    eprintln!("{p}");
                }
                return ExitCode::from(2);
            }
            print!("{}", c.summary());
            if c.watch.enabled {
                for (name, p) in &c.pools {
                    let files: Vec<String> = watch::pool_files(p)
                        .iter()
                        .map(|(f, why)| format!("{} ({why})", f.display()))
                        .collect();
                    if !files.is_empty() {
                        println!("watched for pool {name}: {}", files.join(", "));
                    }
                }
            }
            for w in preflight::warnings(&c) {
                eprintln!("warning: {w}");
            }
            println!("{}: OK", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(2)
        }
    }
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c).unwrap_or(1))
}
