//! The `einhyrningsins` binary's command line as a user meets it: `--help` and
//! `--version` succeed and say what they must, usage errors exit 2 with a message
//! naming the offending flag, and none of these starts anything.

use std::time::Duration;

use crate::support::*;

const T: Duration = Duration::from_secs(10);

#[test]
fn help_exits_0_and_documents_the_contract() {
    for flag in ["--help", "-h"] {
        let (st, out, err) = run_to_exit(MASTER, &[flag], T);
        assert!(st.success(), "{flag}: {st} {err}");
        assert!(err.is_empty(), "{flag} wrote to stderr: {err}");
        for needle in [
            "Usage: einhyrningsins [OPTIONS] [--] PROGRAM [ARGS...]",
            "--config FILE",
            "check FILE",
            "-n, --number",
            "-b, --bind",
            "-m, --manual",
            "-d, --socket-path",
            "--drop-env-var",
            "-k, --kill-children-on-exit",
        ] {
            assert!(out.contains(needle), "{flag}: {needle:?} missing:\n{out}");
        }
    }
    // The long help also carries the child API, the signals and the exit codes.
    let (_, out, _) = run_to_exit(MASTER, &["--help"], T);
    for needle in [
        "EINHORN_FD_COUNT",
        "EINHORN_SOCK_PATH",
        "EINHORN_MASTER_PID",
        "TTIN",
        "EXIT STATUS",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from --help");
    }
}

#[test]
fn version_exits_0_with_name_and_version() {
    for flag in ["--version", "-V"] {
        let (st, out, err) = run_to_exit(MASTER, &[flag], T);
        assert!(st.success(), "{flag}: {st} {err}");
        assert_eq!(
            out.trim(),
            format!("einhyrningsins {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn check_help_exits_0() {
    let (st, out, _) = run_to_exit(MASTER, &["check", "--help"], T);
    assert!(st.success());
    assert!(out.contains("Usage: einhyrningsins check <FILE>"), "{out}");
}

#[test]
fn flag_errors_exit_2_naming_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&["-n", "four", "./s"], "four"),
        (&["--frobnicate", "./s"], "--frobnicate"),
        (&["-b", "127.0.0.1:http", "./s"], "127.0.0.1:http"),
        (&["-b", "1.2.3.4:1,bogus", "./s"], "bogus"),
        (&["--stop-signal", "USR9", "./s"], "USR9"),
        (&["-s", "soon", "./s"], "soon"),
        (&["--upgrade", "yolo", "./s"], "yolo"),
        (&["--ack-mode", "sometimes", "./s"], "sometimes"),
        (&["-4", "-6", "./s"], "--ipv6-only"),
        (&["--max-unacked", "0", "./s"], "max_unacked"),
        (&[], "PROGRAM"),
        (&["-n", "3"], "PROGRAM"),
        (&["check"], "FILE"),
        (
            &["--config", "/nonexistent/ehy.toml"],
            "/nonexistent/ehy.toml",
        ),
        (&["--config", "x.toml", "-n", "2"], "-n/--number"),
    ];
    for (args, needle) in cases {
        let (st, out, err) = run_to_exit(MASTER, args, T);
        assert_eq!(st.code(), Some(2), "{args:?}: {out}{err}");
        assert!(err.contains(needle), "{args:?}: {needle:?} missing:\n{err}");
        assert!(out.is_empty(), "{args:?}: usage error on stdout: {out}");
    }
}

#[test]
fn a_missing_program_is_not_a_usage_error_but_a_logged_spawn_failure() {
    // The command line is valid; the master starts, says why the spawn failed
    // (naming the program), and with `-r 0` gives up instead of retrying forever.
    let m = MasterBuilder::cli(&["-r", "0", "--", "/nonexistent/ehy-worker"]).start();
    m.wait_state("the pool to give up", T, |st| {
        (st["pools"]["main"]["gave_up"] == true).then_some(())
    });
    // The log is the behaviour here: it tells the operator what went wrong.
    let log = m.log_text();
    assert!(log.contains("could not spawn worker"), "{log}");
    assert!(log.contains("giving up"), "{log}");
    assert!(log.contains("/nonexistent/ehy-worker"), "{log}");
    assert_eq!(m.state()["pools"]["main"]["gave_up"], true);
}
