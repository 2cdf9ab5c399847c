//! systemd and containers, with real processes: a fake service manager (a
//! test-side NOTIFY_SOCKET), socket activation with fds passed by LISTEN_*, workers
//! speaking systemd's socket and notify protocols, and PID-1 style reaping.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use crate::support::*;

/// A test-side NOTIFY_SOCKET: collects every datagram the master sends.
struct FakeSystemd {
    sock: UnixDatagram,
    msgs: Vec<String>,
}

impl FakeSystemd {
    fn bind(path: &Path) -> FakeSystemd {
        let sock = UnixDatagram::bind(path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        FakeSystemd {
            sock,
            msgs: Vec::new(),
        }
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            self.msgs
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }

    /// Wait for a datagram containing the line `line` (or starting with it when
    /// it ends with `=`), received after message index `from`; its index.
    fn wait_line(&mut self, from: usize, line: &str, timeout: Duration) -> usize {
        let found = poll_until(timeout, || {
            self.drain();
            self.msgs
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, m)| {
                    m.lines().any(|l| {
                        if line.ends_with('=') {
                            l.starts_with(line)
                        } else {
                            l == line
                        }
                    })
                })
                .map(|(i, _)| i)
        });
        found.unwrap_or_else(|| {
            panic!(
                "no {line:?} from the master within {timeout:?}; got {:?}",
                self.msgs
            )
        })
    }
}

/// The fd numbers of a process that are sockets (stdio and whatever the test
/// environment itself leaks are not).
fn sockets_of(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            target
                .to_string_lossy()
                .starts_with("socket:")
                .then(|| e.file_name().to_str()?.parse().ok())?
        })
        .collect();
    v.sort_unstable();
    v
}

/// The sockets a worker was started with: the fds it reports open at its start
/// (`/fds`) that are sockets (the test environment may leak other fds).
fn passed_sockets(addr: &str) -> Vec<i32> {
    let (_, body) = http_get_status(addr, "/fds").expect("worker answers /fds");
    let (_, pid) = http_get_status(addr, "/").expect("worker answers /");
    let pid: i32 = pid
        .split_whitespace()
        .next()
        .and_then(|p| p.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .expect("pid= in the answer");
    // Both answers may come from different workers; they are alike.
    let socks = sockets_of(pid);
    body.split_whitespace()
        .filter_map(|f| f.parse().ok())
        .filter(|f| socks.contains(f))
        .collect()
}

#[test]
fn master_notifies_ready_status_watchdog_reload_and_stopping() {
    let port = free_port();
    let b = MasterBuilder::config(&format!(
        r#"
[control]
socket = "{{sock}}"
[pools.web]
# Slot 0 acks, slot 1 never does: the start makes progress but does not finish.
command = ["sh", "-c", 'if [ "$EINHORN_CHILD_INDEX" = 1 ]; then exec "$0" --no-ack; else exec "$0"; fi', "{{worker}}"]
count = 2
ack = "manual"
binds = ["127.0.0.1:{port},r"]
"#
    ));
    let mut sd = FakeSystemd::bind(&b.dir().join("notify"));
    let mut m = b
        .env("NOTIFY_SOCKET", "{dir}/notify")
        .env("WATCHDOG_USEC", "400000")
        .start();
    let t = Duration::from_secs(20);

    // One worker acked, one to go: the start is progressing, so it asks for time.
    let extend = sd.wait_line(0, "EXTEND_TIMEOUT_USEC=", t);
    sd.drain();
    assert!(
        !sd.msgs.iter().any(|m| m.contains("READY=1")),
        "READY before every worker acked: {:?}",
        sd.msgs
    );
    // With one worker wanted, the pool is complete: the service is ready.
    let (msg, err) = m.cmd("set_workers", &["1"], Some("web"));
    assert!(!err, "{msg}");
    let ready = sd.wait_line(extend, "READY=1", t);
    assert!(
        sd.msgs[ready].contains("STATUS=web 1/1 acked"),
        "{:?}",
        sd.msgs
    );
    m.wait_acked("web", 1);
    // READY=1 only once at start.
    let w1 = sd.wait_line(ready + 1, "WATCHDOG=1", t);
    sd.wait_line(w1 + 1, "WATCHDOG=1", t);
    assert_eq!(
        sd.msgs
            .iter()
            .filter(|m| m.lines().any(|l| l == "READY=1"))
            .count(),
        1,
        "{:?}",
        sd.msgs
    );

    // Workers never see the master's service-manager variables.
    let addr = format!("127.0.0.1:{port}");
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC"] {
        let (code, body) = http_get_status(&addr, &format!("/env/{var}")).expect("worker answers");
        assert_eq!(code, 404, "{var} leaked into a worker: {body}");
    }

    // A reload: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
    let before = sd.msgs.len();
    m.signal(libc::SIGHUP);
    let reloading = sd.wait_line(before, "RELOADING=1", t);
    assert!(
        sd.msgs[reloading].contains("MONOTONIC_USEC="),
        "{:?}",
        sd.msgs[reloading]
    );
    sd.wait_line(reloading + 1, "READY=1", t);
    // STATUS follows the upgrade HUP started.
    let status = sd.wait_line(reloading + 1, "STATUS=web 1/1 acked, upgrading", t);
    m.signal(libc::SIGINT);
    sd.wait_line(status, "STOPPING=1", t);
    assert!(m.wait_exit(t).success());
}

