//! Hot redeploys end to end (BRIEF §6, §7; issue 5): real master, real workers, real
//! files. A watched file, a binary replaced by rename or a swapped symlink rolls
//! exactly the pool it belongs to; a burst rolls once; config edits (watcher,
//! `reload`, SIGHUP) apply as a per-pool diff; an invalid edit changes nothing and
//! says why; a kept bind keeps its socket through a roll; watching can be turned off.
//!
//! The pools run a copy of the example worker in the test's temp dir (`{dir}/app`),
//! so a test can replace it without touching the shared build output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(30);

/// Wait until `pool` is at `version` with exactly `n` acked workers, none of them
/// in `old`; the new pids.
fn wait_rolled(m: &mut Master, pool: &str, version: u64, n: usize, old: &[i32]) -> Vec<i32> {
    let log = m.log.clone();
    wait_for(
        &format!(
            "pool {pool} at version {version} with {n} new acked workers (log {})",
            log.display()
        ),
        LONG,
        || {
            let st = m.state();
            let p = &st["pools"][pool];
            if p["version"].as_u64()? != version {
                return None;
            }
            let ws = p["workers"].as_array()?;
            let acked: Vec<i32> = ws
                .iter()
                .filter(|w| w["state"] == "acked" && w["version"].as_u64() == Some(version))
                .filter_map(|w| w["pid"].as_i64().map(|p| p as i32))
                .collect();
            (ws.len() == n && acked.len() == n && acked.iter().all(|p| !old.contains(p))).then(
                || {
                    let mut v = acked;
                    v.sort_unstable();
                    v
                },
            )
        },
    )
}

fn pool_toml(name: &str, command: &str, count: usize, extra: &str) -> String {
    format!(
        "[pools.{name}]\ncommand = [{command}]\ncount = {count}\nack_timer = \"50ms\"\n\
         stop_timeout = \"5s\"\n{extra}\n"
    )
}

fn head(debounce: &str) -> String {
    format!("[control]\nsocket = \"{{sock}}\"\n[watch]\ndebounce = \"{debounce}\"\n")
}

