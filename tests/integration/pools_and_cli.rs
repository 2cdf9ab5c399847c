//! Pools serving: several pools from one TOML file, einhorn's classic command
//! line mapped onto one pool, and TTIN/TTOU scaling it.

use std::time::Duration;

use crate::support::*;

#[test]
fn two_pools_from_one_toml_serve_on_their_ports() {
    let (p1, p2) = (free_port(), free_port());
    let mut m = MasterBuilder::config(&format!(
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
    ))
    .start();
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

#[test]
fn classic_cli_two_workers_serve_with_their_arguments() {
    let port = free_port();
    let bind = format!("127.0.0.1:{port},r");
    let mut m = MasterBuilder::cli(&[
        "-n",
        "2",
        "-b",
        &bind,
        "--",
        "{worker}",
        "--version-tag",
        "x",
    ])
    .start();
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
fn ttin_and_ttou_scale_the_pool() {
    let m = MasterBuilder::cli(&["-m", "0.1", "--", "{worker}"]).start();
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
fn status_shows_a_count_set_at_run_time_and_its_last_change() {
    let m = MasterBuilder::config(
        "[control]\nsocket = \"{sock}\"\n[watch]\nenabled = false\n\
         [pools.web]\ncommand = [\"{worker}\"]\ncount = 1\nack_timer = \"50ms\"\n",
    )
    .start();
    m.wait_acked("web", 1);
    let status = |m: &Master| String::from_utf8_lossy(&m.ctl(&["status"]).stdout).into_owned();
    assert!(!status(&m).contains("set at run time"), "{}", status(&m));
    let out = m.ctl(&["--pool", "web", "set_workers", "3"]);
    assert!(out.status.success(), "{out:?}");
    m.wait_acked("web", 3);
    let s = status(&m);
    assert!(
        s.contains("count: 3 set at run time (the file says 1;"),
        "{s}"
    );
    assert!(s.contains("last change: count 1 -> 3 (set_workers)"), "{s}");
    assert_eq!(m.state()["pools"]["web"]["configured_count"], 1);
    // Back to the file's count: nothing to say any more but the change.
    let out = m.ctl(&["--pool", "web", "dec"]);
    assert!(out.status.success(), "{out:?}");
    let out = m.ctl(&["--pool", "web", "dec"]);
    assert!(out.status.success(), "{out:?}");
    let s = status(&m);
    assert!(!s.contains("set at run time"), "{s}");
    assert!(s.contains("last change: count 2 -> 1 (dec)"), "{s}");
}

#[test]
fn the_shell_refuses_a_pool_that_does_not_exist_and_hints_name_the_flag() {
    let m = MasterBuilder::config(
        "[control]\nsocket = \"{sock}\"\n[watch]\nenabled = false\n\
         [pools.web]\ncommand = [\"{worker}\"]\nack_timer = \"50ms\"\n\
         [pools.api]\ncommand = [\"{worker}\"]\nack_timer = \"50ms\"\n",
    )
    .start();
    m.wait_acked("web", 1);
    let script = |text: &str| {
        let file = m.dir.join("script.txt");
        std::fs::write(&file, text).expect("write script");
        Proc::new(CTL)
            .arg("-d")
            .arg(&m.sock)
            .stdin(std::fs::File::open(&file).expect("open script"))
            .output()
            .expect("ctl")
    };
    let out = script("pool nosuch\ninc\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no pool named \"nosuch\"; pools: api, web"),
        "{err}"
    );
    // The default pool was not set: `inc` still needs one, and says how.
    assert!(
        err.contains("say which pool (einhyrningsinsctl --pool NAME inc"),
        "{err}"
    );
    let out = script("pool web\ninc\n");
    assert!(out.status.success(), "{out:?}");
    m.wait_acked("web", 2);
}
