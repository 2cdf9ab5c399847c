//! Hot redeploys by touching files (BRIEF §7; issue 5): a watched file, a binary
//! replaced by rename or a swapped symlink rolls exactly the pool it belongs
//! to; a burst rolls once; watching can be turned off.
//!
//! The pools run a copy of the example worker in the test's temp dir (`{dir}/app`),
//! so a test can replace it without touching the shared build output.

use std::path::Path;
use std::time::Duration;

use crate::support::rolls::{pool_toml, watch_head};
use crate::support::*;

const LONG: Duration = Duration::from_secs(30);

#[test]
fn touching_a_watched_file_rolls_that_pool_only() {
    let (p1, p2) = (free_port(), free_port());
    let cfg = format!(
        "{}{}{}",
        watch_head("100ms"),
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
    let m = MasterBuilder::config(&cfg)
        .prepare(|d| {
            copy_worker(&d.join("app"));
            std::fs::write(d.join("REVISION"), "1\n").expect("write REVISION");
        })
        .start();
    let web = m.wait_acked("web", 2);
    let api = m.wait_acked("api", 2);
    let (wv, av) = (m.version("web"), m.version("api"));

    touch(&m.dir.join("REVISION"));
    let web2 = m.wait_rolled("web", wv + 1, 2, &web);
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
        watch_head("100ms"),
        pool_toml("web", "\"{dir}/app\"", 2, "")
    );
    let m = MasterBuilder::config(&cfg)
        .prepare(|d| {
            copy_worker(&d.join("app"));
        })
        .start();
    let old = m.wait_acked("web", 2);
    let v = m.version("web");
    let new = m.dir.join("app.new");
    copy_worker(&new);
    std::fs::rename(&new, m.dir.join("app")).expect("rename over app");
    m.wait_rolled("web", v + 1, 2, &old);
}

#[test]
fn the_command_line_form_watches_its_program_binary() {
    let m = MasterBuilder::cli(&["-n", "2", "--", "{dir}/app"])
        .prepare(|d| {
            copy_worker(&d.join("app"));
        })
        .start();
    let old = m.wait_acked("main", 2);
    let v = m.version("main");
    let new = m.dir.join("app.new");
    copy_worker(&new);
    std::fs::rename(&new, m.dir.join("app")).expect("rename over app");
    m.wait_rolled("main", v + 1, 2, &old);
}

#[test]
fn swapping_a_symlink_rolls_its_pool() {
    let cfg = format!(
        "{}{}",
        watch_head("100ms"),
        pool_toml("web", "\"{dir}/current/app\"", 2, "")
    );
    let m = MasterBuilder::config(&cfg)
        .prepare(|d| {
            copy_worker(&d.join("v1/app"));
            copy_worker(&d.join("v2/app"));
            std::os::unix::fs::symlink("v1", d.join("current")).expect("symlink current");
        })
        .start();
    let old = m.wait_acked("web", 2);
    let v = m.version("web");
    // `ln -sfn v2 current`, atomically: a new link renamed over the old one.
    let tmp = m.dir.join("current.tmp");
    std::os::unix::fs::symlink("v2", &tmp).expect("symlink tmp");
    std::fs::rename(&tmp, m.dir.join("current")).expect("rename symlink");
    let new = m.wait_rolled("web", v + 1, 2, &old);
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
        watch_head("300ms"),
        pool_toml("web", "\"{dir}/app\"", 2, "watch = [\"{dir}/REVISION\"]")
    );
    let m = MasterBuilder::config(&cfg)
        .prepare(|d| {
            copy_worker(&d.join("app"));
            std::fs::write(d.join("REVISION"), "1\n").expect("write REVISION");
        })
        .start();
    let old = m.wait_acked("web", 2);
    let v = m.version("web");
    let rev = m.dir.join("REVISION");
    for i in 0..20 {
        std::fs::write(&rev, format!("{i}\n")).expect("rewrite REVISION");
        touch(&rev);
    }
    let mid = m.wait_rolled("web", v + 1, 2, &old);
    // One more, well after the burst: if the burst had queued a second roll, it
    // would run before this one and the version would end at v + 3.
    touch(&rev);
    m.wait_rolled("web", v + 2, 2, &mid);
    assert_eq!(m.version("web"), v + 2);
    // Exactly two upgrades were started: ids count from 1.
    let pool = m.wait_state("the second roll to finish", LONG, |st| {
        let p = &st["pools"]["web"];
        p["upgrading"].is_null().then(|| p.clone())
    });
    assert_eq!(pool["last_upgrade"]["id"], 2, "{pool}");
    assert_eq!(pool["version"], v + 2, "{pool}");
    // And the watcher decided to roll once per burst: the operator's log line
    // is the only record of that decision.
    assert_eq!(
        m.log_count("pool web will roll"),
        2,
        "log:\n{}",
        m.log_text()
    );
}

/// With watching off, touch the watched file and replace the binary, then let
/// several debounce periods pass: nothing may roll. Whether watching is on is
/// shown only by the master's startup line.
fn assert_no_roll(m: &Master) {
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
    // A negative: a would-be roll gets several debounce periods to start, and
    // `state` must show none all along.
    holds_for(
        "no roll with watching off",
        Duration::from_millis(400),
        || {
            let p = m.pool("web");
            if p["version"] == v && p["upgrading"].is_null() && p["last_upgrade"].is_null() {
                Ok(())
            } else {
                Err(format!("pool web: {p}"))
            }
        },
    );
    assert_eq!(m.version("web"), v);
    assert_eq!(m.wait_acked("web", 1), old);
}

fn prepare_app(d: &Path) {
    copy_worker(&d.join("app"));
    std::fs::write(d.join("REVISION"), "1\n").expect("write REVISION");
}

#[test]
fn watching_off_by_flag_or_config_changes_nothing() {
    let pool = pool_toml("web", "\"{dir}/app\"", 1, "watch = [\"{dir}/REVISION\"]");
    let by_flag = MasterBuilder::config(&format!("{}{pool}", watch_head("100ms")))
        .args(&["--no-watch"])
        .prepare(prepare_app)
        .start();
    let by_cfg = MasterBuilder::config(&format!(
        "[control]\nsocket = \"{{sock}}\"\n[watch]\nenabled = false\ndebounce = \"100ms\"\n{pool}"
    ))
    .prepare(prepare_app)
    .start();
    assert_no_roll(&by_flag);
    assert_no_roll(&by_cfg);
}

#[test]
fn editing_a_script_named_in_the_command_rolls_its_pool() {
    // `python3 app.py`, `sh w.sh`: what users edit is an argument, not
    // command[0]. An argument that names an existing file is watched.
    let cfg = format!(
        "{}{}",
        watch_head("100ms"),
        pool_toml("web", "\"/bin/sh\", \"{dir}/w.sh\"", 2, "")
    );
    let m = MasterBuilder::config(&cfg)
        .files(&[("w.sh", "exec {worker} --version-tag v1\n")])
        .start();
    let web = m.wait_acked("web", 2);
    let v = m.version("web");
    m.put_file("w.sh", "exec {worker} --version-tag v2\n");
    m.wait_rolled("web", v + 1, 2, &web);
}
