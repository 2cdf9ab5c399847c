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
        (
            &["--max-unacked", "0", "./s"],
            "--max-unacked: must be at least 1",
        ),
        (&["-n", "200000", "./s"], "-n: 200000 is more than"),
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

/// A master started on a program that cannot be run used to crash-loop
/// forever holding its control socket. Each of these common mistakes is now
/// refused at once: exit 2, within a second, no socket left, and a hint.
#[test]
fn a_program_that_cannot_run_is_refused_at_start_with_a_hint() {
    let dir = TempDir::new("cli-mistakes");
    let toml = dir.join("app.toml");
    std::fs::write(&toml, "[pools.web]\ncommand = [\"./web\"]\n").expect("write");
    let toml = toml.to_string_lossy().into_owned();
    let sock = dir.join("ctl.sock");
    let sock = sock.to_string_lossy().into_owned();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["chek", &toml], "did you mean `einhyrningsins check"),
        (vec![&toml], "--config"),
        (vec!["completions", "bash"], "contrib/completions"),
        (vec!["status"], "einhyrningsinsctl status"),
        (
            vec!["-r", "0", "--", "/nonexistent/ehy-worker"],
            "/nonexistent/ehy-worker does not exist",
        ),
        (vec!["--", "ehy-no-such-program"], "not a file in PATH"),
        (vec!["--", "/etc"], "not a regular file"),
    ];
    for (args, needle) in cases {
        let mut argv = vec!["-d", sock.as_str()];
        argv.extend(&args);
        let t0 = std::time::Instant::now();
        let (st, out, err) = run_to_exit(MASTER, &argv, T);
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "{args:?}: {:?}",
            t0.elapsed()
        );
        assert_eq!(st.code(), Some(2), "{args:?}: {out}{err}");
        assert!(err.contains(needle), "{args:?}: {needle:?} missing:\n{err}");
        assert!(
            err.contains("PROGRAM"),
            "{args:?}: names what was typed:\n{err}"
        );
        assert!(
            !std::path::Path::new(&sock).exists(),
            "{args:?} left its socket"
        );
    }
    // A config file's pool is named with its file and line.
    let (st, _, err) = run_to_exit(MASTER, &["--config", &toml, "-d", &sock], T);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{toml}:2: pools.web.command")),
        "{err}"
    );
    assert!(!std::path::Path::new(&sock).exists());
}

#[test]
fn check_warns_about_what_is_missing_and_says_what_is_watched() {
    let dir = TempDir::new("cli-check-warn");
    let script = dir.join("app.py");
    std::fs::write(&script, "print(1)\n").expect("write");
    let toml = dir.join("app.toml");
    std::fs::write(
        &toml,
        format!(
            "[control]\nsocket = \"{d}/nodir/ctl.sock\"\n\
             [pools.web]\ncommand = [\"sh\", \"{d}/app.py\"]\ncwd = \"{d}/nocwd\"\n\
             env = {{ A = \"1 2\" }}\ndrop_env = [\"SECRET\"]\nwatch = [\"{d}/REVISION\"]\n\
             [pools.gone]\ncommand = [\"ehy-no-such-program\"]\n",
            d = dir.path().display()
        ),
    )
    .expect("write");
    let toml = toml.to_string_lossy().into_owned();
    let (st, out, err) = run_to_exit(MASTER, &["check", &toml], T);
    assert!(st.success(), "warnings are not errors: {out}{err}");
    let d = dir.path().display().to_string();
    for needle in [
        format!("{toml}:10: pools.gone.command: \"ehy-no-such-program\" is not a file in PATH"),
        format!("the control socket's directory {d}/nodir does not exist"),
        format!("pools.web.cwd: {d}/nocwd is not a directory"),
        format!("pools.web.watch[0]: {d}/REVISION does not exist"),
    ] {
        assert!(err.contains(&needle), "{needle:?} missing:\n{err}");
    }
    for needle in [
        format!("cwd:      {d}/nocwd"),
        "env:      \"A=1 2\"".to_string(),
        "drop_env: SECRET".to_string(),
        format!("watch:    {d}/REVISION"),
        format!("{d}/app.py (argument)"),
        format!("{d}/REVISION (watch)"),
    ] {
        assert!(out.contains(&needle), "{needle:?} missing:\n{out}");
    }
}