/// A master started the way systemd starts a socket-activated service: the
/// listeners at fds 3.., LISTEN_FDS/LISTEN_FDNAMES set, and LISTEN_PID equal to
/// the master's pid (a shell sets it to its own pid, then execs the master, which
/// keeps the pid).
fn activated_master(toml: &str, fds: &[std::os::fd::RawFd], names: &str) -> Master {
    MasterBuilder::config(toml)
        .wrapper(&["sh", "-c", r#"LISTEN_PID=$$ exec "$@""#, "sh"])
        .env("LISTEN_FDS", &fds.len().to_string())
        .env("LISTEN_FDNAMES", names)
        .listen_fds(fds)
        .start()
}

#[test]
fn socket_activation_takes_inherited_fds_and_a_restart_loses_no_connection() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    let web = TcpListener::bind("127.0.0.1:0").expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").expect("bind");
    let stray = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = web.local_addr().expect("addr").port();
    let admin_port = admin.local_addr().expect("addr").port();
    let toml = format!(
        r#"
[control]
socket = "{{sock}}"
[pools.web]
command = ["{{worker}}"]
count = 2
ack_timer = "100ms"
binds = ["127.0.0.1:{port},r", "127.0.0.1:0,name=admin"]
"#
    );
    let fds = [web.as_raw_fd(), admin.as_raw_fd(), stray.as_raw_fd()];
    let names = "web:admin:stray";
    let mut m1 = activated_master(&toml, &fds, names);
    m1.wait_acked("web", 2);
    let log = m1.log_text();
    assert!(log.contains("taken from inherited fd 3"), "{log}");
    assert!(log.contains("taken from inherited fd 4"), "{log}");
    assert!(log.contains("matches no bind; closing it"), "{log}");
    // The admin bind said port 0 but got the inherited socket by its name.
    let (code, _) =
        http_get_status(&format!("127.0.0.1:{admin_port}"), "/").expect("admin answers");
    assert_eq!(code, 200);
    assert_eq!(
        passed_sockets(&format!("127.0.0.1:{port}")),
        vec![3, 4],
        "a worker is given exactly its two sockets, at the master's fd numbers"
    );

    // Clients keep going while the master is replaced.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok_count = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let client = {
        let stop = stop.clone();
        let ok_count = ok_count.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed, mut idle_closed) = (0u32, Vec::new(), 0u32);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                // connect() must always succeed: the socket never stops listening.
                let mut s = match TcpStream::connect(("127.0.0.1", port)) {
                    Ok(s) => s,
                    Err(e) => {
                        failed.push(format!("connect: {e}"));
                        continue;
                    }
                };
                let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                let mut resp = String::new();
                let sent = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let read = s.read_to_string(&mut resp);
                if resp.starts_with("HTTP/1.1 200") {
                    ok += 1;
                    ok_count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                } else if sent.is_err() || (read.is_ok() && resp.is_empty()) {
                    // Accepted by a worker that began draining before the request
                    // bytes arrived: the example worker closes such idle
                    // connections (HTTP's idle-close race, which clients retry).
                    // Not a lost connection of the master's making.
                    idle_closed += 1;
                } else {
                    failed.push(format!("{sent:?} {read:?} {resp:?}"));
                }
            }
            (ok, failed, idle_closed)
        })
    };
    m1.signal(libc::SIGINT);
    assert!(m1.wait_exit(Duration::from_secs(20)).success());
    // No master, no worker: the held socket still accepts into its backlog.
    let mut pending = TcpStream::connect(("127.0.0.1", port)).expect("connect while down");
    pending
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    pending
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send while down");

    let mut m2 = activated_master(&toml, &fds, names);
    m2.wait_acked("web", 2);
    let mut resp = String::new();
    pending
        .read_to_string(&mut resp)
        .expect("answer after restart");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}");
    // A few more requests through the new master, then stop the client.
    let seen = ok_count.load(std::sync::atomic::Ordering::SeqCst);
    wait_for(
        "requests through the new master",
        Duration::from_secs(20),
        || (ok_count.load(std::sync::atomic::Ordering::SeqCst) >= seen + 3).then_some(()),
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed, idle_closed) = client.join().expect("client thread");
    assert!(failed.is_empty(), "refused or failed requests: {failed:?}");
    assert!(ok > 2, "only {ok} requests went through");
    assert!(
        idle_closed <= 2,
        "{idle_closed} idle closes: more than the drains explain"
    );
    m2.signal(libc::SIGINT);
    assert!(m2.wait_exit(Duration::from_secs(20)).success());
}

