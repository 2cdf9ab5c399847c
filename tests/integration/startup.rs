//! What a master refuses at start and what it takes over (BRIEF §8): a port in
//! use, a live control socket, a pidfile or lockfile held by another master; a
//! stale control socket is replaced.

use std::time::Duration;

use crate::support::*;

#[test]
fn port_in_use_exits_2_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = TempDir::new("inuse");
    let sock = dir.join("ctl.sock").to_string_lossy().into_owned();
    let worker = http_worker().to_string_lossy().into_owned();
    let bind = format!("{addr},r");
    let (st, out, err) = run_to_exit(
        MASTER,
        &["-d", &sock, "-b", &bind, "--", &worker],
        Duration::from_secs(10),
    );
    assert_eq!(st.code(), Some(2), "{out}{err}");
    assert!(err.contains(&addr), "{err}");
    assert!(!err.contains("spawned"), "a worker was started: {err}");
    // From a file, the message also says where the bind was written.
    let (_cdir, path) = config_file(&format!(
        "[control]\nsocket = \"{sock}\"\n[pools.web]\ncommand = [\"{worker}\"]\nbinds = [\"{bind}\"]\n"
    ));
    let (st, out, err) = run_to_exit(MASTER, &["--config", &path], Duration::from_secs(10));
    assert_eq!(st.code(), Some(2), "{out}{err}");
    assert!(
        err.contains(&addr) && err.contains(&format!("{path}:5")),
        "{err}"
    );
}

#[test]
fn a_second_master_on_a_live_control_socket_is_refused_naming_the_first() {
    let first = MasterBuilder::cli(&["-m", "0.1", "--", "{worker}"]).start();
    first.wait_acked("main", 1);
    let sock = first.sock.to_string_lossy().into_owned();
    let worker = http_worker().to_string_lossy().into_owned();
    let (st, out, err) = run_to_exit(
        MASTER,
        &["-d", &sock, "--", &worker],
        Duration::from_secs(10),
    );
    assert_eq!(st.code(), Some(2), "{out}{err}");
    assert!(err.contains(&format!("pid {}", first.pid())), "{err}");
    assert!(err.contains(&sock), "{err}");
    // The first one is untouched.
    first.wait_acked("main", 1);
}

#[test]
fn a_stale_control_socket_left_by_a_killed_master_is_replaced() {
    let shared = TempDir::new("stale");
    let sock = shared.join("ctl.sock");
    let mut first = MasterBuilder::cli(&["-k", "-m", "0.1", "--", "{worker}"])
        .socket(&sock)
        .start();
    let w = first.wait_acked("main", 1);
    first.kill_hard();
    assert!(sock.exists(), "a SIGKILLed master cannot remove its socket");
    wait_all_dead(&w, Duration::from_secs(10));
    let second = MasterBuilder::cli(&["-m", "0.1", "--", "{worker}"])
        .socket(&sock)
        .start();
    second.wait_acked("main", 1);
    assert!(second.log_text().contains("replacing stale control socket"));
}

#[test]
fn pidfile_and_lockfile_refuse_a_second_master_naming_the_pid() {
    let mut first = MasterBuilder::cli(&[
        "-e",
        "{dir}/m.pid",
        "-f",
        "{dir}/m.lock",
        "-m",
        "0.1",
        "--",
        "{worker}",
    ])
    .start();
    first.wait_acked("main", 1);
    let pid = first.pid().to_string();
    let pidfile = first.dir.join("m.pid");
    let lockfile = first.dir.join("m.lock");
    assert_eq!(
        std::fs::read_to_string(&pidfile).expect("pidfile").trim(),
        pid
    );
    let worker = http_worker().to_string_lossy().into_owned();
    let other = TempDir::new("pidlock2");
    for (flag, file) in [("-e", &pidfile), ("-f", &lockfile)] {
        let sock = other.join(format!("ctl{flag}.sock"));
        let (st, out, err) = run_to_exit(
            MASTER,
            &[
                "-d",
                &sock.to_string_lossy(),
                flag,
                &file.to_string_lossy(),
                "--",
                &worker,
            ],
            Duration::from_secs(10),
        );
        assert_eq!(st.code(), Some(2), "{flag}: {out}{err}");
        assert!(err.contains(&pid), "{flag}: {err}");
        assert!(err.contains(&*file.to_string_lossy()), "{flag}: {err}");
    }
    assert_eq!(
        std::fs::read_to_string(&pidfile).expect("pidfile").trim(),
        pid
    );
    first.signal(libc::SIGINT);
    assert!(first.wait_exit(Duration::from_secs(20)).success());
    assert!(!pidfile.exists(), "pidfile left behind");
}
