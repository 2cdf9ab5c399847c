//! The master upgrading itself in place (`reexec`, issue 12), with real
//! workers and real clients: the pid, the sockets, the workers, the control
//! connections and the state cross the exec; a broken new binary leaves the
//! old master serving and says why.
//!
//! The new binary is the same test build: what crosses the exec is the state
//! document, which is what a newer release reads (its format is held by the
//! fixture test in src/master/reexec.rs).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

fn two_pools(extra_master: &str) -> String {
    format!(
        r#"
[control]
socket = "{{sock}}"
[watch]
enabled = false
[master]
{extra_master}
[pools.web]
command = ["/bin/sh", "{{dir}}/w.sh"]
count = 3
binds = ["127.0.0.1:0"]
ack = "manual"
[pools.api]
command = ["{{worker}}", "--version-tag", "api"]
count = 2
binds = ["127.0.0.1:0"]
ack = "manual"
"#
    )
}

const W_SH: &str = "exec {worker} --version-tag v1 \"$@\"\n";

/// `reexec` through einhyrningsinsctl: (exit code, stdout, stderr).
fn reexec(m: &Master, args: &[&str]) -> (i32, String, String) {
    let mut a = vec!["reexec"];
    a.extend_from_slice(args);
    let out = m.ctl(&a);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `state` dump without what moves with time (ages, uptime) and the
/// record of the last reload (a re-exec re-reads the config file).
fn timeless(mut st: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.retain(|k, _| !k.contains("secs") && k != "last_reload");
                map.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut st);
    st
}

/// Every pid of the master's workers, by pool.
fn pids(st: &Value) -> BTreeSet<(String, i64)> {
    let mut out = BTreeSet::new();
    for (pool, p) in st["pools"].as_object().into_iter().flatten() {
        for w in p["workers"].as_array().into_iter().flatten() {
            if let Some(pid) = w["pid"].as_i64() {
                out.insert((pool.clone(), pid));
            }
        }
    }
    out
}

/// The master's open fds.
fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The fd count once it holds still for 200ms (no client connection open).
fn settled_fd_count(pid: i32) -> usize {
    wait_for("the master's fd count to settle", WAIT, || {
        let a = fd_count(pid);
        std::thread::sleep(Duration::from_millis(200));
        (fd_count(pid) == a).then_some(a)
    })
}

#[test]
fn ten_reexecs_in_a_row_keep_the_pid_the_workers_the_sockets_and_the_state() {
    let m = MasterBuilder::config(&two_pools(""))
        .files(&[("w.sh", W_SH)])
        .start();
    m.wait_acked("web", 3);
    m.wait_acked("api", 2);
    // A count set at run time is part of the state.
    let (msg, err) = m.cmd("set_workers", &["3"], Some("api"));
    assert!(!err, "{msg}");
    m.wait_acked("api", 3);
    let addr = m.addr("web");
    let before = m.state();
    let keep = Load::start(&addr, true);
    let fresh = Load::start(&m.addr("api"), false);
    keep.wait_more(20);
    let mut fds = 0;
    for i in 0..10 {
        let (code, out, err) = reexec(&m, &[]);
        assert_eq!(code, 0, "re-exec {i}: {out}{err}");
        assert!(out.contains("Re-exec done"), "re-exec {i}: {out}");
        assert!(
            out.contains(&format!("(pid {})", m.pid())),
            "re-exec {i} answered by another pid: {out}"
        );
        keep.wait_more(5);
        fresh.wait_more(5);
        if i == 0 {
            // Counted after the first exec: fds the test's own environment
            // leaked into the master at start are marked close-on-exec there.
            fds = settled_fd_count(m.pid());
        }
    }
    let (ok_keep, failed_keep) = keep.finish();
    let (ok_fresh, failed_fresh) = fresh.finish();
    assert!(
        failed_keep.is_empty() && failed_fresh.is_empty(),
        "failed requests across 10 re-execs: keep-alive {failed_keep:?}, new connections {failed_fresh:?}"
    );
    assert!(ok_keep > 0 && ok_fresh > 0);
    let after = m.state();
    assert_eq!(after["master"]["pid"], json!(m.pid()));
    assert_eq!(pids(&after), pids(&before), "the workers changed");
    assert_eq!(timeless(after.clone()), timeless(before.clone()));
    // The master gets back to exactly the fds it had (clients' connections
    // close as they go): none leaked, none lost.
    wait_for(
        format!("the master back at {fds} fds (has {})", fd_count(m.pid())),
        WAIT,
        || (fd_count(m.pid()) == fds).then_some(()),
    );
    // Uptime counts from the first start, not from the last exec.
    assert!(
        after["master"]["uptime_secs"].as_f64() >= before["master"]["uptime_secs"].as_f64(),
        "{after}"
    );
    assert_eq!(m.log_count("resumed after re-exec"), 10);
}

