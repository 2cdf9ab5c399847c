//! Pools that run the way production services run (issue 13): workers as
//! another user with their own groups, umask, niceness, limits and OOM score,
//! on sockets root bound below port 1024; acking in every mode without the
//! control socket opened to everyone; bad identities refused with the key
//! named; `stop_group` and the SIGKILL escalation leaving no descendant.
//!
//! Most of this needs root (CI runs as root); without it a test says SKIPPED.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid only reads.
    unsafe { libc::geteuid() == 0 }
}

/// Root, and `nobody` can run the test's worker binary (the checkout may be
/// under a directory only root can enter).
fn can_drop_to_nobody(test: &str) -> bool {
    if !is_root() {
        eprintln!("SKIPPED: {test} needs root (CI runs as root)");
        return false;
    }
    let ok = Proc::new("/usr/bin/python3")
        .arg("-c")
        .arg("pass")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .is_ok_and(|o| o.status.success())
        && Proc::new(http_worker())
            .arg("--help")
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .is_ok();
    if !ok {
        eprintln!("SKIPPED: {test}: user nobody cannot run /usr/bin/python3 or the test's worker binary here");
    }
    ok
}

/// A free TCP port below 1024 (only root can bind one). The search starts
/// at an offset taken from the pid, so that test runs side by side (other
/// checkouts on the same machine) do not both pick the first free one.
fn low_port() -> u16 {
    let start = (std::process::id() % 424) as u16;
    (0..424u16)
        .map(|i| 600 + (start + i) % 424)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1024")
}

/// The worker: writes what it runs as to `{out}/MODE-PID.json`, acks the way
/// its pool says (MODE), tries a command it may not send, then answers HTTP
/// on its socket with its uid.
const ID_WORKER: &str = r#"
import json, os, resource, socket, sys
out, mode = sys.argv[1], sys.argv[2]
m = os.umask(0); os.umask(m)
lim = {n: resource.getrlimit(getattr(resource, "RLIMIT_" + n.upper())) for n in ("nofile", "core", "nproc", "memlock", "as")}
info = {
    "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
    "groups": sorted(os.getgroups()), "umask": m, "nice": os.nice(0),
    "limits": lim, "oom": int(open("/proc/self/oom_score_adj").read()),
    "home": os.environ.get("HOME"), "user": os.environ.get("USER"),
}
def line(s, obj):
    s.sendall((json.dumps(obj) + "\n").encode())
me = os.getpid()
if mode == "manual":
    s = socket.socket(socket.AF_UNIX); s.connect(os.environ["EINHORN_SOCK_PATH"])
    line(s, {"command": "worker:ack", "pid": me}); s.close()
elif mode == "fd":
    s = socket.socket(fileno=int(os.environ["EINHORN_SOCK_FD"]))
    line(s, {"command": "worker:ack", "pid": me})
elif mode == "notify":
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
# A pool's user may not control the master.
try:
    c = socket.socket(socket.AF_UNIX); c.connect(os.environ["EINHORN_SOCK_PATH"])
    line(c, {"command": "set_workers", "args": ["0"], "id": 1})
    info["control_reply"] = json.loads(c.makefile().readline())
except Exception as e:
    info["control_reply"] = {"error": True, "message": "connect: %s" % e}
tmp = os.path.join(out, ".%s-%d" % (mode, me))
with open(tmp, "w") as f:
    json.dump(info, f)
os.rename(tmp, os.path.join(out, "%s-%d.json" % (mode, me)))
lsock = socket.socket(fileno=int(os.environ["EINHORN_FD_0"]))
lsock.setblocking(True)
while True:
    c, _ = lsock.accept()
    c.recv(65536)
    body = ("uid=%d\n" % os.getuid()).encode()
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    c.close()
"#;

fn reports(out: &Path, mode: &str) -> Vec<Value> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(out).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{mode}-")) && name.ends_with(".json") {
            if let Ok(t) = std::fs::read_to_string(e.path()) {
                v.extend(serde_json::from_str::<Value>(&t).ok());
            }
        }
    }
    v
}

