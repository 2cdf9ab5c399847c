//! einhorn's own flags that einhyrningsins(1) lacked, with their effect on a
//! real master: `--nice` (the workers' niceness), `--reexec-as` and
//! `--no-upgrade-check` (what `reexec` runs, unchecked), and the Ruby-only
//! `-p/--preload` and `--gc-before-fork` (accepted, ignored, said why). Every
//! einhorn flag's parsing is unit-tested in src/cli.rs.

use crate::support::*;

/// Field 19 of /proc/PID/stat: the niceness.
fn nice_of(pid: i32) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    after
        .split(' ')
        .nth(16)
        .expect("nice field")
        .parse()
        .expect("nice")
}

#[test]
fn nice_sets_the_workers_niceness_and_leaves_the_master_alone() {
    let own = nice_of(std::process::id() as i32);
    let level = (own + 3).min(19);
    let arg = level.to_string();
    let m = MasterBuilder::cli(&["-n", "2", "--nice", &arg, "--", "{worker}"]).start();
    let pids = m.wait_acked("main", 2);
    for pid in pids {
        assert_eq!(nice_of(pid), level, "worker {pid}");
    }
    assert_eq!(nice_of(m.pid()), own, "the master keeps its own niceness");
    // einhorn's MASTER:WORKER form: the workers get WORKER, with a warning.
    let m = MasterBuilder::cli(&["--nice", &format!("{own}:{level}"), "--", "{worker}"]).start();
    let pids = m.wait_acked("main", 1);
    assert_eq!(nice_of(pids[0]), level);
    assert!(m.log_text().contains("warning: --nice"), "{}", m.log_text());
}

#[test]
fn ruby_only_flags_start_the_master_with_a_warning() {
    let m = MasterBuilder::cli(&["-p", "app.rb", "--gc-before-fork", "--", "{worker}"]).start();
    m.wait_acked("main", 1);
    let log = m.log_text();
    assert!(
        log.contains("warning: -p/--preload app.rb: ignored"),
        "{log}"
    );
    assert!(log.contains("warning: --gc-before-fork: ignored"), "{log}");
}

#[test]
fn reexec_as_and_no_upgrade_check_shape_reexec() {
    let dir = TempDir::new("einhorn-reexec-as");
    let marker = dir.join("wrapper-ran");
    let wrapper = dir.join("wrapper.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\nexec {MASTER} \"$@\"\n",
            marker.display()
        ),
    )
    .expect("write wrapper");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let w = wrapper.to_string_lossy().into_owned();
    let m = MasterBuilder::cli(&[
        "--reexec-as",
        &w,
        "--no-upgrade-check",
        "-n",
        "1",
        "--",
        "{worker}",
    ])
    .start();
    let before = m.wait_acked("main", 1);
    let out = m.ctl(&["reexec"]);
    assert!(out.status.success(), "{out:?}");
    let ran = std::fs::read_to_string(&marker).expect("the wrapper ran");
    // Once, for the exec itself: no check run before it.
    assert_eq!(ran.lines().count(), 1, "{ran}");
    assert!(!ran.contains("--upgrade-check"), "{ran}");
    assert!(
        m.log_text().contains("no upgrade check"),
        "{}",
        m.log_text()
    );
    let st = m.state();
    assert_eq!(st["master"]["pid"], m.pid());
    assert_eq!(workers(&st, "main").len(), 1);
    assert!(all_pids(&st).contains(&before[0]));
}