#[test]
fn a_smooth_upgrade_under_way_survives_a_reexec_and_completes() {
    // New workers ack after 1.5s each, one at a time: the roll takes seconds.
    let m = MasterBuilder::config(&two_pools(""))
        .files(&[("w.sh", W_SH)])
        .start();
    m.wait_acked("web", 3);
    let old = m.pids("web", "acked");
    m.put_file(
        "w.sh",
        "exec {worker} --version-tag v2 --ack-delay-ms 1500\n",
    );
    let mut upgrade = Proc::new(CTL)
        .arg("-d")
        .arg(&m.sock)
        .args(["--pool", "web", "upgrade"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ctl upgrade");
    m.wait_state("the upgrade to start", WAIT, |st| {
        st["pools"]["web"]["upgrading"].is_object().then_some(())
    });
    let load = Load::start(&m.addr("web"), true);
    let (code, out, err) = reexec(&m, &[]);
    assert_eq!(code, 0, "{out}{err}");
    // The upgrade goes on in the new image, and its client, connected to the
    // old one, gets its progress and final reply from the new one.
    let status = upgrade
        .wait_timeout(WAIT)
        .expect("the upgrade client exits");
    let said = upgrade.stdout_text();
    assert!(status.success(), "upgrade client: {said}");
    assert!(said.contains("Upgrade done"), "{said}");
    load.wait_version("v2");
    let (_, failed) = load.finish();
    assert!(failed.is_empty(), "{failed:?}");
    let new = m.wait_acked("web", 3);
    assert!(new.iter().all(|p| !old.contains(p)), "{old:?} -> {new:?}");
    assert_eq!(m.version("web"), 2);
}

#[test]
fn reexec_upgrade_is_einhorns_upgrade_a_new_master_then_new_workers() {
    let m = MasterBuilder::config(&two_pools(""))
        .files(&[("w.sh", W_SH)])
        .start();
    m.wait_acked("web", 3);
    m.wait_acked("api", 2);
    let before = pids(&m.state());
    let (code, out, err) = reexec(&m, &["--upgrade"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Re-exec done"), "{out}");
    assert!(out.trim_end().ends_with("Upgrade done"), "{out}");
    let after = m.state();
    assert_eq!(after["master"]["pid"], json!(m.pid()));
    assert_eq!(m.version("web"), 2);
    assert_eq!(m.version("api"), 2);
    m.wait_acked("web", 3);
    m.wait_acked("api", 2);
    let now = pids(&m.state());
    assert!(now.is_disjoint(&before), "{before:?} / {now:?}");
}

/// Scripts standing in for a broken new release.
const BROKEN: &[(&str, &str, &str)] = &[
    // (file, text, what the refusal says)
    (
        "fails.sh",
        "#!/bin/sh\necho 'cannot load libfoo.so' >&2\nexit 3\n",
        "exit status 3): cannot load libfoo.so",
    ),
    ("crashes.sh", "#!/bin/sh\nkill -SEGV $$\n", "SIGSEGV"),
    ("exits-0.sh", "#!/bin/sh\nexit 0\n", "without saying"),
    (
        "hangs.sh",
        "#!/bin/sh\nexec sleep 30\n",
        "did not finish within 1s",
    ),
];

#[test]
fn a_broken_new_binary_leaves_the_old_master_serving_and_says_why() {
    let mut files: Vec<(&str, &str)> = vec![("w.sh", W_SH), ("not-executable", "#!/bin/sh\n")];
    files.extend(BROKEN.iter().map(|(f, t, _)| (*f, *t)));
    let m = MasterBuilder::config(&two_pools(""))
        .files(&files)
        .prepare(|dir| {
            use std::os::unix::fs::PermissionsExt;
            for (f, _, _) in BROKEN {
                let p = dir.join(f);
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod");
            }
        })
        .start();
    m.wait_acked("web", 3);
    m.wait_acked("api", 2);
    let before = m.state();
    let load = Load::start(&m.addr("web"), false);
    let mut cases: Vec<(String, String)> = BROKEN
        .iter()
        .map(|(f, _, why)| (format!("{{dir}}/{f}"), why.to_string()))
        .collect();
    cases.push(("{dir}/not-executable".into(), "Permission denied".into()));
    cases.push(("{dir}/no-such-file".into(), "No such file".into()));
    cases.push(("no-such-program-in-path".into(), "not in PATH".into()));
    for (program, why) in cases {
        // `reexec_as` applies on reload.
        m.write_config(&two_pools(&format!(
            "reexec_as = \"{program}\"\nupgrade_check_timeout = \"1s\""
        )));
        let (msg, err) = m.cmd("reload", &[], None);
        assert!(!err, "{msg}");
        let (code, out, err) = reexec(&m, &[]);
        assert_eq!(code, 1, "{program}: {out}{err}");
        assert!(err.contains("Re-exec refused"), "{program}: {err}");
        assert!(err.contains(&why), "{program}: wanted {why:?} in {err}");
        assert!(err.contains("this master carries on"), "{err}");
        // Still the same master, serving, with the same workers.
        let st = m.state();
        assert_eq!(st["master"]["pid"], json!(m.pid()));
        assert_eq!(pids(&st), pids(&before), "{program}");
        assert!(m.log_text().contains("reexec refused"), "{program}");
    }
    let (ok, failed) = load.finish();
    assert!(ok > 0 && failed.is_empty(), "{failed:?}");
    assert_eq!(m.log_count("resumed after re-exec"), 0);
    // And a good binary still works after all that.
    m.write_config(&two_pools(""));
    let (msg, err) = m.cmd("reload", &[], None);
    assert!(!err, "{msg}");
    let (code, out, err) = reexec(&m, &[]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn the_new_image_applies_the_config_file_as_reload_does() {
    let m = MasterBuilder::config(&two_pools(""))
        .files(&[("w.sh", W_SH)])
        .start();
    m.wait_acked("web", 3);
    m.wait_acked("api", 2);
    let web = m.pids("web", "acked");
    // The deploy: a new master binary and a new config, one command.
    m.write_config(&two_pools("").replace("count = 2", "count = 4"));
    let (code, out, err) = reexec(&m, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("scal"),
        "the reply says what the reload did: {out}"
    );
    m.wait_acked("api", 4);
    assert_eq!(m.pids("web", "acked"), web, "web was not touched");
}

#[test]
fn clients_survive_the_exec_and_the_requester_gets_its_reply_from_the_new_image() {
    let m = MasterBuilder::config(&two_pools("upgrade_check = false"))
        .files(&[("w.sh", W_SH)])
        .start();
    m.wait_acked("web", 3);
    // An einhorn-style client that keeps its connection open, and one that
    // follows the events.
    let mut idle = UnixStream::connect(&m.sock).expect("connect");
    idle.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut follower = UnixStream::connect(&m.sock).expect("connect");
    follower.set_read_timeout(Some(WAIT)).expect("timeout");
    writeln!(
        follower,
        "{}",
        json!({"command": "events", "args": ["-f"], "id": "f"})
    )
    .unwrap();
    let mut followed = BufReader::new(follower.try_clone().unwrap());
    // A round trip after the follow request: the master, which serves every
    // ready connection each turn, has taken it.
    m.state();
    // The requester, on a raw connection, with an id.
    let mut req = UnixStream::connect(&m.sock).expect("connect");
    req.set_read_timeout(Some(WAIT)).expect("timeout");
    writeln!(req, "{}", json!({"command": "reexec", "id": 42})).unwrap();
    let mut line = String::new();
    BufReader::new(req.try_clone().unwrap())
        .read_line(&mut line)
        .expect("the final reply");
    let reply: Value = serde_json::from_str(&line).expect("JSON reply");
    assert_eq!(reply["request_id"], json!(42), "{reply}");
    assert!(
        reply["error"].is_null() || reply["error"] == json!(false),
        "{reply}"
    );
    assert!(
        reply["message"]
            .as_str()
            .unwrap_or("")
            .contains("Re-exec done"),
        "{reply}"
    );
    // The idle connection still works, on the new image.
    writeln!(idle, "{}", json!({"command": "version", "id": 1})).unwrap();
    let mut v = String::new();
    BufReader::new(idle.try_clone().unwrap())
        .read_line(&mut v)
        .expect("a reply on the old connection");
    assert!(v.contains("einhyrningsins"), "{v}");
    // The follower sees the re-exec happen, from the new image.
    let saw = wait_for("the reexec_done event", WAIT, || {
        let mut l = String::new();
        followed.read_line(&mut l).ok()?;
        l.contains("reexec_done").then_some(l)
    });
    assert!(saw.contains(&format!("{}", m.pid())), "{saw}");
}

#[test]
fn a_worker_that_dies_during_the_exec_is_reaped_and_replaced_by_the_new_image() {
    let m = MasterBuilder::config(&two_pools("upgrade_check = false"))
        .files(&[("w.sh", W_SH)])
        .start();
    m.wait_acked("web", 3);
    for round in 0..3 {
        let pids = m.pids("web", "acked");
        let victim = pids[round % pids.len()];
        // The exec follows at once (no check): the worker's exit lands before,
        // during or after it.
        let mut c = UnixStream::connect(&m.sock).expect("connect");
        // SAFETY: kill(2) on a worker of our master.
        unsafe { libc::kill(victim, libc::SIGKILL) };
        writeln!(c, "{}", json!({"command": "reexec"})).unwrap();
        let mut line = String::new();
        c.set_read_timeout(Some(WAIT)).unwrap();
        BufReader::new(c).read_line(&mut line).expect("reply");
        assert!(line.contains("Re-exec done"), "{line}");
        let now = m.wait_acked("web", 3);
        assert!(
            !now.contains(&victim),
            "round {round}: {victim} still listed"
        );
        // Reaped: not a zombie child of the master.
        let stat = std::fs::read_to_string(format!("/proc/{victim}/stat")).unwrap_or_default();
        assert!(
            !stat.contains(") Z "),
            "round {round}: {victim} is a zombie"
        );
    }
}

#[test]
fn acks_sent_while_the_master_execs_are_not_lost() {
    // Workers ack 0-600ms after they start; the master re-execs all along.
    let m = MasterBuilder::config(&two_pools("upgrade_check = false").replace(
        "ack = \"manual\"\n[pools.api]",
        "ack = \"manual\"\nack_timeout = \"20s\"\n[pools.api]",
    ))
    .files(&[(
        "w.sh",
        "exec {worker} --version-tag v1 --ack-delay-ms $(( (EINHORN_CHILD_INDEX * 97) % 600 ))\n",
    )])
    .start();
    m.wait_acked("web", 3);
    let (msg, err) = m.cmd("set_workers", &["12"], Some("web"));
    assert!(!err, "{msg}");
    for _ in 0..6 {
        let (code, out, err) = reexec(&m, &[]);
        assert_eq!(code, 0, "{out}{err}");
    }
    m.wait_acked("web", 12);
    assert_eq!(
        m.log_count("did not ack"),
        0,
        "an ack was lost across an exec"
    );
}

#[test]
fn a_signal_during_the_exec_is_not_lost() {
    let mut m = MasterBuilder::config(&two_pools("upgrade_check = false"))
        .files(&[("w.sh", W_SH)])
        .start();
    m.wait_acked("web", 3);
    let workers: Vec<i32> = all_pids(&m.state());
    let mut c = UnixStream::connect(&m.sock).expect("connect");
    writeln!(c, "{}", json!({"command": "reexec"})).unwrap();
    // SIGINT right behind the request: handled by the old image, or left
    // pending across the exec for the new one. Either way the master stops.
    m.signal(libc::SIGINT);
    let status = m.wait_exit(WAIT);
    assert!(status.success(), "{status:?}\n{}", m.log_text());
    wait_all_dead(&workers, WAIT);
}

#[test]
fn the_command_line_stays_and_no_worker_inherits_the_resume_variable() {
    let m = MasterBuilder::config(&two_pools(""))
        .files(&[("w.sh", W_SH)])
        .start();
    m.wait_acked("web", 3);
    let cmdline = || std::fs::read(format!("/proc/{}/cmdline", m.pid())).unwrap_or_default();
    let before = cmdline();
    let (code, out, err) = reexec(&m, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(cmdline(), before, "ps would show another command line");
    // A worker started by the new image.
    let (msg, err) = m.cmd("inc", &[], Some("web"));
    assert!(!err, "{msg}");
    let pids = m.wait_acked("web", 4);
    for pid in pids {
        let env = environ(pid);
        assert!(
            !env.contains_key("EINHYRNINGSINS_RESUME_FD"),
            "worker {pid} inherited the resume variable"
        );
        assert_eq!(env.get("EINHORN_MASTER_PID"), Some(&m.pid().to_string()));
    }
}

#[test]
fn a_master_started_from_the_command_line_reexecs_too() {
    let m = MasterBuilder::cli(&["-n", "2", "-b", "127.0.0.1:0", "--", "{worker}"]).start();
    let pool = m.state()["pools"]
        .as_object()
        .and_then(|p| p.keys().next().cloned())
        .expect("one pool");
    m.wait_acked(&pool, 2);
    let (msg, err) = m.cmd("inc", &[], None);
    assert!(!err, "{msg}");
    m.wait_acked(&pool, 3);
    let before = pids(&m.state());
    let (code, out, err) = reexec(&m, &[]);
    assert_eq!(code, 0, "{out}{err}");
    // No file to re-read; the count set at run time stays.
    assert_eq!(pids(&m.state()), before);
    assert_eq!(m.state()["pools"][&pool]["count"], json!(3));
}