#[test]
fn systemd_protocol_worker_gets_fds_from_3_and_its_own_listen_pid() {
    let (p1, p2) = (free_port(), free_port());
    let mut m = MasterBuilder::config(&format!(
        r#"
[control]
socket = "{{sock}}"
[pools.sd]
command = ["{{worker}}"]
count = 1
socket_protocol = ["systemd"]
binds = ["127.0.0.1:{p1},r", "127.0.0.1:{p2},r,name=admin"]
[pools.both]
command = ["{{worker}}"]
count = 1
socket_protocol = ["einhorn", "systemd"]
binds = ["127.0.0.1:0"]
"#
    ))
    .start();
    let pid = m.wait_acked("sd", 1)[0];
    let a = format!("127.0.0.1:{p1}");
    let env = |name: &str| http_get_status(&a, &format!("/env/{name}")).expect("worker answers");
    // The worker found its sockets through LISTEN_* alone: LISTEN_PID is its pid.
    assert_eq!(env("LISTEN_PID"), (200, format!("{pid}\n")));
    assert_eq!(env("LISTEN_FDS"), (200, "2\n".into()));
    assert_eq!(env("LISTEN_FDNAMES"), (200, "sd:admin\n".into()));
    assert_eq!(env("EINHORN_FD_COUNT").0, 404, "systemd-only pool");
    assert_eq!(passed_sockets(&a), vec![3, 4]);
    let (code, body) = http_get_status(&format!("127.0.0.1:{p2}"), "/").expect("fd 4 serves");
    assert_eq!(code, 200);
    assert!(body.starts_with(&format!("pid={pid} ")), "{body}");

    // Both protocols: the einhorn variables name the same fds, 3...
    let both = m.wait_acked("both", 1)[0];
    let out = std::fs::read_to_string(format!("/proc/{both}/environ")).expect("environ");
    let vars: Vec<&str> = out.split('\0').collect();
    assert!(vars.contains(&"EINHORN_FD_0=3"), "{vars:?}");
    assert!(vars.contains(&"LISTEN_FDS=1"), "{vars:?}");
    assert!(
        vars.contains(&format!("LISTEN_PID={both}").as_str()),
        "{vars:?}"
    );
    m.signal(libc::SIGINT);
    assert!(m.wait_exit(Duration::from_secs(20)).success());
}