fn groups_of(user: &str, gid: u32) -> Vec<u32> {
    let out = Proc::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!(
            "import os; print(sorted(os.getgrouplist('{user}', {gid})))"
        ))
        .output()
        .expect("python3");
    serde_json::from_slice(&out.stdout).expect("a list of gids")
}

#[test]
fn workers_run_as_their_pools_user_with_its_limits_and_ack_in_every_mode() {
    if !can_drop_to_nobody("workers_run_as_their_pools_user_with_its_limits_and_ack_in_every_mode")
    {
        return;
    }
    let port = low_port();
    let pool = |name: &str, mode: &str, bind: &str, extra: &str| {
        format!(
            r#"
[pools.{name}]
command = ["/usr/bin/python3", "{{dir}}/id.py", "{{dir}}/out", "{mode}"]
count = 2
binds = ["{bind}"]
user = "nobody"
group = "daemon"
umask = "0027"
nice = 7
oom_score_adj = 333
rlimits = {{ nofile = "512:1024", core = 0, nproc = "1000:2000", memlock = "1MiB", as = "unlimited" }}
ack_timeout = "20s"
{extra}
"#
        )
    };
    let toml = format!(
        "[control]\nsocket = \"{{sock}}\"\n{}{}{}",
        pool(
            "manual",
            "manual",
            &format!("127.0.0.1:{port},r"),
            "ack = \"manual\""
        ),
        pool(
            "fd",
            "fd",
            "127.0.0.1:0",
            "ack = \"manual\"\ncommand_socket_as_fd = true"
        ),
        pool("notify", "notify", "127.0.0.1:0", "ack = \"notify\""),
    );
    let m = MasterBuilder::config(&toml)
        .files(&[("id.py", ID_WORKER)])
        .prepare(|d| {
            let out = d.join("out");
            std::fs::create_dir(&out).expect("out dir");
            std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).expect("chmod");
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        })
        .start();
    for p in ["manual", "fd", "notify"] {
        m.wait_acked(p, 2);
    }
    // The control socket keeps its mode: only the ACL lets nobody in.
    let meta = std::fs::metadata(&m.sock).expect("socket");
    assert_eq!(
        meta.permissions().mode() & 0o007,
        0,
        "the socket is not open to others"
    );
    let daemon_groups = groups_of("nobody", 1);
    for mode in ["manual", "fd", "notify"] {
        let rs = wait_for(format!("2 reports from pool {mode}"), WAIT, || {
            let r = reports(&m.dir.join("out"), mode);
            (r.len() == 2).then_some(r)
        });
        for r in rs {
            assert_eq!(r["uid"], NOBODY, "{mode}: {r}");
            assert_eq!(r["euid"], NOBODY, "{mode}: {r}");
            assert_eq!(r["gid"], 1, "{mode}: {r}");
            let groups: BTreeSet<u64> = r["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64)
                .collect();
            let want: BTreeSet<u64> = daemon_groups.iter().map(|g| u64::from(*g)).collect();
            assert_eq!(groups, want, "{mode}: {r}");
            assert_eq!(r["umask"], 0o027, "{mode}: {r}");
            assert_eq!(r["nice"], 7, "{mode}: {r}");
            assert_eq!(r["oom"], 333, "{mode}: {r}");
            assert_eq!(r["limits"]["nofile"], serde_json::json!([512, 1024]), "{r}");
            assert_eq!(r["limits"]["core"], serde_json::json!([0, 0]), "{r}");
            assert_eq!(r["limits"]["nproc"], serde_json::json!([1000, 2000]), "{r}");
            assert_eq!(r["limits"]["as"], serde_json::json!([-1, -1]), "{r}");
            assert_eq!(
                r["limits"]["memlock"],
                serde_json::json!([1 << 20, 1 << 20]),
                "{r}"
            );
            assert_eq!(r["home"], "/nonexistent", "{mode}: {r}");
            assert_eq!(r["user"], "nobody", "{mode}: {r}");
            // The pool's user may ack, but not control the master.
            let reply = &r["control_reply"];
            assert_eq!(reply["error"], true, "{mode}: {r}");
            assert!(
                reply["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("worker messages only"),
                "{mode}: {reply}"
            );
        }
    }
    // The socket root bound below 1024 serves, from nobody's workers.
    // A worker may still be between its report and its first accept; a
    // request that races it is retried until the deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (code, body) = loop {
        match http_get_status(&format!("127.0.0.1:{port}"), "/") {
            Ok(r) => break r,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("low port {port}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("the low port {port} does not answer: {e}"),
        }
    };
    assert_eq!(code, 200);
    assert_eq!(body.trim(), format!("uid={NOBODY}"));
    // And the count is still 2: the refused set_workers 0 changed nothing.
    assert_eq!(m.pool("manual")["count"], 2);
}

#[test]
fn bad_identities_are_refused_at_start_and_by_check_with_the_key_named() {
    for (line, key, why) in [
        (
            "user = \"no-such-user-ehy\"",
            "pools.web.user",
            "no such user",
        ),
        (
            "group = \"no-such-group-ehy\"",
            "pools.web.group",
            "no such group",
        ),
        (
            "rlimits = { nofile = 1099511627776 }",
            "pools.web.rlimits.nofile",
            "nr_open",
        ),
    ] {
        let text = format!(
            "[control]\nsocket = \"/tmp/ehy-bad-identity-{}.sock\"\n[pools.web]\ncommand = [\"/bin/true\"]\n{line}\n",
            std::process::id()
        );
        let (_dir, path) = config_file(&text);
        let (status, _, err) = Proc::new(MASTER).args(["check", &path]).run_to_exit(WAIT);
        assert_eq!(status.code(), Some(2), "check {line}: {err}");
        assert!(
            err.contains(&format!("app.toml:5: {key}")),
            "check {line}: {err}"
        );
        assert!(err.contains(why), "check {line}: {err}");
        let (status, _, err) = Proc::new(MASTER)
            .args(["--config", &path])
            .run_to_exit(WAIT);
        assert_eq!(status.code(), Some(2), "start {line}: {err}");
        assert!(
            err.contains(key) && err.contains(why),
            "start {line}: {err}"
        );
    }
    // As another user than root: `user` is refused, and so is a hard limit
    // above the master's.
    if !is_root() {
        eprintln!("SKIPPED: the non-root half of this test needs root to become nobody");
        return;
    }
    let dir = TempDir::for_test();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = dir.join("app.toml");
    std::fs::write(
        &path,
        "[pools.web]\ncommand = [\"/bin/true\"]\nuser = \"daemon\"\nrlimits = { nofile = \"unlimited\" }\nnice = -5\n",
    )
    .expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (status, _, err) = Proc::new(MASTER)
        .args(["check", &path.to_string_lossy()])
        .uid(NOBODY)
        .gid(NOBODY)
        .run_to_exit(WAIT);
    if err.contains("Permission denied") && status.code() != Some(2) {
        eprintln!("SKIPPED: nobody cannot run the master binary here: {err}");
        return;
    }
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("pools.web.user") && err.contains("only when the master runs as root"),
        "{err}"
    );
    assert!(
        err.contains("pools.web.rlimits.nofile") && err.contains("needs CAP_SYS_RESOURCE"),
        "{err}"
    );
    assert!(
        err.contains("pools.web.nice") && err.contains("needs root"),
        "{err}"
    );
}

