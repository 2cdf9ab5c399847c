//! The configuration file at start (BRIEF §6): bad files are refused with the
//! file, line and key, `check` validates a good one without running anything.

use std::time::Duration;

use crate::support::*;

#[test]
fn bad_configs_exit_2_naming_file_line_and_key() {
    let cases = [
        (
            "[pools.web]\ncommand = [\"/bin/true\"]\nfrobnicate = 1\n",
            3,
            "pools.web.frobnicate",
        ),
        (
            "[pools.web]\ncommand = [\"/bin/true\"]\ncount = \"four\"\n",
            3,
            "pools.web.count",
        ),
        (
            "[pools.web]\ncommand = [\"/bin/true\"]\nbinds = [\"127.0.0.1:http\"]\n",
            3,
            "pools.web.binds[0]",
        ),
        (
            "[control]\nsocket = \"/tmp/x.sock\"\n[pools.web]\ncount = 2\n",
            3,
            "pools.web.command",
        ),
        (
            "[pools.a]\ncommand = [\"/bin/true\"]\nbinds = [\"127.0.0.1:9\"]\n\
             [pools.b]\ncommand = [\"/bin/true\"]\nbinds = [\"127.0.0.1:9\"]\n",
            6,
            "pools.b.binds[0]",
        ),
    ];
    for (text, line, key) in cases {
        let (_dir, path) = config_file(text);
        for args in [vec!["--config", &path], vec!["check", &path]] {
            let (st, out, err) = run_to_exit(MASTER, &args, Duration::from_secs(10));
            assert_eq!(st.code(), Some(2), "{args:?} {text:?}: {out}{err}");
            let at = format!("{path}:{line}:");
            assert!(
                err.lines().any(|l| l.contains(&at) && l.contains(key)),
                "{args:?}: expected {at} and {key} in:\n{err}"
            );
        }
    }
}

#[test]
fn check_prints_a_summary_of_a_good_file() {
    let (_dir, path) = config_file(
        "[control]\nsocket = \"/tmp/ehy-check.sock\"\n[pools.web]\ncommand = [\"./web\", \"--flag\"]\ncount = 3\nbinds = [\"127.0.0.1:8080,r\"]\n",
    );
    let (st, out, err) = run_to_exit(MASTER, &["check", &path], Duration::from_secs(10));
    assert!(st.success(), "{out}{err}");
    for needle in [
        "pool web:",
        "./web --flag",
        "127.0.0.1:8080",
        "/tmp/ehy-check.sock",
        "OK",
    ] {
        assert!(out.contains(needle), "{needle} missing from:\n{out}");
    }
    assert!(!std::path::Path::new("/tmp/ehy-check.sock").exists());
}