/// A worker written for systemd's Type=notify, in Python: it speaks only
/// NOTIFY_SOCKET. Its behaviour is steered by files in the test dir.
const NOTIFY_WORKER: &str = r#"
import os, socket, sys, time
d = sys.argv[1]
me = os.getpid()
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
def send(m):
    s.sendto(m.encode(), addr)
def wait_file(name):
    while not os.path.exists(os.path.join(d, name)):
        time.sleep(0.01)
# A child process tries to ack for us: the kernel stamps its own pid.
child = os.fork()
if child == 0:
    send("READY=1")
    os._exit(0)
os.waitpid(child, 0)
send("STATUS=child sent")
wait_file("go")
send("READY=1\nSTATUS=serving")
while True:
    if os.path.exists(os.path.join(d, "stop-%d" % me)):
        send("STOPPING=1")
        time.sleep(30)
    if not os.path.exists(os.path.join(d, "hang-%d" % me)):
        send("WATCHDOG=1")
    time.sleep(0.05)
"#;

#[test]
fn notify_acking_worker_ready_status_watchdog_and_stopping() {
    let m = MasterBuilder::config(
        r#"
[control]
socket = "{sock}"
[pools.n]
command = ["python3", "{dir}/worker.py", "{dir}"]
count = 1
ack = "notify"
ack_timeout = "20s"
watchdog = "500ms"
stop_timeout = "2s"
"#,
    )
    .files(&[("worker.py", NOTIFY_WORKER)]);
    let d = m.dir().to_path_buf();
    let mut m = m.start();
    let t = Duration::from_secs(30);
    let worker = |m: &Master| -> Option<serde_json::Value> {
        m.state()["pools"]["n"]["workers"]
            .as_array()?
            .iter()
            .find(|w| w["state"] != "draining")
            .cloned()
    };
    // The child's READY=1 came first on the socket; once the parent's STATUS is
    // seen, it has been handled: rejected, the worker is still unacked.
    let w = wait_for("STATUS=child sent", t, || {
        worker(&m).filter(|w| w["notify_status"] == "child sent")
    });
    assert_eq!(
        w["state"], "unacked",
        "another pid acked for the worker: {w}"
    );
    let pid = w["pid"].as_i64().expect("pid");

    std::fs::write(d.join("go"), "").expect("go");
    let w = wait_for("READY=1 to ack the worker", t, || {
        worker(&m).filter(|w| w["state"] == "acked" && w["notify_status"] == "serving")
    });
    assert_eq!(w["pid"].as_i64(), Some(pid));
    let (msg, _) = m.cmd("status", &[], None);
    assert!(msg.contains("status: serving"), "{msg}");

    // It stops pinging: killed and replaced.
    std::fs::write(d.join(format!("hang-{pid}")), "").expect("hang");
    let w = wait_for("a replacement after the watchdog miss", t, || {
        worker(&m).filter(|w| w["state"] == "acked" && w["pid"].as_i64() != Some(pid))
    });
    assert!(!alive(pid as i32), "the hung worker is still alive");
    assert!(
        m.log_text().contains("sent no WATCHDOG=1"),
        "{}",
        m.log_text()
    );
    let pid2 = w["pid"].as_i64().expect("pid");

    // STOPPING=1: draining at once, a replacement starts.
    std::fs::write(d.join(format!("stop-{pid2}")), "").expect("stop");
    wait_for("the stopping worker to be draining", t, || {
        let st = m.state();
        let ws = st["pools"]["n"]["workers"].as_array()?.clone();
        ws.iter()
            .any(|w| {
                w["pid"].as_i64() == Some(pid2)
                    && w["state"] == "draining"
                    && w["stop_reason"] == "worker said STOPPING=1"
            })
            .then_some(())
    });
    wait_for("a replacement for the stopping worker", t, || {
        worker(&m).filter(|w| w["state"] == "acked" && w["pid"].as_i64() != Some(pid2))
    });
    m.signal(libc::SIGTERM);
    assert!(m.wait_exit(t).success());
}

