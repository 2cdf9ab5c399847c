//! Safer rollouts with real processes under a request loop: canaries that are
//! promoted, rolled back by hand or by their own crash, rollback to the
//! previous release of a symlink-swap deploy, and recycling of workers that
//! grow too large or too old. Every one loses no request.
//!
//! As in upgrades.rs, the pool runs `/bin/sh {dir}/w.sh` and a test swaps that
//! wrapper (by rename) to deploy a new version before asking for the rollout.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

fn pool_toml(count: usize, extra: &str) -> String {
    format!(
        r#"
[control]
socket = "{{sock}}"
[watch]
enabled = false
[pools.web]
command = ["/bin/sh", "{{dir}}/w.sh"]
count = {count}
binds = ["127.0.0.1:0"]
ack = "manual"
stop_timeout = "10s"
{extra}
"#
    )
}

fn script(version: &str, flags: &str) -> String {
    format!("exec {{worker}} --version-tag {version} {flags}\n")
}

/// The pool's workers by version: version -> (acked, total), draining ones
/// left out.
fn by_version(st: &Value) -> std::collections::BTreeMap<u64, (usize, usize)> {
    let mut m = std::collections::BTreeMap::new();
    for w in workers(st, "web") {
        if w["state"] == "draining" {
            continue;
        }
        let e = m
            .entry(w["version"].as_u64().unwrap_or(0))
            .or_insert((0, 0));
        e.1 += 1;
        if w["state"] == "acked" {
            e.0 += 1;
        }
    }
    m
}

/// Wait until the pool holds a canary: `n` acked canaries and the rest acked
/// on the base version. The state.
fn wait_holding(m: &Master, n: usize, count: usize) -> Value {
    m.wait_state("the canary to hold", WAIT, |st| {
        let c = &st["pools"]["web"]["canary"];
        let holding = c["holding_secs"].is_number();
        let v = by_version(st);
        let canary = c["version"].as_u64()?;
        let base = c["base_version"].as_u64()?;
        let ok = holding
            && v.get(&canary) == Some(&(n, n))
            && v.get(&base) == Some(&(count - n, count - n));
        ok.then(|| st.clone())
    })
}

/// Wait until the pool runs only `version`, `count` acked, nothing draining.
fn wait_only(m: &Master, version: u64, count: usize) {
    m.wait_state(&format!("the pool at version {version} only"), WAIT, |st| {
        let ws = workers(st, "web");
        let ok = st["pools"]["web"]["upgrading"].is_null()
            && ws.len() == count
            && ws
                .iter()
                .all(|w| w["state"] == "acked" && w["version"] == version);
        ok.then_some(())
    });
}

/// Both clients (a new connection per request, and keep-alive) saw no
/// failure.
fn no_failures(loads: Vec<Load>) {
    for l in loads {
        let what = l.what;
        let (ok, failures) = l.finish();
        assert!(ok > 0, "the {what} made no request");
        assert!(
            failures.is_empty(),
            "the {what} failed {} of {}: {failures:?}",
            failures.len(),
            ok + failures.len() as u64
        );
    }
}

