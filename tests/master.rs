//! The master with real workers: pools, child API, acks, respawn, shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

#[test]
fn two_pools_from_one_toml_serve_on_their_ports() {
    let (p1, p2) = (free_port(), free_port());
    let mut m = Master::with_config(
        "twopools",
        &format!(
            r#"
[control]
socket = "{{sock}}"
[pools.web]
command = ["{{worker}}"]
count = 2
binds = ["127.0.0.1:{p1},r"]
ack = "manual"
[pools.api]
command = ["{{worker}}"]
count = 1
binds = ["127.0.0.1:{p2},r"]
ack_timer = "100ms"
"#
        ),
    );
    let web = m.wait_acked("web", 2);
    let api = m.wait_acked("api", 1);
    let body = http_get(&format!("127.0.0.1:{p2}"), "/").expect("api answers");
    assert!(body.contains(&format!("pid={}", api[0])), "{body}");
    // Both web workers answer on the one shared port.
    let mut seen = std::collections::BTreeSet::new();
    wait_for(
        "both web workers to answer",
        Duration::from_secs(20),
        || {
            let body = http_get(&format!("127.0.0.1:{p1}"), "/").ok()?;
            let pid: i32 = body
                .split_whitespace()
                .next()?
                .strip_prefix("pid=")?
                .parse()
                .ok()?;
            seen.insert(pid);
            (seen.len() == 2).then_some(())
        },
    );
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), web);
    m.signal(libc::SIGINT);
    assert!(m.wait_exit(Duration::from_secs(20)).success());
    for pid in web.iter().chain(&api) {
        assert!(!alive(*pid), "worker {pid} outlived the master");
    }
}

// ---------------------------------------------------------------------------
// Helpers

/// The pid in a `/` answer: `pid=<pid> index=<i> version=<tag>`.
fn pid_of_body(body: &str) -> Option<i32> {
    body.split_whitespace()
        .next()?
        .strip_prefix("pid=")?
        .parse()
        .ok()
}