#[test]
fn check_command_is_a_readiness_probe() {
    let m = MasterBuilder::config(
        r#"
[control]
socket = "{sock}"
[pools.web]
command = ["{worker}"]
count = 1
ack = "manual"
[pools.slow]
command = ["{worker}", "--no-ack"]
count = 1
ack = "manual"
"#,
    )
    .start();
    let t = Duration::from_secs(20);
    // web acks, slow never does: not ready.
    wait_for("web to ack", t, || {
        let (msg, _) = m.cmd("check", &[], None);
        msg.contains("web 1/1 acked").then_some(())
    });
    let out = m.ctl(&["-e", "check"]);
    assert!(!out.status.success(), "ready with slow unacked: {out:?}");
    let (msg, err) = m.cmd("check", &[], None);
    assert!(err && msg.starts_with("not ready: "), "{msg}");
    let (msg, err) = m.cmd("set_workers", &["0"], Some("slow"));
    assert!(!err, "{msg}");
    wait_for("check to pass", t, || {
        m.ctl(&["-e", "check"]).status.success().then_some(())
    });
}

/// Zombie children of `parent`.
fn zombies_of(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                let rest: Vec<&str> = s
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect();
                rest.first() == Some(&"Z") && rest.get(1) == Some(&parent.to_string().as_str())
            })
        })
        .collect()
}

#[test]
fn as_pid_1_in_a_pid_namespace_orphans_are_reaped_quietly() {
    let probe = Proc::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: unshare --pid --fork --mount-proc is not allowed here");
        return;
    }
    // --kill-child: if the test dies, the namespace's PID 1 and all in it die too.
    let mut m = MasterBuilder::config(
        r#"
[control]
socket = "{sock}"
[log]
level = "debug"
[pools.w]
# The subshell starts a short sleep and exits: the sleep is orphaned, re-parented
# to PID 1 (the master), and exits in turn.
command = ["sh", "-c", "for i in 1 2 3; do ( sleep 0.1 & ); done; exec sleep 1000"]
count = 2
ack_timer = "100ms"
"#,
    )
    .wrapper(&["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"])
    .start();
    // Worker pids are namespace pids here, only compared with each other.
    let state = |m: &Master| m.state();
    let acked = |m: &Master| {
        let st = state(m);
        st["pools"]["w"]["workers"]
            .as_array()
            .is_some_and(|ws| ws.len() == 2 && ws.iter().all(|w| w["state"] == "acked"))
    };
    wait_for("2 acked workers", Duration::from_secs(20), || {
        acked(&m).then_some(())
    });
    let pids_in_ns = |m: &Master| {
        let mut v = all_pids(&state(m));
        v.sort_unstable();
        v
    };
    let workers_before = pids_in_ns(&m);
    let unshare_pid = m.pid();
    let master_host_pid = wait_for("the master under unshare", Duration::from_secs(10), || {
        std::fs::read_dir("/proc").ok()?.find_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid: i32 = s
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == unshare_pid).then_some(pid)
        })
    });
    let st = state(&m);
    assert_eq!(
        st["master"]["pid"].as_i64(),
        Some(1),
        "the master is PID 1 in its namespace: {st}"
    );
    // Six orphans were re-parented to the master and exited: all reaped, none
    // taken for a worker.
    // Only the (debug) log shows the orphans being reaped.
    wait_for(
        "orphans reaped (debug log)",
        Duration::from_secs(20),
        || (m.log_text().matches("not a worker").count() >= 6).then_some(()),
    );
    assert!(zombies_of(master_host_pid).is_empty());
    // No orphan was taken for a worker: the same two workers, both acked, and
    // no failure counted.
    assert!(acked(&m));
    assert_eq!(pids_in_ns(&m), workers_before);
    assert_eq!(state(&m)["pools"]["w"]["consecutive_failures"], 0);
    // SIGTERM to PID 1 (as a container runtime does): a graceful stop.
    unsafe {
        libc::kill(master_host_pid, libc::SIGTERM);
    }
    assert!(m.wait_exit(Duration::from_secs(20)).success());
}