#[test]
fn a_control_socket_the_pools_user_cannot_reach_is_refused_at_start() {
    if !can_drop_to_nobody("a_control_socket_the_pools_user_cannot_reach_is_refused_at_start") {
        return;
    }
    let dir = TempDir::for_test();
    let private = dir.join("private");
    std::fs::create_dir(&private).expect("mkdir");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let path = dir.join("app.toml");
    std::fs::write(
        &path,
        format!(
            "[control]\nsocket = \"{}/ctl.sock\"\n[pools.web]\ncommand = [\"/bin/sleep\", \"100\"]\nack = \"manual\"\nuser = \"nobody\"\n",
            private.display()
        ),
    )
    .expect("write");
    let (status, _, err) = Proc::new(MASTER)
        .args(["--config", &path.to_string_lossy()])
        .run_to_exit(WAIT);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("pools.web.user"), "{err}");
    assert!(
        err.contains(&format!("cannot enter the directory {}", private.display())),
        "{err}"
    );
}

/// Pids of the children of `pid`.
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A worker that starts 100 children holding its socket, then serves.
const FAMILY: &str = "for i in $(seq 100); do sleep 1000 & done\nexec {worker} \"$@\"\n";

fn families(m: &Master, pool: &str) -> Vec<(i32, Vec<i32>)> {
    m.pids(pool, "acked")
        .into_iter()
        .map(|p| {
            let kids = wait_for(format!("100 children of {p}"), WAIT, || {
                let c = children(p);
                (c.len() == 100).then_some(c)
            });
            (p, kids)
        })
        .collect()
}

