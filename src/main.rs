//! `einhyrningsins`: see einhyrningsins(1) and `einhyrningsins --help`.

fn main() -> std::process::ExitCode {
    einhyrningsins::main()
}