/// Can a TCP client connect to `port` right now?
fn accepts(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn touching_a_watched_file_rolls_that_pool_only() {
    let (p1, p2) = (free_port(), free_port());
    let cfg = format!(
        "{}{}{}",
        head("100ms"),
        pool_toml(
            "web",
            "\"{dir}/app\"",
            2,
            &format!("binds = [\"127.0.0.1:{p1},r\"]\nwatch = [\"{{dir}}/REVISION\"]")
        ),
        pool_toml(
            "api",
            "\"{worker}\"",
            2,
            &format!("binds = [\"127.0.0.1:{p2},r\"]\nwatch = [\"{{dir}}/OTHER\"]")
        ),
    );
    let mut m = Master::with_config_prepared("wtouch", &cfg, &[], |d| {
        copy_worker(&d.join("app"));
        std::fs::write(d.join("REVISION"), "1\n").expect("write REVISION");
    });
    let web = m.wait_acked("web", 2);
    let api = m.wait_acked("api", 2);
    let (wv, av) = (m.version("web"), m.version("api"));

    touch(&m.dir.join("REVISION"));
    let web2 = wait_rolled(&mut m, "web", wv + 1, 2, &web);
    assert_eq!(m.wait_acked("api", 2), api, "the other pool was touched");
    assert_eq!(m.version("api"), av);
    let st = m.state();
    let what = st["pools"]["web"]["last_change"]["what"]
        .as_str()
        .unwrap_or("");
    assert!(what.contains("watched file"), "last change: {what}");
    for pid in &web {
        wait_for("old web worker to exit", LONG, || {
            (!alive(*pid)).then_some(())
        });
    }
    let body = http_get(&format!("127.0.0.1:{p1}"), "/").expect("web serves after roll");
    assert!(
        web2.iter().any(|p| body.contains(&format!("pid={p} "))),
        "{body} not from {web2:?}"
    );
}

#[test]
fn replacing_the_binary_by_rename_rolls_its_pool() {
    let cfg = format!(
        "{}{}",
        head("100ms"),
        pool_toml("web", "\"{dir}/app\"", 2, "")
    );
    let mut m = Master::with_config_prepared("wrename", &cfg, &[], |d| {
        copy_worker(&d.join("app"));
    });
    let old = m.wait_acked("web", 2);
    let v = m.version("web");
    let new = m.dir.join("app.new");
    copy_worker(&new);
    std::fs::rename(&new, m.dir.join("app")).expect("rename over app");
    wait_rolled(&mut m, "web", v + 1, 2, &old);
}

#[test]
fn the_command_line_form_watches_its_program_binary() {
    let mut m = Master::with_args_prepared("wcli", &["-n", "2", "--", "{dir}/app"], |d| {
        copy_worker(&d.join("app"));
    });
    let old = m.wait_acked("main", 2);
    let v = m.version("main");
    let new = m.dir.join("app.new");
    copy_worker(&new);
    std::fs::rename(&new, m.dir.join("app")).expect("rename over app");
    wait_rolled(&mut m, "main", v + 1, 2, &old);
}

#[test]
fn swapping_a_symlink_rolls_its_pool() {
    let cfg = format!(
        "{}{}",
        head("100ms"),
        pool_toml("web", "\"{dir}/current/app\"", 2, "")
    );
    let mut m = Master::with_config_prepared("wsymlink", &cfg, &[], |d| {
        copy_worker(&d.join("v1/app"));
        copy_worker(&d.join("v2/app"));
        std::os::unix::fs::symlink("v1", d.join("current")).expect("symlink current");
    });
    let old = m.wait_acked("web", 2);
    let v = m.version("web");
    // `ln -sfn v2 current`, atomically: a new link renamed over the old one.
    let tmp = m.dir.join("current.tmp");
    std::os::unix::fs::symlink("v2", &tmp).expect("symlink tmp");
    std::fs::rename(&tmp, m.dir.join("current")).expect("rename symlink");
    let new = wait_rolled(&mut m, "web", v + 1, 2, &old);
    let v2 = m.dir.join("v2/app");
    for pid in new {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("read exe link");
        assert_eq!(exe, v2, "worker {pid} does not run the new target");
    }
}

#[test]
fn a_burst_of_touches_rolls_once() {
    // A longer debounce than elsewhere: the burst must fit in it even on a loaded box.
    let cfg = format!(
        "{}{}",
        head("300ms"),
        pool_toml("web", "\"{dir}/app\"", 2, "watch = [\"{dir}/REVISION\"]")
    );
    let mut m = Master::with_config_prepared("wburst", &cfg, &[], |d| {
        copy_worker(&d.join("app"));
        std::fs::write(d.join("REVISION"), "1\n").expect("write REVISION");
    });
    let old = m.wait_acked("web", 2);
    let v = m.version("web");
    let rev = m.dir.join("REVISION");
    for i in 0..20 {
        std::fs::write(&rev, format!("{i}\n")).expect("rewrite REVISION");
        touch(&rev);
    }
    let mid = wait_rolled(&mut m, "web", v + 1, 2, &old);
    // One more, well after the burst: if the burst had queued a second roll, it
    // would run before this one and the version would end at v + 3.
    touch(&rev);
    wait_rolled(&mut m, "web", v + 2, 2, &mid);
    assert_eq!(m.version("web"), v + 2);
    let log = m.log_text();
    let started = log
        .lines()
        .filter(|l| l.contains("pool web: upgrade #") && l.contains(" to version "))
        .count();
    assert_eq!(started, 2, "log:\n{log}");
    assert_eq!(
        m.log_count("pool web will roll"),
        2,
        "log:\n{}",
        m.log_text()
    );
}

#[test]
fn editing_count_scales_without_a_new_version() {
    let cfg = |n| {
        format!(
            "{}{}",
            head("100ms"),
            pool_toml("web", "\"{dir}/app\"", n, "")
        )
    };
    let mut m = Master::with_config_prepared("wcount", &cfg(2), &[], |d| {
        copy_worker(&d.join("app"));
    });
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
    let mut m = Master::with_config_prepared(
        "waddrm",
        &format!("{}{web}{api}", head("100ms")),
        &[],
        |d| copy_worker(&d.join("app")),
    );
    let w = m.wait_acked("web", 1);
    let a = m.wait_acked("api", 2);
    assert!(!accepts(pj));
    m.write_config(&format!("{}{web}{jobs}", head("100ms")));
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
    let good = format!("{}{web}{api}", head("100ms"));
    let mut m = Master::with_config_prepared("winvalid", &good, &[], |d| {
        copy_worker(&d.join("app"));
    });
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
            &format!("the watcher to refuse the edit naming {key}"),
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
    let mut m =
        Master::with_config_prepared("wcmdhup", &mk(1, "a"), &[], |d| copy_worker(&d.join("app")));
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
    wait_rolled(&mut m, "web", wv + 1, 2, &w2);
    wait_rolled(&mut m, "api", av + 1, 1, &a);
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
    let mut m =
        Master::with_config_prepared("wkeep", &mk("a"), &[], |d| copy_worker(&d.join("app")));
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
    wait_rolled(&mut m, "web", v + 1, 2, &old);
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

/// With watching off, touch the watched file and replace the binary, then let
/// several debounce periods pass: nothing may roll.
fn assert_no_roll(m: &mut Master) {
    assert!(
        m.log_text().contains("file watching is off"),
        "{}",
        m.log_text()
    );
    let old = m.wait_acked("web", 1);
    let v = m.version("web");
    touch(&m.dir.join("REVISION"));
    let new = m.dir.join("app.new");
    copy_worker(&new);
    std::fs::rename(&new, m.dir.join("app")).expect("rename over app");
    // A negative: give a would-be roll several debounce periods to start.
    let _ = m.state();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(m.version("web"), v);
    assert_eq!(m.wait_acked("web", 1), old);
    assert!(!m.log_text().contains("upgrade #"), "{}", m.log_text());
}

fn prepare_app(d: &Path) {
    copy_worker(&d.join("app"));
    std::fs::write(d.join("REVISION"), "1\n").expect("write REVISION");
}

#[test]
fn watching_off_by_flag_or_config_changes_nothing() {
    let pool = pool_toml("web", "\"{dir}/app\"", 1, "watch = [\"{dir}/REVISION\"]");
    let mut by_flag = Master::with_config_prepared(
        "wnoflag",
        &format!("{}{pool}", head("100ms")),
        &["--no-watch"],
        prepare_app,
    );
    let mut by_cfg = Master::with_config_prepared(
        "wnocfg",
        &format!("[control]\nsocket = \"{{sock}}\"\n[watch]\nenabled = false\ndebounce = \"100ms\"\n{pool}"),
        &[],
        prepare_app,
    );
    assert_no_roll(&mut by_flag);
    assert_no_roll(&mut by_cfg);
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
        head("100ms"),
        pool_toml(
            "web",
            "\"{worker}\"",
            2,
            &format!("binds = [\"127.0.0.1:{p1},r\"]\nretries = 1\nrespawn_delay = \"100ms\"")
        )
    );
    let mut m = Master::with_config_prepared("rl-fallback", &base, &["--no-watch"], |_| {});
    let old = m.wait_acked("web", 2);
    // New version: a second bind, and a program that exits at once.
    m.write_config(&format!(
        "{}{}",
        head("100ms"),
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