/// A process's environment, from /proc (exactly what exec gave it).
fn environ(pid: i32) -> std::collections::BTreeMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("read environ");
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Wait until every one of `pids` is gone (exited, or a zombie of someone else).
fn wait_all_dead(pids: &[i32], timeout: Duration) {
    wait_for(&format!("workers {pids:?} to exit"), timeout, || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
}

/// Serve on `addr` until `n` distinct worker pids have answered; the pids, sorted.
fn distinct_answering_pids(addr: &str, n: usize) -> Vec<i32> {
    let mut seen = std::collections::BTreeSet::new();
    wait_for(
        &format!("{n} distinct workers to answer on {addr}"),
        Duration::from_secs(20),
        || {
            let body = http_get(addr, "/").ok()?;
            seen.insert(pid_of_body(&body)?);
            (seen.len() == n).then_some(())
        },
    );
    seen.into_iter().collect()
}

// ---------------------------------------------------------------------------
// Classic command line

#[test]
fn classic_cli_two_workers_serve_with_their_arguments() {
    let port = free_port();
    let bind = format!("127.0.0.1:{port},r");
    let mut m = Master::with_args(
        "classic",
        &[
            "-n",
            "2",
            "-b",
            &bind,
            "--",
            "{worker}",
            "--version-tag",
            "x",
        ],
    );
    let pids = m.wait_acked("main", 2);
    let addr = format!("127.0.0.1:{port}");
    let body = http_get(&addr, "/").expect("a worker answers");
    assert!(body.contains("version=x"), "{body}");
    assert_eq!(distinct_answering_pids(&addr, 2), pids);
    let st = m.state();
    assert_eq!(st["pools"]["main"]["command"][1], "--version-tag");
    assert_eq!(st["master"]["pid"], m.pid());
    m.signal(libc::SIGINT);
    assert!(m.wait_exit(Duration::from_secs(20)).success());
    wait_all_dead(&pids, Duration::from_secs(5));
}

#[test]
fn classic_m_is_manual_ack_and_a_worker_acks_in_json() {
    let mut m = Master::with_args("classic-m", &["-m", "-n", "2", "{worker}"]);
    m.wait_acked("main", 2);
    let (status, err) = m.cmd("status", &[], None);
    assert!(!err && status.contains("manual ack"), "{status}");
    for pid in m.pids("main", "acked") {
        assert!(
            m.log_text().contains(&format!("worker pid {pid} acked")),
            "no ack logged for {pid}"
        );
    }
}

#[test]
fn manual_mode_worker_that_never_acks_is_killed_and_replaced() {
    let mut m = Master::with_config(
        "noack",
        r#"
[control]
socket = "{sock}"
[pools.slow]
command = ["{worker}", "--no-ack"]
ack = "manual"
ack_timeout = "300ms"
respawn_delay = "50ms"
"#,
    );
    let first = wait_for("a first worker", Duration::from_secs(10), || {
        m.pids("slow", "unacked").first().copied()
    });
    m.wait_log(
        &format!("worker pid {first} did not ack within 300ms: killing it"),
        Duration::from_secs(10),
    );
    m.wait_log(
        &format!("worker pid {first} exited (killed by SIGKILL)"),
        Duration::from_secs(10),
    );
    let second = wait_for("a replacement worker", Duration::from_secs(10), || {
        m.pids("slow", "unacked").into_iter().find(|p| *p != first)
    });
    assert!(!alive(first));
    assert!(alive(second));
    let st = m.state();
    assert!(st["pools"]["slow"]["consecutive_failures"].as_u64() >= Some(1));
    assert_eq!(st["pools"]["slow"]["acked"], 0);
}

// ---------------------------------------------------------------------------
// Child API

#[test]
fn workers_see_the_child_api_env_cwd_and_only_their_fds() {
    let (p1, p2) = (free_port(), free_port());
    let mut m = Master::with_config_env(
        "childapi",
        &format!(
            r#"
[control]
socket = "{{sock}}"
[pools.web]
command = ["{{worker}}"]
count = 2
binds = ["127.0.0.1:{p1},r", "127.0.0.1:{p2},r"]
drop_env = ["EHY_SECRET"]
env = {{ EHY_ADDED = "added" }}
cwd = "{{dir}}"
ack_timer = "100ms"
"#
        ),
        &[
            ("EHY_SECRET", "hunter2"),
            ("EHY_KEEP", "kept"),
            // A stale child-API variable, as if this master ran under another one.
            ("EINHORN_FD_7", "99"),
        ],
    );
    let pids = m.wait_acked("web", 2);
    let mut indexes = Vec::new();
    for &pid in &pids {
        let env = environ(pid);
        assert_eq!(env["EINHORN_FD_COUNT"], "2", "{env:?}");
        let (fd0, fd1) = (&env["EINHORN_FD_0"], &env["EINHORN_FD_1"]);
        assert_eq!(env["EINHORN_FDS"], format!("{fd0} {fd1}"));
        assert_eq!(
            env["EINHORN_SOCK_PATH"],
            m.sock.to_string_lossy().to_string()
        );
        assert_eq!(env["EINHORN_MASTER_PID"], m.pid().to_string());
        assert!(
            !env.contains_key("EINHORN_FD_7"),
            "stale var passed: {env:?}"
        );
        assert!(!env.contains_key("EINHORN_SOCK_FD"), "{env:?}");
        assert!(!env.contains_key("EHY_SECRET"), "drop_env ignored: {env:?}");
        assert_eq!(env["EHY_KEEP"], "kept");
        assert_eq!(env["EHY_ADDED"], "added");
        indexes.push(env["EINHORN_CHILD_INDEX"].clone());
        // The sockets are in bind order.
        let fd0: i32 = fd0.parse().expect("fd number");
        let fd1: i32 = fd1.parse().expect("fd number");
        assert_eq!(tcp_port_of_fd(pid, fd0), Some(p1));
        assert_eq!(tcp_port_of_fd(pid, fd1), Some(p2));
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd"),
            std::fs::canonicalize(m.dir.path()).expect("canonical dir")
        );
    }
    indexes.sort();
    assert_eq!(indexes, ["0", "1"]);
    // What the worker itself sees, over HTTP: the same values, and at startup only
    // stdin/stdout/stderr and the two sockets were open.
    let env = environ(pids[0]);
    let expected_fds = format!("0 1 2 {} {}\n", env["EINHORN_FD_0"], env["EINHORN_FD_1"]);
    for addr in [format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}")] {
        assert_eq!(http_get(&addr, "/fds").expect("/fds"), expected_fds);
        assert_eq!(http_get(&addr, "/env/EHY_ADDED").expect("env"), "added\n");
        assert!(
            http_get(&addr, "/env/EHY_SECRET").is_err(),
            "dropped var seen"
        );
        assert_eq!(
            http_get(&addr, "/env/EINHORN_MASTER_PID").expect("env"),
            format!("{}\n", m.pid())
        );
    }
}

