//! Upgrades with real processes (BRIEF §5, issue 4): the master, real example
//! workers, real TCP clients, the real `einhyrningsinsctl`.
//!
//! An upgrade re-execs the pool's command; in production the binary on disk was
//! replaced first. Here the command is `/bin/sh {dir}/w.sh` and a test swaps that
//! wrapper (atomically, by rename) before asking for the upgrade: to a worker with a
//! new `--version-tag`, to one that exits at once, never acks, acks slowly or
//! ignores its stop signal. Running the script through `sh` (rather than exec'ing
//! it) means a freshly written file can never be "text file busy".
//!
//! Nothing sleeps to synchronise: every wait polls a condition with a deadline.

use std::collections::BTreeSet;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

/// A one-pool config whose command is the swappable wrapper script.
fn pool_toml(count: usize, extra: &str) -> String {
    format!(
        r#"
[control]
socket = "{{sock}}"
# These tests edit w.sh and then ask for the upgrade themselves; the watcher
# would roll on the edit too (a command's file arguments are watched).
[watch]
enabled = false
[pools.web]
command = ["/bin/sh", "{{dir}}/w.sh"]
count = {count}
binds = ["127.0.0.1:0"]
ack = "manual"
{extra}
"#
    )
}

/// Wrapper script running the example worker with a version tag and flags.
fn script(version: &str, flags: &str) -> String {
    format!("exec {{worker}} --version-tag {version} {flags}\n")
}

fn pids_of(ws: &[Value]) -> BTreeSet<i64> {
    ws.iter().filter_map(|w| w["pid"].as_i64()).collect()
}

/// Wait until `pool` is settled at `version`: no upgrade running, `count`
/// workers, all acked and at that version. Returns their pids.
fn wait_settled_at(m: &Master, pool: &str, count: usize, version: u64) -> BTreeSet<i64> {
    let log = m.log.clone();
    wait_for(
        format!(
            "pool {pool} settled at version {version} (log {})",
            log.display()
        ),
        WAIT,
        || {
            let st = m.state();
            let p = &st["pools"][pool];
            let ws = workers(&st, pool);
            let ok = p["version"] == version
                && p["upgrading"].is_null()
                && ws.len() == count
                && ws
                    .iter()
                    .all(|w| w["state"] == "acked" && w["version"] == version);
            ok.then(|| pids_of(&ws))
        },
    )
}