/// systemd's own `systemd-socket-activate` (Debian package systemd) holds the
/// port and execs the master on the first connection, passing the socket with
/// LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES: that connection, made before the master
/// existed, waits in the backlog and is answered by a worker. Skipped with a
/// note where the tool is not installed (.ci/run installs it).
#[test]
fn systemd_socket_activate_hands_the_master_its_socket() {
    if Proc::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("note: systemd-socket-activate not installed; skipping");
        return;
    }
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // It passes on only the variables named by -E: the tag must be one.
    let mut m = MasterBuilder::config(&format!(
        r#"
[control]
socket = "{{sock}}"
[pools.web]
command = ["{{worker}}"]
count = 2
binds = ["127.0.0.1:{port},r,name=http"]
"#
    ))
    .wrapper(&[
        "systemd-socket-activate",
        "-l",
        &addr,
        "--fdname=http",
        "-E",
        procs::TAG_VAR,
    ])
    .lazy()
    .start();
    // systemd-socket-activate listens first; the master is not running yet.
    let body = wait_for("the held port to answer", Duration::from_secs(20), || {
        http_get(&addr, "/").ok()
    });
    assert!(body.starts_with("pid="), "{body}");
    let text = m.log_text();
    assert!(text.contains("taken from inherited fd 3"), "{text}");
    // The activator exec'd the master: same pid. Stop it gracefully.
    m.signal(libc::SIGINT);
    let status = m.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status}");
}

/// The contrib units pass `systemd-analyze verify` with no warning (an unknown
/// key is ignored by systemd, silently, at run time). The ExecStart binary is
/// pointed at the built master, since /usr/local/bin has none here.
#[test]
fn contrib_units_verify_cleanly() {
    if Proc::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("note: systemd-analyze not installed; skipping");
        return;
    }
    let dir = TempDir::new("sd-units");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let mut units = Vec::new();
    for entry in std::fs::read_dir(&src).expect("contrib/systemd") {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path)
            .expect("unit text")
            .replace("/usr/local/bin/einhyrningsins", MASTER);
        std::fs::write(dir.join(&name), text).expect("write unit");
        units.push(dir.join(&name));
    }
    assert!(units.len() >= 3, "{units:?}");
    let out = Proc::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(&units)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}

/// A Type=notify worker in Python: READY=1 at once, then WATCHDOG=1 every 50 ms.
const WATCHDOG_WORKER: &str = r#"
import os, socket, time
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", addr)
while True:
    s.sendto(b"WATCHDOG=1", addr)
    time.sleep(0.05)
"#;

fn notify_then(ack: &str) -> String {
    format!(
        r#"
[control]
socket = "{{sock}}"
[pools.n]
command = ["python3", "{{dir}}/{}"]
count = 1
ack = "{ack}"
ack_timeout = "60s"
{}
"#,
        if ack == "notify" { "nw.py" } else { "slow.sh" },
        if ack == "notify" {
            "watchdog = \"300ms\""
        } else {
            ""
        }
    )
}

