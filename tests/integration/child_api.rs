//! The child API (BRIEF §2): what a worker finds in its environment, its cwd
//! and its open file descriptors.

use std::time::Duration;

use crate::support::*;

#[test]
fn workers_see_the_child_api_env_cwd_and_only_their_fds() {
    let (p1, p2) = (free_port(), free_port());
    let m = MasterBuilder::config(&format!(
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
    ))
    .envs(&[
        ("EHY_SECRET", "hunter2"),
        ("EHY_KEEP", "kept"),
        // A stale child-API variable, as if this master ran under another one.
        ("EINHORN_FD_7", "99"),
    ])
    .start();
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
    let m = MasterBuilder::cli(&["-g", "-m", "-b", &bind, "--", "{worker}"]).start();
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

/// The local TCP port of socket `fd` in process `pid` (via /proc), if it is a
/// TCP socket: which bind an inherited fd number really is.
fn tcp_port_of_fd(pid: i32, fd: i32) -> Option<u16> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let inode = link
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .to_string();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok()?;
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(9) == Some(&inode.as_str()) {
                let port = cols.get(1)?.rsplit(':').next()?;
                return u16::from_str_radix(port, 16).ok();
            }
        }
    }
    None
}