#[test]
fn a_canary_holds_both_versions_then_is_promoted_losing_nothing() {
    let m = MasterBuilder::config(&pool_toml(4, ""))
        .files(&[("w.sh", &script("v1", ""))])
        .start();
    m.wait_acked("web", 4);
    let addr = m.addr("web");
    let loads = vec![Load::start(&addr, false), Load::start(&addr, true)];
    loads[0].wait_more(20);
    m.put_file("w.sh", &script("v2", ""));
    // The ctl flag, through the real client: the reply ends once the canary holds.
    let out = m.ctl(&["--pool", "web", "upgrade", "--canary", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("holding"), "{stdout}");
    let st = wait_holding(&m, 1, 4);
    let canaries: Vec<Value> = workers(&st, "web")
        .into_iter()
        .filter(|w| w["canary"] == true)
        .collect();
    assert_eq!(canaries.len(), 1, "canaries identifiable in state: {st}");
    let status = m.cmd("status", &[], Some("web")).0;
    assert!(
        status.contains("canary:") && status.contains("acked canary"),
        "{status}"
    );
    // Both versions serve.
    loads[0].wait_version("v1");
    loads[0].wait_version("v2");
    // Promote: streams until the rest of the pool is on v2.
    let replies = m.request(json!({"command": "promote", "pool": "web", "id": 3}));
    let msgs = messages(&replies);
    assert_eq!(
        msgs.last().map(String::as_str),
        Some("Upgrade done"),
        "{msgs:?}"
    );
    wait_only(
        &m,
        st["pools"]["web"]["canary"]["version"]
            .as_u64()
            .unwrap_or(0),
        4,
    );
    no_failures(loads);
}

#[test]
fn a_rolled_back_canary_restores_the_old_version_losing_nothing() {
    let m = MasterBuilder::config(&pool_toml(3, "canary = 1"))
        .files(&[("w.sh", &script("v1", ""))])
        .start();
    m.wait_acked("web", 3);
    let v1 = m.version("web");
    let addr = m.addr("web");
    let loads = vec![Load::start(&addr, false), Load::start(&addr, true)];
    loads[0].wait_more(20);
    m.put_file("w.sh", &script("v2", ""));
    // The pool's own `canary = 1` makes a plain upgrade a canary.
    let msgs = messages(&m.request(json!({"command": "upgrade", "id": 1})));
    assert!(msgs.iter().any(|s| s.contains("holding")), "{msgs:?}");
    wait_holding(&m, 1, 3);
    loads[0].wait_version("v2");
    let msgs = messages(&m.request(json!({"command": "rollback", "id": 2})));
    assert_eq!(
        msgs.last().map(String::as_str),
        Some("Upgrade done"),
        "{msgs:?}"
    );
    assert!(msgs.iter().any(|s| s.contains("rolling back")), "{msgs:?}");
    wait_only(&m, v1, 3);
    no_failures(loads);
}

/// A symlink-swap deploy (`current` -> a release directory), as the crash and
/// rollback tests need: a replacement of the old version must run the old
/// release's files, not what `current` names after the swap.
fn release_pool(count: usize) -> MasterBuilder {
    let cfg = format!(
        r#"
[control]
socket = "{{sock}}"
[watch]
enabled = false
[pools.web]
command = ["/bin/sh", "w.sh"]
cwd = "{{dir}}/current"
count = {count}
binds = ["127.0.0.1:0"]
ack = "manual"
stop_timeout = "10s"
"#
    );
    MasterBuilder::config(&cfg).prepare(|d| {
        std::fs::create_dir_all(d.join("r1")).expect("mkdir r1");
        std::fs::write(
            d.join("r1/w.sh"),
            script("r1", "").replace("{worker}", &http_worker().to_string_lossy()),
        )
        .expect("write r1");
        std::os::unix::fs::symlink(d.join("r1"), d.join("current")).expect("symlink");
    })
}

/// Deploy release `name` with these worker flags: write it, swap `current`.
fn deploy(m: &Master, name: &str, flags: &str) {
    let dir = m.dir.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir release");
    std::fs::write(
        dir.join("w.sh"),
        script(name, flags).replace("{worker}", &http_worker().to_string_lossy()),
    )
    .expect("write release");
    let tmp = m.dir.join("current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&dir, &tmp).expect("symlink");
    std::fs::rename(&tmp, m.dir.join("current")).expect("swap the link");
}

#[test]
fn a_canary_that_crashes_rolls_back_by_itself() {
    let m = release_pool(3).start();
    m.wait_acked("web", 3);
    let v1 = m.version("web");
    let addr = m.addr("web");
    let loads = vec![Load::start(&addr, false), Load::start(&addr, true)];
    loads[0].wait_more(20);
    // r2 acks, then dies on its own after 1.5 s (cleanly: it finishes what it
    // accepted, as a worker that gives up on a fatal error would): it passes
    // the canary's start and fails while holding.
    deploy(&m, "r2", "--fail-after-ms 1500 --exit-code 7");
    let msgs =
        messages(&m.request(json!({"command": "upgrade", "args": ["--canary", "1"], "id": 1})));
    assert!(msgs.iter().any(|s| s.contains("holding")), "{msgs:?}");
    let events = m.wait_state("the canary to roll back", WAIT, |_| {
        let ev = m.cmd("events", &[], None).0;
        ev.lines()
            .any(|l| l.contains("\"event\":\"canary_rolled_back\""))
            .then_some(ev)
    });
    assert!(
        events
            .lines()
            .any(|l| l.contains("canary_rolled_back") && l.contains("exit status 7")),
        "{events}"
    );
    wait_only(&m, v1, 3);
    // The replacement of the canary runs r1 again, although `current` is r2.
    let st = m.state();
    for w in workers(&st, "web") {
        let pid = w["pid"].as_i64().unwrap_or(0) as i32;
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        assert!(
            cwd.ends_with("r1"),
            "worker {pid} runs in {}",
            cwd.display()
        );
    }
    no_failures(loads);
}

/// A symlink-swap deploy: `current` -> `r1`, upgraded to `r2` by swapping the
/// link; `rollback` then runs r1's files again (still on disk, unchanged),
/// although `current` still names r2. If r1 is gone, it says so and does
/// nothing.
#[test]
fn rollback_after_a_finished_upgrade_runs_the_previous_release() {
    let m = release_pool(2).start();
    m.wait_acked("web", 2);
    let addr = m.addr("web");
    let loads = vec![Load::start(&addr, false), Load::start(&addr, true)];
    loads[0].wait_version("r1");
    // Deploy r2: swap the link, upgrade.
    deploy(&m, "r2", "");
    let msgs = messages(&m.request(json!({"command": "upgrade", "id": 1})));
    assert_eq!(
        msgs.last().map(String::as_str),
        Some("Upgrade done"),
        "{msgs:?}"
    );
    loads[0].wait_version("r2");
    let st = m.state();
    assert_eq!(st["pools"]["web"]["previous_version"], 1, "{st}");
    // Roll back: r1 again, through its recorded files.
    let msgs = messages(&m.request(json!({"command": "rollback", "id": 2})));
    assert_eq!(
        msgs.last().map(String::as_str),
        Some("Upgrade done"),
        "{msgs:?}"
    );
    let v = m.version("web");
    wait_only(&m, v, 2);
    let body = http_get(&addr, "/").expect("serves");
    assert!(body.contains("version=r1"), "rolled back to r1: {body}");
    let st = m.state();
    let cwd = &st["pools"]["web"]["releases"][v.to_string()]["cwd"];
    assert!(cwd.as_str().unwrap_or("").ends_with("/r1"), "{st}");
    // Rolling back again goes to r2; with r2 gone it refuses and changes nothing.
    std::fs::remove_dir_all(m.dir.join("r2")).expect("remove r2");
    let replies = m.request(json!({"command": "rollback", "id": 3}));
    let last = replies.last().cloned().unwrap_or_default();
    assert_eq!(last["error"], true, "{replies:?}");
    let msg = last["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("gone") && msg.contains("nothing was changed"),
        "{msg}"
    );
    assert_eq!(m.version("web"), v);
    no_failures(loads);
}

#[test]
fn a_worker_that_grows_past_max_rss_is_recycled_losing_nothing() {
    let m = MasterBuilder::config(&pool_toml(
        3,
        "max_rss = \"64MiB\"\nmax_rss_interval = \"200ms\"",
    ))
    .files(&[("w.sh", &script("v1", ""))])
    .start();
    let pids = m.wait_acked("web", 3);
    let addr = m.addr("web");
    let loads = vec![Load::start(&addr, false), Load::start(&addr, true)];
    loads[0].wait_more(20);
    // One worker leaks 100 MiB; the body says which.
    let body = http_get(&addr, "/grow?mb=100").expect("grow");
    let grown = pid_of_body(&body).expect("pid in the body");
    assert!(pids.contains(&grown));
    m.wait_state("the grown worker to be replaced", WAIT, |st| {
        let ws = workers(st, "web");
        let live: Vec<i64> = ws
            .iter()
            .filter(|w| w["state"] == "acked")
            .filter_map(|w| w["pid"].as_i64())
            .collect();
        (live.len() == 3 && !live.contains(&(grown as i64)) && ws.len() == 3).then_some(())
    });
    let events = m.cmd("events", &[], None).0;
    assert!(
        events
            .lines()
            .any(|l| l.contains("\"event\":\"recycling\"") && l.contains("max_rss")),
        "{events}"
    );
    // The others were left alone.
    let now = m.pids("web", "acked");
    assert_eq!(
        now.iter().filter(|p| pids.contains(p)).count(),
        2,
        "{now:?}"
    );
    no_failures(loads);
}

#[test]
fn workers_older_than_max_age_are_recycled_losing_nothing() {
    let m = MasterBuilder::config(&pool_toml(
        2,
        "max_age = \"1s\"\nmax_age_jitter = \"200ms\"",
    ))
    .files(&[("w.sh", &script("v1", ""))])
    .start();
    let first = m.wait_acked("web", 2);
    let addr = m.addr("web");
    let loads = vec![Load::start(&addr, false), Load::start(&addr, true)];
    loads[0].wait_more(20);
    // Both first workers are replaced once they are older than max_age.
    m.wait_state("both first workers recycled", WAIT, |st| {
        let ws = workers(st, "web");
        let acked: Vec<i64> = ws
            .iter()
            .filter(|w| w["state"] == "acked")
            .filter_map(|w| w["pid"].as_i64())
            .collect();
        (acked.len() == 2 && acked.iter().all(|p| !first.contains(&(*p as i32)))).then_some(())
    });
    assert_eq!(
        m.state()["pools"]["web"]["version"],
        1,
        "recycling is not an upgrade"
    );
    no_failures(loads);
}