#[test]
fn with_g_a_worker_also_gets_a_connected_control_fd_and_acks_on_it() {
    let port = free_port();
    let bind = format!("127.0.0.1:{port},r");
    let mut m = Master::with_args("sockfd", &["-g", "-m", "-b", &bind, "--", "{worker}"]);
    let pids = m.wait_acked("main", 1);
    let env = environ(pids[0]);
    let sock_fd: i32 = env["EINHORN_SOCK_FD"].parse().expect("EINHORN_SOCK_FD");
    let fd0: i32 = env["EINHORN_FD_0"].parse().expect("EINHORN_FD_0");
    let mut fds = [0, 1, 2, fd0, sock_fd];
    fds.sort_unstable();
    let expected = fds
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let addr = format!("127.0.0.1:{port}");
    assert_eq!(
        http_get(&addr, "/fds").expect("/fds"),
        format!("{expected}\n")
    );
    // It acked over that fd (manual mode), not over the socket path.
    m.wait_log(
        &format!("http_worker pid={} fds=[{fd0}] ack=fd:{sock_fd}", pids[0]),
        Duration::from_secs(5),
    );
}

// ---------------------------------------------------------------------------
// Acks

#[test]
fn timer_ack_comes_after_ack_timer_even_if_the_worker_acks_itself() {
    // Pool `quiet` never sends worker:ack; pool `eager` does at once, which in
    // timer mode is ignored (as einhorn): only surviving ack_timer counts.
    let mut m = Master::with_config(
        "timer",
        r#"
[control]
socket = "{sock}"
[pools.quiet]
command = ["{worker}", "--no-ack"]
ack_timer = "600ms"
[pools.eager]
command = ["{worker}"]
ack_timer = "600ms"
"#,
    );
    for pool in ["quiet", "eager"] {
        m.wait_acked(pool, 1);
        let w = m.state()["pools"][pool]["workers"][0].clone();
        let spawned = w["spawned_secs_ago"].as_f64().expect("spawned_secs_ago");
        let acked = w["acked_secs_ago"].as_f64().expect("acked_secs_ago");
        assert!(
            spawned - acked >= 0.599,
            "pool {pool}: acked {:.3}s after spawn",
            spawned - acked
        );
    }
}

#[test]
fn manual_ack_in_json_and_in_einhorn_yaml() {
    let mut m = Master::with_config(
        "manual",
        r#"
[control]
socket = "{sock}"
[pools.json]
command = ["{worker}"]
ack = "manual"
[pools.yaml]
command = ["{worker}", "--ack-yaml"]
ack = "manual"
"#,
    );
    let j = m.wait_acked("json", 1);
    let y = m.wait_acked("yaml", 1);
    let log = m.log_text();
    assert!(log.contains(&format!("http_worker pid={} fds=[] ack=path:", j[0])));
    assert!(log.contains(&format!("pid={} fds=[] ack=path:", y[0])) && log.contains("(yaml)"));
    assert!(!log.contains("unparsable"), "{log}");
}

// ---------------------------------------------------------------------------
// Crashes

#[test]
fn crashing_workers_respawn_with_growing_backoff_then_the_pool_gives_up() {
    let mut m = Master::with_config(
        "crash",
        r#"
[control]
socket = "{sock}"
[pools.crash]
command = ["{worker}", "--exit-after-ms", "20", "--exit-code", "3"]
ack_timer = "10s"
respawn_delay = "200ms"
retries = 4
"#,
    );
    // `retries = 4`: four failed attempts, then the pool gives up.
    let log = m.wait_log(
        "pool crash: giving up after 4 consecutive failed spawns (retries = 4)",
        Duration::from_secs(20),
    );
    for (delay, n) in [("200.0ms", 1), ("300.0ms", 2), ("450.0ms", 3)] {
        assert!(
            log.contains(&format!(
                "pool crash: respawning in {delay} ({n} consecutive failure(s))"
            )),
            "{log}"
        );
    }
    let spawned = log_times(&log, "pool crash: spawned worker pid");
    let died = log_times(&log, "died unexpectedly: exit status 3, before it acked");
    assert_eq!((spawned.len(), died.len()), (4, 4), "{log}");
    // Each respawn waited at least its backoff after the death (timestamps are
    // whole milliseconds), and the waits grow.
    let gaps: Vec<u64> = (0..3).map(|i| spawned[i + 1] - died[i]).collect();
    for (gap, min) in gaps.iter().zip([200, 300, 450]) {
        assert!(
            *gap + 1 >= min,
            "respawn after {gap}ms, backoff {min}ms: {gaps:?}"
        );
    }
    assert!(gaps[2] > gaps[0], "{gaps:?}");
    let st = m.state();
    let pool = &st["pools"]["crash"];
    assert_eq!(pool["gave_up"], true);
    assert_eq!(pool["consecutive_failures"], 4);
    assert!(pool["workers"].as_array().expect("workers").is_empty());
    assert!(
        pool["state"].as_str().unwrap_or("").contains("GAVE UP"),
        "{pool}"
    );
}