#[test]
fn smooth_upgrades_under_load_lose_no_request() {
    let m = MasterBuilder::config(&pool_toml(4, ""))
        .files(&[("w.sh", &script("v1", ""))])
        .start();
    let v1 = wait_settled_at(&m, "web", 4, 1);
    let addr = m.addr("web");
    let fresh = Load::start(&addr, false);
    let ka = Load::start(&addr, true);
    fresh.wait_more(20);
    ka.wait_more(20);

    // Upgrade 1, through the real client.
    m.put_file("w.sh", &script("v2", ""));
    let out = m.ctl(&["-e", "upgrade"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ctl upgrade: {stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let first_ack = lines.iter().position(|l| l.contains("new workers acked"));
    let first_retire = lines.iter().position(|l| l.contains("retired pid"));
    assert!(
        first_ack.is_some() && first_retire.is_some(),
        "no progress lines in:\n{stdout}"
    );
    assert!(
        first_ack < first_retire,
        "retired before any ack:\n{stdout}"
    );
    assert!(stdout.contains("4/4 new workers acked"), "{stdout}");
    assert_eq!(lines.last(), Some(&"Upgrade done"), "{stdout}");
    fresh.wait_version("v2");
    ka.wait_version("v2");
    let v2 = wait_settled_at(&m, "web", 4, 2);
    assert!(v1.is_disjoint(&v2), "old pids survived: {v1:?} {v2:?}");
    for pid in &v1 {
        assert!(!alive(*pid as i32), "retired worker {pid} still alive");
    }

    // Upgrade 2, through a raw JSON connection, still under load.
    m.put_file("w.sh", &script("v3", ""));
    let replies = m.request(json!({"command": "upgrade", "id": "up-3"}));
    let msgs = messages(&replies);
    let (last, progress) = replies.split_last().expect("at least one reply");
    assert!(!progress.is_empty(), "no progress replies: {msgs:?}");
    for r in progress {
        assert_eq!(r["wait"], true, "{r}");
        assert_eq!(r["request_id"], "up-3", "{r}");
    }
    assert!(
        msgs.iter().any(|s| s.contains("new workers acked")),
        "{msgs:?}"
    );
    assert!(msgs.iter().any(|s| s.contains("retired pid")), "{msgs:?}");
    assert_eq!(last["message"], "Upgrade done", "{msgs:?}");
    assert_eq!(last["request_id"], "up-3");
    assert!(last.get("wait").is_none_or(|w| w == false), "{last}");
    assert!(last.get("error").is_none_or(|e| e == false), "{last}");
    fresh.wait_version("v3");
    ka.wait_version("v3");
    let v3 = wait_settled_at(&m, "web", 4, 3);
    assert!(v2.is_disjoint(&v3), "old pids survived: {v2:?} {v3:?}");

    // The keep-alive client did reuse its connections (it reconnects only when a
    // retired worker answers with `Connection: close`).
    let connects = ka.connects.load(Ordering::SeqCst);
    assert!(
        connects * 4 < ka.ok(),
        "{connects} connections for {} requests",
        ka.ok()
    );
    for load in [fresh, ka] {
        let what = load.what;
        let (ok, failures) = load.finish();
        assert!(
            failures.is_empty(),
            "{what}: {} of {} requests failed: {failures:?}",
            failures.len(),
            ok + failures.len() as u64
        );
        assert!(ok >= 40, "{what}: only {ok} requests");
    }
}

#[test]
fn upgrade_to_a_binary_that_exits_at_once_fails_and_old_keep_serving() {
    let extra = "retries = 3\nrespawn_delay = \"20ms\"";
    let m = MasterBuilder::config(&pool_toml(4, extra))
        .files(&[("w.sh", &script("v1", ""))])
        .start();
    let old = wait_settled_at(&m, "web", 4, 1);
    m.put_file("w.sh", "echo 'new version: cannot start' >&2; exit 1\n");
    let out = m.ctl(&["-e", "upgrade"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "ctl: {stderr}");
    assert!(stderr.contains("Upgrade failed"), "{stderr}");
    assert!(stderr.contains("version 2 failed 3 time(s)"), "{stderr}");
    assert!(stderr.contains("old workers keep serving"), "{stderr}");
    assert!(stderr.contains("exit status 1 before it acked"), "{stderr}");

    // Same workers, all acked, back at version 1; nothing else left running.
    assert_eq!(wait_settled_at(&m, "web", 4, 1), old);
    let st = m.state();
    let last = &st["pools"]["web"]["last_upgrade"];
    assert_eq!(last["ok"], false, "{last}");
    assert_eq!(last["version"], 2, "{last}");
    let (status, err) = m.cmd("status", &[], None);
    assert!(!err);
    assert!(
        status.contains("last upgrade: #1 to version 2") && status.contains("FAILED"),
        "{status}"
    );
    let addr = m.addr("web");
    for _ in 0..8 {
        let body = http_get(&addr, "/").expect("old workers serve");
        assert!(body.contains("version=v1"), "{body}");
    }
    assert!(
        m.log_text().contains("upgrade #1 failed"),
        "{}",
        m.log_text()
    );
}

#[test]
fn a_version_that_never_acks_is_abandoned_after_retries() {
    let extra = "retries = 2\nrespawn_delay = \"20ms\"\nack_timeout = \"300ms\"\nmax_unacked = 1";
    let m = MasterBuilder::config(&pool_toml(2, extra))
        .files(&[("w.sh", &script("v1", ""))])
        .start();
    let old = wait_settled_at(&m, "web", 2, 1);
    m.put_file("w.sh", &script("v2", "--no-ack"));
    let replies = m.request(json!({"command": "upgrade", "id": 9}));
    let msgs = messages(&replies);
    let last = replies.last().expect("a reply");
    assert_eq!(last["error"], true, "{msgs:?}");
    let text = last["message"].as_str().unwrap_or("");
    assert!(text.contains("Upgrade failed"), "{text}");
    assert!(text.contains("version 2 failed 2 time(s)"), "{text}");
    assert!(text.contains("did not ack within 300ms"), "{text}");
    assert_eq!(wait_settled_at(&m, "web", 2, 1), old);
    let log = m.log_text();
    assert_eq!(
        log.matches("did not ack within 300ms: killing it").count(),
        2,
        "expected two ack timeouts:\n{log}"
    );
    let addr = m.addr("web");
    let body = http_get(&addr, "/").expect("old workers serve");
    assert!(body.contains("version=v1"), "{body}");
}

#[test]
fn fleet_upgrade_retires_old_only_after_every_new_acked() {
    let m = MasterBuilder::config(&pool_toml(3, ""))
        .files(&[("w.sh", &script("v1", ""))])
        .start();
    let old = wait_settled_at(&m, "web", 3, 1);
    // A slow ack keeps all new workers unacked for a while, so the sampler sees
    // the fleet started before anything is retired.
    m.put_file("w.sh", &script("v2", "--ack-delay-ms 300"));
    let sampler = Sampler::start(m.sock.clone());
    let replies = m.request(json!({"command": "upgrade_fleet"}));
    let samples = sampler.finish();
    let msgs = messages(&replies);
    assert_eq!(
        msgs.last().map(String::as_str),
        Some("Upgrade done"),
        "{msgs:?}"
    );
    let last_ack = msgs.iter().rposition(|s| s.contains("new workers acked"));
    let first_retire = msgs.iter().position(|s| s.contains("retired pid"));
    assert!(last_ack.is_some() && first_retire.is_some(), "{msgs:?}");
    assert!(
        last_ack < first_retire,
        "retired before all acked: {msgs:?}"
    );
    assert_eq!(
        msgs.iter().filter(|s| s.contains("retired pid")).count(),
        3,
        "{msgs:?}"
    );

    let mut saw_full_fleet = false;
    for st in &samples {
        let ws = workers(st, "web");
        let new_unacked = ws
            .iter()
            .filter(|w| w["version"] == 2 && w["state"] != "acked")
            .count();
        let old_draining = ws
            .iter()
            .filter(|w| w["version"] == 1 && w["state"] == "draining")
            .count();
        let new_started = ws.iter().filter(|w| w["version"] == 2).count();
        let acked = ws.iter().filter(|w| w["state"] == "acked").count();
        assert!(
            new_unacked == 0 || old_draining == 0,
            "old retired while new unacked: {ws:?}"
        );
        assert!(acked >= 3, "fewer than count acked: {ws:?}");
        saw_full_fleet |= new_started == 3 && new_unacked == 3;
    }
    assert!(
        saw_full_fleet,
        "never saw all 3 new workers started together"
    );
    let new = wait_settled_at(&m, "web", 3, 2);
    assert!(old.is_disjoint(&new));
}

#[test]
fn an_upgrade_during_an_upgrade_supersedes_it() {
    let m = MasterBuilder::config(&pool_toml(2, ""))
        .files(&[("w.sh", &script("v1", ""))])
        .start();
    let old = wait_settled_at(&m, "web", 2, 1);
    // Version 2 would take 30 s to ack: it is still rolling when version 3 comes.
    m.put_file("w.sh", &script("v2", "--ack-delay-ms 30000"));
    let sock = m.sock.clone();
    let first =
        std::thread::spawn(move || request_at(&sock, &json!({"command": "upgrade", "id": 1})));
    wait_for("a version 2 worker to run", WAIT, || {
        let st = m.state();
        workers(&st, "web")
            .iter()
            .any(|w| w["version"] == 2 && w["pid"].is_i64())
            .then_some(())
    });
    m.put_file("w.sh", &script("v3", ""));
    let out = m.ctl(&["-e", "upgrade"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "second upgrade: {stdout}");
    assert_eq!(stdout.lines().last(), Some("Upgrade done"), "{stdout}");

    let first = first.join().expect("first requester");
    let last = first.last().expect("first requester got a reply");
    assert_eq!(last["error"], true, "{first:?}");
    let text = last["message"].as_str().unwrap_or("");
    assert!(text.contains("superseded by upgrade #2"), "{text}");

    let new = wait_settled_at(&m, "web", 2, 3);
    assert!(old.is_disjoint(&new));
    let addr = m.addr("web");
    let body = http_get(&addr, "/").expect("serves");
    assert!(body.contains("version=v3"), "{body}");
}

#[test]
fn sighup_rolls_every_pool() {
    let m = MasterBuilder::config(
        r#"
[control]
socket = "{sock}"
[pools.web]
command = ["/bin/sh", "{dir}/w.sh"]
count = 2
binds = ["127.0.0.1:0"]
ack = "manual"
[pools.api]
command = ["/bin/sh", "{dir}/w.sh"]
count = 1
binds = ["127.0.0.1:0"]
ack = "manual"
"#,
    )
    .files(&[("w.sh", &script("v1", ""))])
    .start();
    let web = wait_settled_at(&m, "web", 2, 1);
    let api = wait_settled_at(&m, "api", 1, 1);
    m.put_file("w.sh", &script("v2", ""));
    m.signal(libc::SIGHUP);
    let web2 = wait_settled_at(&m, "web", 2, 2);
    let api2 = wait_settled_at(&m, "api", 1, 2);
    assert!(web.is_disjoint(&web2) && api.is_disjoint(&api2));
    for pool in ["web", "api"] {
        let addr = m.addr(pool);
        let body = http_get(&addr, "/").expect("serves");
        assert!(body.contains("version=v2"), "{pool}: {body}");
        let st = m.state();
        assert_eq!(st["pools"][pool]["last_upgrade"]["ok"], true, "{pool}");
    }
}

#[test]
fn old_workers_that_ignore_the_stop_signal_are_killed_after_stop_timeout() {
    let m = MasterBuilder::config(&pool_toml(2, "stop_timeout = \"300ms\""))
        .files(&[("w.sh", &script("v1", "--ignore-stop"))])
        .start();
    let old = wait_settled_at(&m, "web", 2, 1);
    m.put_file("w.sh", &script("v2", ""));
    let msgs = messages(&m.request(json!({"command": "upgrade"})));
    assert_eq!(
        msgs.last().map(String::as_str),
        Some("Upgrade done"),
        "{msgs:?}"
    );
    let new = wait_settled_at(&m, "web", 2, 2);
    assert!(old.is_disjoint(&new));
    for pid in &old {
        wait_for(format!("old worker {pid} to be gone"), WAIT, || {
            (!alive(*pid as i32)).then_some(())
        });
        let log = m.log_text();
        assert!(
            log.contains(&format!(
                "http_worker pid={pid} ignoring stop signal SIGUSR2"
            )),
            "{log}"
        );
        assert!(
            log.contains(&format!(
                "worker pid {pid} still alive 300ms after its stop signal: sending SIGKILL"
            )),
            "no SIGKILL escalation logged for {pid}:\n{log}"
        );
        assert!(
            log.contains(&format!("worker pid {pid} exited (killed by SIGKILL)")),
            "{log}"
        );
    }
}

#[test]
fn max_unacked_and_max_surge_hold_with_real_processes() {
    // Pool `a` is bound by max_unacked (1), pool `b` by max_surge (2); both roll
    // in one upgrade. A slow ack stretches the upgrade so the sampler sees it.
    let pool = |name: &str, bounds: &str| {
        format!(
            r#"
[pools.{name}]
command = ["/bin/sh", "{{dir}}/w.sh"]
count = 4
binds = ["127.0.0.1:0"]
ack = "manual"
{bounds}
"#
        )
    };
    let toml = format!(
        "[control]\nsocket = \"{{sock}}\"\n[watch]\nenabled = false\n{}{}",
        pool("a", "max_unacked = 1\nmax_surge = 4"),
        pool("b", "max_unacked = 4\nmax_surge = 2")
    );
    let m = MasterBuilder::config(&toml)
        .files(&[("w.sh", &script("v1", ""))])
        .start();
    wait_settled_at(&m, "a", 4, 1);
    wait_settled_at(&m, "b", 4, 1);
    m.put_file("w.sh", &script("v2", "--ack-delay-ms 200"));
    let sampler = Sampler::start(m.sock.clone());
    let msgs = messages(&m.request(json!({"command": "upgrade"})));
    let samples = sampler.finish();
    assert_eq!(
        msgs.last().map(String::as_str),
        Some("Upgrade done"),
        "{msgs:?}"
    );
    assert!(samples.len() >= 10, "only {} samples", samples.len());

    let mut peak = std::collections::BTreeMap::new();
    for st in &samples {
        for (pool, max_live, max_unacked) in [("a", 5, 1), ("b", 6, 2)] {
            let ws = workers(st, pool);
            let live = ws.iter().filter(|w| w["state"] != "draining").count();
            let unacked = ws
                .iter()
                .filter(|w| w["state"] == "unacked" || w["state"] == "spawning")
                .count();
            let acked = ws.iter().filter(|w| w["state"] == "acked").count();
            assert!(
                live <= max_live,
                "pool {pool}: {live} non-draining > count + surge: {ws:?}"
            );
            assert!(
                unacked <= max_unacked,
                "pool {pool}: {unacked} unacked: {ws:?}"
            );
            assert!(acked >= 4, "pool {pool}: only {acked} acked: {ws:?}");
            let e = peak.entry(pool).or_insert((0, 0));
            *e = (e.0.max(live), e.1.max(unacked));
        }
    }
    // The bounds were reached, not just respected by an idle pool.
    assert_eq!(peak["a"], (5, 1), "peaks {peak:?}");
    assert_eq!(peak["b"], (6, 2), "peaks {peak:?}");
    wait_settled_at(&m, "a", 4, 2);
    wait_settled_at(&m, "b", 4, 2);
}

#[test]
fn a_request_on_an_idle_keep_alive_connection_of_a_retired_worker_is_served() {
    // The client cannot know the worker is draining: a request it writes on its
    // idle keep-alive connection must be answered (with `Connection: close`), not
    // met with EOF or a reset.
    let m = MasterBuilder::config(&pool_toml(1, ""))
        .files(&[("w.sh", &script("v1", "--drain-idle-ms 20000"))])
        .start();
    let old = wait_settled_at(&m, "web", 1, 1);
    let old_pid = *old.first().expect("one worker");
    let addr = m.addr("web");
    let s = TcpStream::connect(&addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).ok();
    let mut conn = BufReader::new(s);
    let get = |conn: &mut BufReader<TcpStream>| {
        conn.get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("write request");
        read_response(conn)
    };
    let (body, close) = get(&mut conn).expect("first response");
    assert!(
        body.contains(&format!("pid={old_pid} ")) && !close,
        "{body}"
    );

    m.put_file("w.sh", &script("v2", ""));
    let msgs = messages(&m.request(json!({"command": "upgrade"})));
    assert_eq!(
        msgs.last().map(String::as_str),
        Some("Upgrade done"),
        "{msgs:?}"
    );
    let draining = format!("http_worker pid={old_pid} stopping on SIGUSR2");
    wait_for("the old worker to start draining", WAIT, || {
        m.log_text().contains(&draining).then_some(())
    });
    let (body, close) = get(&mut conn).expect("request on the idle connection is served");
    assert!(body.contains(&format!("pid={old_pid} ")), "{body}");
    assert!(
        close,
        "a draining worker must answer with Connection: close"
    );
    let mut rest = Vec::new();
    assert_eq!(
        conn.read_to_end(&mut rest).ok(),
        Some(0),
        "not closed cleanly"
    );
    wait_for("the old worker to exit", WAIT, || {
        (!alive(old_pid as i32)).then_some(())
    });
}

/// `upgrade` of every pool used to answer "Upgrade done" as soon as the first pool
/// (by name) finished, which a pool with no workers does at once: the client was
/// told the upgrade was over while the other pools had not even started theirs.
#[test]
fn upgrading_every_pool_waits_for_all_even_when_one_has_no_workers() {
    let m = MasterBuilder::config(
        r#"
[control]
socket = "{sock}"
[pools.a]
command = ["{worker}"]
count = 0
binds = ["127.0.0.1:0"]
ack = "manual"
[pools.b]
command = ["{worker}"]
count = 1
binds = ["127.0.0.1:0"]
ack = "manual"
"#,
    )
    .start();
    m.wait_acked("b", 1);
    let msgs = messages(&m.request(json!({"command": "upgrade", "id": 1})));
    assert_eq!(
        msgs.last().map(String::as_str),
        Some("Upgrade done"),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|s| s.contains("pool b: upgrade done")),
        "the final reply came before pool b's upgrade finished: {msgs:?}"
    );
}