#[test]
fn stop_group_leaves_no_descendant_after_dec_an_upgrade_and_shutdown() {
    let port = free_port();
    let mut m = MasterBuilder::config(&format!(
        r#"
[control]
socket = "{{sock}}"
[pools.web]
command = ["/bin/sh", "{{dir}}/w.sh"]
count = 2
binds = ["127.0.0.1:{port},r"]
ack = "manual"
stop_group = true
stop_timeout = "10s"
"#
    ))
    .files(&[("w.sh", FAMILY)])
    .start();
    m.wait_acked("web", 2);
    let first = families(&m, "web");
    // dec: one worker and its 100 children go.
    let (msg, err) = m.cmd("dec", &[], Some("web"));
    assert!(!err, "{msg}");
    m.wait_acked("web", 1);
    let gone: Vec<i32> = first
        .iter()
        .filter(|(p, _)| !m.pids("web", "acked").contains(p))
        .flat_map(|(p, kids)| std::iter::once(*p).chain(kids.iter().copied()))
        .collect();
    assert_eq!(gone.len(), 101);
    wait_all_dead(&gone, WAIT);
    // An upgrade: the old worker's family goes too.
    let before = families(&m, "web");
    let (msg, err) = m.cmd("upgrade", &[], Some("web"));
    assert!(!err, "{msg}");
    let all: Vec<i32> = before
        .iter()
        .flat_map(|(p, kids)| std::iter::once(*p).chain(kids.iter().copied()))
        .collect();
    wait_all_dead(&all, WAIT);
    // Shutdown: nothing is left, and the port can be bound again.
    let last = families(&m, "web");
    m.signal(libc::SIGINT);
    assert!(m.wait_exit(WAIT).success());
    let all: Vec<i32> = last
        .iter()
        .flat_map(|(p, kids)| std::iter::once(*p).chain(kids.iter().copied()))
        .collect();
    wait_all_dead(&all, WAIT);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free again");
}

#[test]
fn the_sigkill_after_stop_timeout_reaches_the_workers_children_too() {
    // Default stop_group = false: the stop signal goes to the worker only
    // (einhorn), which ignores it; after stop_timeout the SIGKILL goes to its
    // whole group, children included.
    let mut m = MasterBuilder::config(
        r#"
[control]
socket = "{sock}"
[pools.web]
command = ["/bin/sh", "{dir}/w.sh", "--ignore-stop"]
count = 1
binds = ["127.0.0.1:0"]
ack = "manual"
stop_timeout = "1s"
"#,
    )
    .files(&[("w.sh", FAMILY)])
    .start();
    m.wait_acked("web", 1);
    let fam = families(&m, "web");
    m.signal(libc::SIGINT);
    assert!(m.wait_exit(WAIT).success());
    let (p, kids) = &fam[0];
    let all: Vec<i32> = std::iter::once(*p).chain(kids.iter().copied()).collect();
    wait_all_dead(&all, WAIT);
    assert!(m.log_text().contains("SIGKILL"), "{}", m.log_text());
}