// ---------------------------------------------------------------------------
// Refusing to start

fn bad_config(text: &str) -> (TempDir, String) {
    let dir = TempDir::new("badcfg");
    let path = dir.join("app.toml");
    std::fs::write(&path, text).expect("write config");
    let p = path.to_string_lossy().into_owned();
    (dir, p)
}

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
        let (_dir, path) = bad_config(text);
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
    let (_dir, path) = bad_config(
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
    let (_cdir, path) = bad_config(&format!(
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
    let mut first = Master::with_args("live1", &["-m", "0.1", "--", "{worker}"]);
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
    let mut first = Master::with_args_at("stale1", &sock, &["-k", "-m", "0.1", "--", "{worker}"]);
    let w = first.wait_acked("main", 1);
    first.kill_hard();
    assert!(sock.exists(), "a SIGKILLed master cannot remove its socket");
    wait_all_dead(&w, Duration::from_secs(10));
    let mut second = Master::with_args_at("stale2", &sock, &["-m", "0.1", "--", "{worker}"]);
    second.wait_acked("main", 1);
    assert!(second.log_text().contains("replacing stale control socket"));
}

#[test]
fn pidfile_and_lockfile_refuse_a_second_master_naming_the_pid() {
    let mut first = Master::with_args(
        "pidlock",
        &[
            "-e",
            "{dir}/m.pid",
            "-f",
            "{dir}/m.lock",
            "-m",
            "0.1",
            "--",
            "{worker}",
        ],
    );
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
        let sock = other.join(&format!("ctl{flag}.sock"));
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

// ---------------------------------------------------------------------------
// Shutdown

/// Start two workers, shut down with `how`, check every worker was stopped with
/// `signal`, reaped by the master (its log says so), and is gone.
fn shutdown_leaves_nothing(tag: &str, signal: &str, how: impl FnOnce(&mut Master)) {
    let mut m = Master::with_args(
        tag,
        &[
            "-n",
            "2",
            "-m",
            "0.1",
            "-b",
            "127.0.0.1:0,r",
            "--",
            "{worker}",
        ],
    );
    let pids = m.wait_acked("main", 2);
    how(&mut m);
    let st = m.wait_exit(Duration::from_secs(20));
    assert!(st.success(), "{st}");
    let log = m.log_text();
    for pid in &pids {
        assert!(
            log.contains(&format!(
                "stopping worker pid {pid} with {signal} (shutdown)"
            )),
            "{log}"
        );
        assert!(log.contains(&format!("worker pid {pid} exited")), "{log}");
        assert!(!alive(*pid), "worker {pid} outlived the master");
    }
}

#[test]
fn sigint_drains_every_worker_with_usr2() {
    shutdown_leaves_nothing("int", "SIGUSR2", |m| m.signal(libc::SIGINT));
}

#[test]
fn sigusr2_drains_every_worker_with_usr2() {
    shutdown_leaves_nothing("usr2", "SIGUSR2", |m| m.signal(libc::SIGUSR2));
}

#[test]
fn sigterm_terms_every_worker() {
    shutdown_leaves_nothing("term", "SIGTERM", |m| m.signal(libc::SIGTERM));
}

#[test]
fn die_over_the_control_socket_drains() {
    shutdown_leaves_nothing("die", "SIGUSR2", |m| {
        let (msg, err) = m.cmd("die", &[], None);
        assert!(!err && msg.contains("Shutting down"), "{msg}");
    });
}

#[test]
fn a_worker_ignoring_its_stop_signal_is_killed_after_stop_timeout() {
    let mut m = Master::with_args(
        "ignore",
        &["-t", "0.3", "-m", "0.1", "--", "{worker}", "--ignore-stop"],
    );
    let pids = m.wait_acked("main", 1);
    let t0 = std::time::Instant::now();
    m.signal(libc::SIGINT);
    assert!(m.wait_exit(Duration::from_secs(20)).success());
    assert!(t0.elapsed() >= Duration::from_millis(300));
    let log = m.log_text();
    assert!(
        log.contains(&format!(
            "worker pid {} still alive 300ms after its stop signal: sending SIGKILL",
            pids[0]
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "worker pid {} exited (killed by SIGKILL)",
            pids[0]
        )),
        "{log}"
    );
    assert!(!alive(pids[0]));
}

#[test]
fn sigquit_quits_every_worker_and_exits_at_once() {
    // The worker ignores QUIT (an ignored signal stays ignored across exec), so the
    // master exiting while it still runs shows the master does not wait.
    let mut m = Master::with_args(
        "quit",
        &[
            "-m",
            "0.1",
            "--",
            "/bin/sh",
            "-c",
            "trap '' QUIT; exec sleep 60",
        ],
    );
    let pids = m.wait_acked("main", 1);
    // The trap is set once the shell has exec'd sleep.
    wait_for("the worker to exec sleep", Duration::from_secs(10), || {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", pids[0])).ok()?;
        (comm.trim() == "sleep").then_some(())
    });
    m.signal(libc::SIGQUIT);
    assert!(m.wait_exit(Duration::from_secs(5)).success());
    assert!(m
        .log_text()
        .contains(&format!("stopping worker pid {} with SIGQUIT", pids[0])));
    assert!(alive(pids[0]), "the master waited for its worker");
    // And a worker that honours QUIT is gone.
    let mut m = Master::with_args("quit2", &["-m", "0.1", "--", "{worker}"]);
    let pids = m.wait_acked("main", 1);
    m.signal(libc::SIGQUIT);
    assert!(m.wait_exit(Duration::from_secs(5)).success());
    wait_all_dead(&pids, Duration::from_secs(5));
}

#[test]
fn ttin_and_ttou_scale_the_pool() {
    let mut m = Master::with_args("ttin", &["-m", "0.1", "--", "{worker}"]);
    let one = m.wait_acked("main", 1);
    m.signal(libc::SIGTTIN);
    let two = m.wait_acked("main", 2);
    assert!(two.contains(&one[0]));
    assert_eq!(m.state()["pools"]["main"]["count"], 2);
    m.signal(libc::SIGTTOU);
    let left = m.wait_acked("main", 1);
    assert_eq!(m.state()["pools"]["main"]["count"], 1);
    let gone: Vec<i32> = two.into_iter().filter(|p| !left.contains(p)).collect();
    wait_all_dead(&gone, Duration::from_secs(5));
}

#[test]
fn with_k_workers_stop_when_the_master_is_killed() {
    let mut m = Master::with_args("pdeath", &["-k", "-n", "2", "-m", "0.1", "--", "{worker}"]);
    let pids = m.wait_acked("main", 2);
    m.kill_hard();
    wait_all_dead(&pids, Duration::from_secs(10));
    // They drained on their stop signal, not killed outright.
    for pid in &pids {
        m.wait_log(
            &format!("http_worker pid={pid} drained, exiting 0"),
            Duration::from_secs(5),
        );
    }
}

// ---------------------------------------------------------------------------
// Syslog

/// `[log] syslog = true` sends WARN and above to the syslog socket, INFO stays
/// on stderr only. A datagram socket plays the syslog daemon.
#[test]
fn syslog_gets_warnings_and_above_only() {
    let dir = TempDir::new("syslog-sock");
    let path = dir.join("syslog.sock");
    let daemon = std::os::unix::net::UnixDatagram::bind(&path).expect("bind fake syslog");
    daemon
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let _m = Master::with_config(
        "syslog",
        &format!(
            r#"
[control]
socket = "{{sock}}"
[log]
syslog = true
syslog_socket = "{}"
[pools.crashy]
command = ["{{worker}}", "--exit-after-ms", "10"]
respawn_delay = "10s"
"#,
            path.display()
        ),
    );
    let mut buf = [0u8; 4096];
    let n = daemon.recv(&mut buf).expect("a syslog message");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    // <28> = facility daemon (3) * 8 + severity warning (4).
    assert!(msg.starts_with("<28>"), "{msg}");
    assert!(msg.contains("died unexpectedly"), "{msg}");
    // The INFO lines before it (listening, spawned) never reached syslog: the
    // first datagram was the warning.
    assert!(!msg.contains("spawned worker"), "{msg}");
}
