//! Configuration reloads (BRIEF §6; issue 5): config edits (watcher, `reload`,
//! SIGHUP) apply as a per-pool diff; an invalid edit changes nothing and says
//! why; a kept bind keeps its socket through a roll; a failed roll falls back
//! to the old sockets; a pool re-added while its namesake drains starts at once.
//!
//! The pools run a copy of the example worker in the test's temp dir (`{dir}/app`),
//! so a test can replace it without touching the shared build output.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::rolls::{pool_toml, watch_head};
use crate::support::*;

const LONG: Duration = Duration::from_secs(30);

/// Can a TCP client connect to `port` right now?
fn accepts(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn editing_count_scales_without_a_new_version() {
    let cfg = |n| {
        format!(
            "{}{}",
            watch_head("100ms"),
            pool_toml("web", "\"{dir}/app\"", n, "")
        )
    };
    let m = MasterBuilder::config(&cfg(2))
        .prepare(|d| {
            copy_worker(&d.join("app"));
        })
        .start();
    let old = m.wait_acked("web", 2);
    let v = m.version("web");
    m.write_config(&cfg(4));
    let now = m.wait_acked("web", 4);
    assert!(
        old.iter().all(|p| now.contains(p)),
        "{old:?} not kept in {now:?}"
    );
    assert_eq!(m.version("web"), v);
    m.write_config(&cfg(1));
    let one = m.wait_acked("web", 1);
    assert_eq!(m.version("web"), v);
    assert!(now.contains(&one[0]));
}

/// A roll caused by another key keeps a count set at run time (`set_workers`),
/// since the file's count did not change; an edited count still applies.
#[test]
fn a_roll_keeps_a_count_set_at_run_time() {
    let cfg = |n, env: &str| {
        format!(
            "{}{}",
            watch_head("100ms"),
            pool_toml(
                "web",
                "\"{dir}/app\"",
                n,
                &format!("env = {{ REV = \"{env}\" }}")
            )
        )
    };
    let m = MasterBuilder::config(&cfg(2, "a"))
        .prepare(|d| {
            copy_worker(&d.join("app"));
        })
        .start();
    m.wait_acked("web", 2);
    let (msg, err) = m.cmd("set_workers", &["3"], Some("web"));
    assert!(!err, "{msg}");
    let old = m.wait_acked("web", 3);
    let v = m.version("web");
    m.write_config(&cfg(2, "b"));
    let (msg, err) = m.cmd("reload", &[], None);
    assert!(!err, "{msg}");
    let old = m.wait_rolled("web", v + 1, 3, &old);
    // The file's count edited: that one applies, with the roll.
    m.write_config(&cfg(4, "c"));
    let (msg, err) = m.cmd("reload", &[], None);
    assert!(!err, "{msg}");
    m.wait_rolled("web", v + 2, 4, &old);
}

#[test]
fn adding_and_removing_pools() {
    let (pw, pa, pj) = (free_port(), free_port(), free_port());
    let web = pool_toml(
        "web",
        "\"{dir}/app\"",
        1,
        &format!("binds = [\"127.0.0.1:{pw},r\"]"),
    );
    let api = pool_toml(
        "api",
        "\"{worker}\"",
        2,
        &format!("binds = [\"127.0.0.1:{pa},r\"]"),
    );
    let jobs = pool_toml(
        "jobs",
        "\"{worker}\"",
        1,
        &format!("binds = [\"127.0.0.1:{pj},r\"]"),
    );
    let m = MasterBuilder::config(&format!("{}{web}{api}", watch_head("100ms")))
        .prepare(|d| copy_worker(&d.join("app")))
        .start();
    let w = m.wait_acked("web", 1);
    let a = m.wait_acked("api", 2);
    assert!(!accepts(pj));
    m.write_config(&format!("{}{web}{jobs}", watch_head("100ms")));
    let j = m.wait_acked("jobs", 1);
    let body = http_get(&format!("127.0.0.1:{pj}"), "/").expect("jobs serves");
    assert!(body.contains(&format!("pid={} ", j[0])), "{body}");
    for pid in &a {
        wait_for("api worker to exit", LONG, || (!alive(*pid)).then_some(()));
    }
    wait_for("api to leave state", LONG, || {
        m.state()["pools"].get("api").is_none().then_some(())
    });
    wait_for("api port to close", LONG, || (!accepts(pa)).then_some(()));
    assert_eq!(m.wait_acked("web", 1), w);
    http_get(&format!("127.0.0.1:{pw}"), "/").expect("web still serves");
}

#[test]
fn an_invalid_edit_changes_nothing_and_says_why() {
    let (pw, pa) = (free_port(), free_port());
    let held = TcpListener::bind("127.0.0.1:0").expect("bind a port to hold");
    let hp = held.local_addr().expect("held addr").port();
    let web = pool_toml(
        "web",
        "\"{dir}/app\"",
        2,
        &format!("binds = [\"127.0.0.1:{pw},r\"]"),
    );
    let api = pool_toml(
        "api",
        "\"{worker}\"",
        1,
        &format!("binds = [\"127.0.0.1:{pa},r\"]"),
    );
    let good = format!("{}{web}{api}", watch_head("100ms"));
    let m = MasterBuilder::config(&good)
        .prepare(|d| {
            copy_worker(&d.join("app"));
        })
        .start();
    let w = m.wait_acked("web", 2);
    let a = m.wait_acked("api", 1);
    let (wv, av) = (m.version("web"), m.version("api"));
    // (config text, the text on the offending line, what the message must name)
    let bad_cases = [
        (
            good.replace("count = 2", "count = "),
            "count = ",
            "TOML syntax error",
        ),
        (
            good.replace("count = 2", "count = 2\ncolour = \"red\""),
            "colour",
            "colour",
        ),
        (
            good.replace(
                &format!("\"127.0.0.1:{pw},r\""),
                &format!("\"127.0.0.1:{pw},r\", \"127.0.0.1:{hp}\""),
            ),
            &format!("{hp}"),
            "pools.web.binds[1]",
        ),
    ];
    let cfg_path = m.config_path().to_string_lossy().into_owned();
    for (text, marker, key) in &bad_cases {
        let line = 1 + text
            .lines()
            .position(|l| l.contains(marker))
            .expect("marker in config");
        let at = format!("{cfg_path}:{line}:");
        m.write_config(text);
        // The watcher picks the edit up and records the failure.
        wait_for(
            format!("the watcher to refuse the edit naming {key}"),
            LONG,
            || {
                let st = m.state();
                let r = &st["master"]["last_reload"];
                (r["trigger"] == "config file changed" && r["ok"] == false).then_some(())
            },
        );
        let out = m.ctl(&["status"]);
        let status = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(status.contains("last reload"), "{status}");
        assert!(status.contains("FAILED"), "{status}");
        assert!(
            status.contains(&at) && status.contains(key),
            "{at} {key}: {status}"
        );
        // And the reload command says why, with the file and line.
        let out = m.ctl(&["-e", "reload"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(text.contains("configuration unchanged"), "{text}");
        assert!(
            text.contains(&at) && text.contains(key),
            "{at} {key}: {text}"
        );
        // Nothing changed.
        assert_eq!(m.wait_acked("web", 2), w);
        assert_eq!(m.wait_acked("api", 1), a);
        assert_eq!((m.version("web"), m.version("api")), (wv, av));
        assert!(accepts(pw) && accepts(pa));
    }
    drop(held);
    // A good edit after the bad ones applies.
    m.write_config(&good.replace("count = 2", "count = 3"));
    m.wait_acked("web", 3);
}

#[test]
fn reload_command_and_hup_apply_the_diff_hup_rolls_the_rest() {
    let mk = |n: usize, tag: &str| {
        format!(
            "[control]\nsocket = \"{{sock}}\"\n[watch]\nenabled = false\n{}{}",
            pool_toml(
                "web",
                &format!("\"{{dir}}/app\", \"--version-tag\", \"{tag}\""),
                n,
                ""
            ),
            pool_toml("api", "\"{worker}\"", 1, "")
        )
    };
    let m = MasterBuilder::config(&mk(1, "a"))
        .prepare(|d| copy_worker(&d.join("app")))
        .start();
    let w = m.wait_acked("web", 1);
    let a = m.wait_acked("api", 1);
    let (wv, av) = (m.version("web"), m.version("api"));

    // `reload`: count 1 -> 2 scales, api untouched.
    m.write_config(&mk(2, "a"));
    let (msg, err) = m.cmd("reload", &[], None);
    assert!(!err, "{msg}");
    assert!(msg.contains("scaled web 1 -> 2"), "{msg}");
    let w2 = m.wait_acked("web", 2);
    assert!(w2.contains(&w[0]));
    assert_eq!(m.wait_acked("api", 1), a);
    assert_eq!((m.version("web"), m.version("api")), (wv, av));

    // HUP: web's args changed so it rolls once; api is unchanged but HUP rolls it.
    m.write_config(&mk(2, "b"));
    m.signal(libc::SIGHUP);
    m.wait_rolled("web", wv + 1, 2, &w2);
    m.wait_rolled("api", av + 1, 1, &a);
    let st = m.state();
    assert_eq!(st["master"]["last_reload"]["trigger"], "SIGHUP");
    assert_eq!(st["master"]["last_reload"]["ok"], true);
    assert_eq!(m.version("web"), wv + 1, "web rolled twice");
}

#[test]
fn a_kept_bind_keeps_its_socket_through_a_rolling_reload() {
    let port = free_port();
    let mk = |tag: &str| {
        format!(
            "[control]\nsocket = \"{{sock}}\"\n[watch]\nenabled = false\n{}",
            pool_toml(
                "web",
                &format!("\"{{dir}}/app\", \"--version-tag\", \"{tag}\""),
                2,
                &format!("binds = [\"127.0.0.1:{port},r\"]")
            ),
        )
    };
    let m = MasterBuilder::config(&mk("a"))
        .prepare(|d| copy_worker(&d.join("app")))
        .start();
    let old = m.wait_acked("web", 2);
    let v = m.version("web");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = {
        let (stop, ok, failed, errors) = (stop.clone(), ok.clone(), failed.clone(), errors.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match http_get(&format!("127.0.0.1:{port}"), "/") {
                    Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        errors.lock().expect("errors lock").push(e.to_string());
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        })
    };
    wait_for("the client loop to get answers", LONG, || {
        (ok.load(Ordering::SeqCst) > 10).then_some(())
    });
    m.write_config(&mk("b"));
    let (msg, err) = m.cmd("reload", &[], None);
    assert!(!err && msg.contains("rolling web"), "{msg}");
    m.wait_rolled("web", v + 1, 2, &old);
    for pid in &old {
        wait_for("old worker to exit", LONG, || (!alive(*pid)).then_some(()));
    }
    // Some answers from the new version, through the same loop.
    let before = ok.load(Ordering::SeqCst);
    wait_for("answers after the roll", LONG, || {
        (ok.load(Ordering::SeqCst) > before + 10).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    client.join().expect("client thread");
    let body = http_get(&format!("127.0.0.1:{port}"), "/").expect("served");
    assert!(body.contains("version=b"), "{body}");
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "errors during the reload: {:?}",
        errors.lock().expect("errors lock")
    );
}

/// A reload that changes a pool's binds and command, whose new version then
/// fails: the pool falls back to its old version and, with it, to its old
/// sockets. A worker respawned afterwards gets one socket, as before, and the
/// address only the failed version wanted is closed.
#[test]
fn a_failed_roll_that_changed_binds_falls_back_to_the_old_sockets() {
    let (p1, p2) = (free_port(), free_port());
    let base = format!(
        "{}{}",
        watch_head("100ms"),
        pool_toml(
            "web",
            "\"{worker}\"",
            2,
            &format!("binds = [\"127.0.0.1:{p1},r\"]\nretries = 1\nrespawn_delay = \"100ms\"")
        )
    );
    let m = MasterBuilder::config(&base).args(&["--no-watch"]).start();
    let old = m.wait_acked("web", 2);
    // New version: a second bind, and a program that exits at once.
    m.write_config(&format!(
        "{}{}",
        watch_head("100ms"),
        pool_toml(
            "web",
            "\"/bin/false\"",
            2,
            &format!(
                "binds = [\"127.0.0.1:{p1},r\", \"127.0.0.1:{p2},r\"]\nretries = 1\nrespawn_delay = \"100ms\""
            )
        )
    ));
    let (msg, err) = m.cmd("reload", &[], None);
    assert!(!err && msg.contains("rolling web"), "{msg}");
    wait_for("the roll to fail", Duration::from_secs(20), || {
        let st = m.state();
        (st["pools"]["web"]["last_upgrade"]["ok"] == false).then_some(())
    });
    assert_eq!(m.wait_acked("web", 2), old, "old workers keep serving");
    let st = m.state();
    assert_eq!(
        st["pools"]["web"]["binds"].as_array().map(Vec::len),
        Some(1),
        "{st}"
    );
    wait_for(
        "the failed version's port to close",
        Duration::from_secs(10),
        || (!accepts(p2)).then_some(()),
    );
    // A respawn of the old version gets the old socket set.
    unsafe {
        libc::kill(old[0], libc::SIGKILL);
    }
    let now = wait_for("a replacement worker", Duration::from_secs(20), || {
        let acked = m.pids("web", "acked");
        (acked.len() == 2 && !acked.contains(&old[0])).then_some(acked)
    });
    let fresh = now.into_iter().find(|p| *p != old[1]).expect("the new pid");
    let env = std::fs::read(format!("/proc/{fresh}/environ")).expect("environ");
    let env = String::from_utf8_lossy(&env);
    assert!(
        env.split('\0').any(|v| v == "EINHORN_FD_COUNT=1"),
        "respawned worker got the wrong sockets: {}",
        env.replace('\0', " ")
    );
    assert!(accepts(p1));
}

const TWO_POOLS: &str = r#"
[control]
socket = "{sock}"
[pools.web]
command = ["{worker}"]
count = 1
binds = ["127.0.0.1:0"]
ack = "manual"
[pools.api]
command = ["{worker}", "--ignore-stop"]
count = 1
binds = ["127.0.0.1:0"]
ack = "manual"
stop_timeout = "5s"
"#;

const WEB_ONLY: &str = r#"
[control]
socket = "{sock}"
[pools.web]
command = ["{worker}"]
count = 1
binds = ["127.0.0.1:0"]
ack = "manual"
"#;

/// A pool removed by a reload drains under its name; putting it back before it
/// had stopped used to be reported as "added" while the draining pool swallowed
/// the new config (it refused to start workers and was then dropped): the
/// configured pool silently never ran. And `upgrade` of the draining pool
/// answered "Upgrade done". Now the draining pool moves aside (`api~old`) and
/// the re-added one starts at once.
#[test]
fn a_pool_readded_while_it_still_drains_starts_at_once() {
    let m = MasterBuilder::config(TWO_POOLS).start();
    m.wait_acked("web", 1);
    let old = m.wait_acked("api", 1);
    m.write_config(WEB_ONLY);
    let (msg, err) = m.cmd("reload", &[], None);
    assert!(!err, "{msg}");
    let (msg, err) = m.cmd("upgrade", &[], Some("api"));
    assert!(err, "upgrade of a removed, draining pool succeeded: {msg}");
    assert!(msg.contains("api"), "{msg}");

    // The old api worker ignores its stop signal: it is still draining.
    m.write_config(TWO_POOLS);
    let (msg, err) = m.cmd("reload", &[], None);
    assert!(!err, "re-adding a draining pool was refused: {msg}");
    let new = m.wait_acked("api", 1);
    assert_ne!(new, old);
    let st = m.state();
    let aside = &st["pools"]["api~old"];
    assert_eq!(
        aside["workers"][0]["pid"].as_i64(),
        Some(i64::from(old[0])),
        "{st}"
    );
    assert_eq!(aside["workers"][0]["state"], "draining", "{st}");
    // It finishes draining (SIGKILL after stop_timeout) and disappears.
    wait_for(
        "the moved-aside pool to be gone",
        std::time::Duration::from_secs(30),
        || m.state()["pools"]["api~old"].is_null().then_some(()),
    );
    assert!(!alive(old[0]));
    assert_eq!(m.wait_acked("api", 1), new);
}

/// A config file rewritten in place by a writer that pauses midway: a prefix
/// of the new file can be a valid config (here, one that drops pool `api`),
/// but the watcher waits for the writer to close the file, so the prefix is
/// never applied and `api` never stops.
#[test]
fn a_half_written_config_is_never_applied() {
    use std::io::Write;
    let head = watch_head("100ms");
    let web = pool_toml("web", "\"{worker}\"", 1, "");
    let api = pool_toml("api", "\"{worker}\"", 1, "");
    let jobs = pool_toml("jobs", "\"{worker}\"", 1, "");
    let m = MasterBuilder::config(&format!("{head}{web}{api}")).start();
    m.wait_acked("web", 1);
    let api_pids = m.wait_acked("api", 1);
    // The new file: web, jobs, api. Its prefix up to the end of jobs is valid
    // and has no api.
    let full = m.expand(&format!("{head}{web}{jobs}{api}"));
    let cut = m.expand(&format!("{head}{web}{jobs}")).len();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.config_path())
        .expect("open config");
    f.write_all(&full.as_bytes()[..cut]).expect("write prefix");
    f.flush().expect("flush");
    // Well past the debounce with the prefix on disk: nothing is applied.
    holds_for(
        "the prefix not applied",
        Duration::from_millis(1500),
        || {
            let st = m.state();
            if st["pools"].get("api").is_some() && st["pools"].get("jobs").is_none() {
                Ok(())
            } else {
                Err(format!("the prefix was applied: {st}"))
            }
        },
    );
    f.write_all(&full.as_bytes()[cut..])
        .expect("write the rest");
    drop(f);
    m.wait_acked("jobs", 1);
    assert_eq!(m.wait_acked("api", 1), api_pids, "api was restarted");
    assert!(
        m.log_text().contains("waiting for the writer of"),
        "the log does not say why the reload waited:\n{}",
        m.log_text()
    );
}
