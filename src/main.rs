//! `einhyrningsins`: parse the command line or config file, take the sockets,
//! run the master loop. Exit status: 0 normal, 1 runtime failure, 2 usage,
//! configuration, or a socket that cannot be had at start.

use std::process::ExitCode;

use einhyrningsins::cli::{self, Invocation};
use einhyrningsins::config::Config;
use einhyrningsins::master::Master;

fn main() -> ExitCode {
    // Hidden: `--exec-trampoline PROGRAM ARGS...` (src/activation.rs) execs PROGRAM.
    if let Some(status) = einhyrningsins::activation::trampoline_main() {
        return ExitCode::from(status);
    }
    let config = match cli::parse_args(std::env::args_os()) {
        Ok(Invocation::Run(config)) => config,
        Ok(Invocation::Check(path)) => return check(&path),
        Err(e) => {
            e.print();
            return code(e.exit_code());
        }
    };
    let name = config
        .master
        .command_name
        .clone()
        .unwrap_or_else(|| "einhyrningsins".into());
    if let Err(e) = einhyrningsins::log::init(&config.log, &name) {
        eprintln!("einhyrningsins: {e}");
        return ExitCode::from(1);
    }
    let master = match Master::new(config) {
        Ok(m) => m,
        Err(e) => {
            log::error!("{e}");
            return code(e.exit_code());
        }
    };
    match master.run() {
        Ok(status) => code(status),
        Err(e) => {
            log::error!("{e}");
            code(e.exit_code())
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            print!("{}", c.summary());
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