/// The notify socket used to accept messages only when the pool's *current*
/// spec said `ack = "notify"`. During a roll from notify to manual ack, the old
/// workers' WATCHDOG=1 pings were dropped and the old workers, still serving,
/// were SIGKILLed by their watchdog before their replacements were ready.
#[test]
fn old_notify_workers_keep_their_watchdog_during_a_roll_to_manual_ack() {
    let m = MasterBuilder::config(&notify_then("notify"))
        .files(&[
            ("nw.py", WATCHDOG_WORKER),
            // The new version never acks: the roll stays in progress.
            ("slow.sh", "import time\ntime.sleep(60)\n"),
        ])
        .start();
    let old = m.wait_acked("n", 1);
    m.write_config(&notify_then("manual"));
    let (msg, err) = m.cmd("reload", &[], None);
    assert!(!err, "{msg}");
    wait_for("the new version's worker", Duration::from_secs(20), || {
        (m.pids("n", "unacked").len() == 1).then_some(())
    });
    // Several watchdog periods: the old worker must stay acked and alive, and
    // no worker is stopped by its watchdog.
    holds_for(
        "the old worker acked through its watchdog",
        Duration::from_millis(1500),
        || {
            let st = m.state();
            let acked = m.pids("n", "acked");
            let by_watchdog = workers(&st, "n")
                .into_iter()
                .any(|w| w["stop_reason"] == "watchdog timeout");
            if acked == old && !by_watchdog && old.iter().all(|p| alive(*p)) {
                Ok(())
            } else {
                Err(format!("acked {acked:?}, was {old:?}: {st}"))
            }
        },
    );
}

/// A re-exec under systemd: the service manager sees RELOADING=1 then
/// READY=1 from the same MAINPID; socket-activated fds keep their numbers and
/// keep serving; a notify-ack worker's pings reach the new image on the same
/// notify socket (its 1s watchdog never fires); subreaper mode survives.
#[test]
fn a_reexec_under_systemd_keeps_mainpid_activated_fds_and_notify_workers() {
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;

    let web = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = web.local_addr().expect("addr").port();
    let toml = format!(
        r#"
[control]
socket = "{{sock}}"
[master]
subreaper = true
[pools.web]
command = ["{{worker}}"]
count = 2
ack_timer = "100ms"
binds = ["127.0.0.1:{port},r"]
[pools.n]
command = ["python3", "{{dir}}/worker.py"]
count = 1
ack = "notify"
watchdog = "1s"
"#
    );
    let b = MasterBuilder::config(&toml)
        .files(&[("worker.py", WATCHDOG_WORKER)])
        .wrapper(&["sh", "-c", r#"LISTEN_PID=$$ exec "$@""#, "sh"])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "web")
        .listen_fds(&[web.as_raw_fd()]);
    let mut sd = FakeSystemd::bind(&b.dir().join("notify"));
    let mut m = b.env("NOTIFY_SOCKET", "{dir}/notify").start();
    let t = Duration::from_secs(30);
    let ready = sd.wait_line(0, "READY=1", t);
    m.wait_acked("web", 2);
    let n = m.wait_acked("n", 1);
    let out = m.ctl(&["reexec"]);
    assert!(out.status.success(), "{out:?}");
    let reloading = sd.wait_line(ready + 1, "RELOADING=1", t);
    assert!(
        sd.msgs[reloading].contains("MONOTONIC_USEC="),
        "{:?}",
        sd.msgs
    );
    sd.wait_line(reloading + 1, "READY=1", t);
    // MAINPID: the master's pid is the one systemd started.
    assert_eq!(m.state()["master"]["pid"], serde_json::json!(m.pid()));
    // The activated socket is still fd 3, and still serves.
    assert!(
        sockets_of(m.pid()).contains(&3),
        "{:?}",
        sockets_of(m.pid())
    );
    let (code, _) = http_get_status(&format!("127.0.0.1:{port}"), "/").expect("web answers");
    assert_eq!(code, 200);
    // The notify worker's pings keep arriving: past two watchdog periods it
    // is the same, acked process.
    holds_for(
        "the notify worker across the exec",
        Duration::from_millis(2500),
        || {
            let now = m.pids("n", "acked");
            (now == n).then_some(()).ok_or(format!("{n:?} -> {now:?}"))
        },
    );
    m.signal(libc::SIGTERM);
    assert!(m.wait_exit(t).success());
}
