//! Worker output capture (issue 13): `stdout`/`stderr` into the master's
//! log or rotated files, `reopen_logs` and SIGUSR1, drops on a full sink,
//! `logs` and `logs -f` across an upgrade and a re-exec.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

fn head() -> &'static str {
    "[control]\nsocket = \"{sock}\"\n[watch]\nenabled = false\n"
}

/// A worker that prints `N` numbered lines `w<index>-<n>` and then idles.
fn counting_pool(name: &str, count: usize, lines: usize, extra: &str) -> String {
    format!(
        r#"
[pools.{name}]
command = ["/bin/sh", "-c", "seq -f \"w${{EINHORN_CHILD_INDEX}}-%.0f\" 1 {lines}; exec sleep 3600"]
count = {count}
ack_timer = "100ms"
{extra}
"#
    )
}

/// A worker that prints `tick N` every 20 ms, forever.
fn ticking_pool(name: &str, extra: &str) -> String {
    format!(
        r#"
[pools.{name}]
command = ["/bin/sh", "-c", "i=0; while :; do echo \"tick $i from $$\"; i=$((i+1)); sleep 0.02; done"]
count = 1
ack_timer = "100ms"
stop_signal = "TERM"
{extra}
"#
    )
}

fn lines_captured(m: &Master, pool: &str) -> u64 {
    m.pool(pool)["output"]["lines"].as_u64().unwrap_or(0)
}

#[test]
fn eight_workers_writing_ten_thousand_lines_each_arrive_whole_and_attributed() {
    let m = MasterBuilder::config(&format!(
        "{}{}",
        head(),
        counting_pool("w", 8, 10_000, "stdout = \"log\"")
    ))
    .start();
    let pids = m.wait_acked("w", 8);
    m.wait_state("80000 captured lines", WAIT, |st| {
        (st["pools"]["w"]["output"]["lines"].as_u64()? == 80_000).then_some(())
    });
    let by_index: BTreeMap<u64, i32> = m.pool("w")["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["index"].as_u64().unwrap(),
                w["pid"].as_i64().unwrap() as i32,
            )
        })
        .collect();
    assert_eq!(by_index.len(), 8, "{pids:?}");
    let log = m.log_text();
    let mut seen: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains(" pool w[")) {
        // TIME INFO  pool w[3] pid 42 stdout: w3-17
        let rest = line.split_once(" pool w[").unwrap().1;
        let (index, rest) = rest.split_once("] pid ").expect(line);
        let (pid, rest) = rest.split_once(" stdout: ").expect(line);
        let index: u64 = index.parse().expect(line);
        let pid: i32 = pid.parse().expect(line);
        assert_eq!(by_index.get(&index), Some(&pid), "attributed: {line}");
        let (who, n) = rest.split_once('-').expect(line);
        assert_eq!(who, format!("w{index}"), "whole and not mixed: {line}");
        let n: u32 = n.parse().expect(line);
        assert!(seen.entry(index).or_default().insert(n), "twice: {line}");
    }
    for i in 0..8 {
        let got = seen.get(&i).map_or(0, BTreeSet::len);
        assert_eq!(got, 10_000, "worker {i}: {got} of 10000 lines");
    }
    assert_eq!(m.pool("w")["output"]["dropped"], json!(0));
    // `logs` has the most recent ones, and the ctl prints them.
    let out = m.ctl(&["logs", "--pool", "w", "-n", "5"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(
        text.lines()
            .all(|l| l.contains(" w[") && l.contains(" stdout: w")),
        "{text}"
    );
}

#[test]
fn files_rotate_at_max_bytes_with_backups_and_null_discards() {
    // "line-0000" is 10 bytes with its newline: 1000 lines per 10000-byte file.
    let pool = r#"
[pools.f]
command = ["/bin/sh", "-c", "seq -f 'line-%04.0f' 0 2999; echo oops >&2; exec sleep 3600"]
count = 1
ack_timer = "100ms"
stdout = "{dir}/{pool}-{index}.log"
stderr = "null"
output_max_bytes = 10000
output_backups = 2
"#;
    let m = MasterBuilder::config(&format!("{}{pool}", head())).start();
    m.wait_acked("f", 1);
    m.wait_state("3000 lines", WAIT, |st| {
        (st["pools"]["f"]["output"]["lines"].as_u64()? == 3000).then_some(())
    });
    let path = m.dir.join("f-0.log");
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let want = |from: usize| -> String {
        (from..from + 1000)
            .map(|i| format!("line-{i:04}\n"))
            .collect()
    };
    wait_for("the last lines in the file", WAIT, || {
        (read(&path) == want(2000)).then_some(())
    });
    assert_eq!(read(&m.dir.join("f-0.log.1")), want(1000));
    assert_eq!(read(&m.dir.join("f-0.log.2")), want(0));
    assert!(!m.dir.join("f-0.log.3").exists());
    let (status, _) = m.cmd("status", &[], None);
    assert!(status.contains("2 rotation(s)"), "{status}");
    assert!(!m.log_text().contains("oops"), "stderr = null");
}

#[test]
fn reopen_logs_and_sigusr1_reopen_renamed_files() {
    let toml = format!(
        "{}[log]\nfile = \"{{dir}}/master.out\"\n{}",
        head(),
        ticking_pool("t", "stdout = \"{dir}/t.log\"")
    );
    let mut m = MasterBuilder::config(&toml).start();
    m.wait_acked("t", 1);
    let cur = m.dir.join("t.log");
    let grows = |p: &std::path::Path| {
        let n = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        wait_for(format!("{} to grow", p.display()), WAIT, || {
            (std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) > n).then_some(())
        });
    };
    grows(&cur);
    let mlog = m.dir.join("master.out");
    assert!(std::fs::read_to_string(&mlog)
        .unwrap()
        .contains("starting 1 pool"));
    for (round, how) in ["reopen_logs", "SIGUSR1"].iter().enumerate() {
        let old = m.dir.join(format!("t.log.old{round}"));
        let mold = m.dir.join(format!("master.out.old{round}"));
        std::fs::rename(&cur, &old).unwrap();
        std::fs::rename(&mlog, &mold).unwrap();
        // Until the reopen, lines go on into the renamed file.
        grows(&old);
        if *how == "reopen_logs" {
            let (msg, err) = m.cmd("reopen_logs", &[], None);
            assert!(!err && msg.contains("Reopened 1 output file(s)"), "{msg}");
        } else {
            m.signal(libc::SIGUSR1);
        }
        wait_for("the new file", WAIT, || cur.exists().then_some(()));
        grows(&cur);
        let frozen = std::fs::metadata(&old).unwrap().len();
        grows(&cur);
        assert_eq!(std::fs::metadata(&old).unwrap().len(), frozen, "{how}");
        wait_for("the master's new log file", WAIT, || {
            std::fs::read_to_string(&mlog)
                .ok()
                .filter(|t| t.contains("reopened 1 output file(s)"))
        });
    }
    assert!(m.try_exit().is_none(), "SIGUSR1 does not kill the master");
}

#[test]
fn a_full_sink_counts_drops_and_the_master_keeps_serving() {
    let toml = format!(
        "{}{}{}",
        head(),
        counting_pool("full", 1, 1000, "stdout = \"/dev/full\""),
        counting_pool("ok", 1, 3, "stdout = \"log\"")
    );
    let m = MasterBuilder::config(&toml).start();
    m.wait_acked("full", 1);
    m.wait_acked("ok", 1);
    let files = m.wait_state("1000 dropped lines", WAIT, |st| {
        let f = st["pools"]["full"]["output"]["files"]
            .as_array()?
            .first()?
            .clone();
        (f["stats"]["dropped"].as_u64()? == 1000).then_some(f)
    });
    assert_eq!(files["path"], json!("/dev/full"));
    assert!(
        files["stats"]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("/dev/full"),
        "{files}"
    );
    let (status, _) = m.cmd("status", &[], None);
    assert!(
        status.contains("file /dev/full: 0 line(s)") && status.contains("1000 dropped"),
        "{status}"
    );
    // The master still serves: the other pool scales and acks.
    let (msg, err) = m.cmd("inc", &[], Some("ok"));
    assert!(!err, "{msg}");
    m.wait_acked("ok", 2);
    m.wait_log("pool ok[1] pid", WAIT);
    // And `check` shows where output goes.
    let out = Proc::new(MASTER)
        .arg("check")
        .arg(m.config_path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("output:   stdout /dev/full, stderr inherit"),
        "{text}"
    );
}

#[test]
fn logs_follow_goes_on_across_an_upgrade() {
    let toml = format!(
        "{}{}",
        head(),
        ticking_pool("t", "stdout = \"log\"\nstderr = \"log\"")
    );
    let m = MasterBuilder::config(&toml).start();
    let old = m.wait_acked("t", 1);
    let mut s = UnixStream::connect(&m.sock).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    writeln!(
        s,
        "{}",
        json!({"command": "logs", "args": ["-f", "-n", "3"], "pool": "t", "id": "f"})
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut next = || -> Value {
        let mut l = String::new();
        r.read_line(&mut l).expect("a follower line");
        serde_json::from_str(&l).expect("JSON")
    };
    let first = next();
    assert_eq!(first["wait"], json!(true), "{first}");
    assert_eq!(first["request_id"], json!("f"), "{first}");
    let (msg, err) = m.cmd("upgrade", &[], Some("t"));
    assert!(!err, "{msg}");
    let new = m.wait_rolled("t", 2, 1, &old);
    let needle = format!("pid {} stdout: tick", new[0]);
    wait_for("the new worker's lines on the follower", WAIT, || {
        let v = next();
        v["message"]
            .as_str()
            .unwrap_or("")
            .contains(&needle)
            .then_some(())
    });
    // The ring outlived the old worker.
    let (recent, _) = m.cmd("logs", &["-n", "2000"], Some("t"));
    assert!(
        recent.contains(&format!("pid {} stdout: tick", old[0])),
        "{recent}"
    );
}

#[test]
fn logs_on_a_pool_that_does_not_capture_says_why() {
    let toml = format!("{}{}", head(), counting_pool("plain", 1, 1, ""));
    let m = MasterBuilder::config(&toml).start();
    m.wait_acked("plain", 1);
    let (msg, err) = m.cmd("logs", &[], Some("plain"));
    assert!(!err && msg.contains("do not capture"), "{msg}");
    let (msg, err) = m.cmd("logs", &["-n", "x"], Some("plain"));
    assert!(err && msg.contains("usage"), "{msg}");
}

#[test]
fn output_keeps_arriving_after_a_reexec() {
    let toml = format!(
        "{}[master]\nupgrade_check = false\n{}",
        head(),
        ticking_pool("t", "stdout = \"log\"")
    );
    let m = MasterBuilder::config(&toml).start();
    let pid = m.wait_acked("t", 1)[0];
    wait_for("some ticks", WAIT, || {
        (lines_captured(&m, "t") > 3).then_some(())
    });
    let (msg, err) = m.cmd("reexec", &[], None);
    assert!(!err && msg.contains("Re-exec done"), "{msg}");
    let before = lines_captured(&m, "t");
    assert!(before > 3, "the counters crossed the exec: {before}");
    wait_for("ticks after the re-exec", WAIT, || {
        (lines_captured(&m, "t") > before + 5).then_some(())
    });
    // From the same worker, through the same pipe.
    let log = m.log_text();
    let after = log.split("resumed after re-exec").nth(1).unwrap_or("");
    assert!(
        after.contains(&format!("pool t[0] pid {pid} stdout: tick")),
        "{log}"
    );
    assert_eq!(m.pids("t", "acked"), vec![pid]);
}

#[test]
fn long_lines_are_cut_and_a_last_line_without_newline_is_flushed_at_exit() {
    // 40000 bytes without a newline, then a newline; then a partial line and exit.
    let pool = r#"
[pools.c]
command = ["/bin/sh", "-c", "head -c 40000 /dev/zero | tr '\\0' a; echo; printf 'bye-no-newline'; sleep 0.3"]
count = 1
ack_timer = "100ms"
retries = 1
stdout = "log"
"#;
    let m = MasterBuilder::config(&format!("{}{pool}", head())).start();
    let log = m.wait_log("stdout: bye-no-newline", WAIT);
    // The worker exits and is respawned: look at the first one only.
    let bye = log
        .lines()
        .find(|l| l.contains("stdout: bye-no-newline"))
        .unwrap();
    let pid = bye
        .split(" pid ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let mine = format!(" pid {pid} stdout: ");
    let pieces: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&mine) && l.contains(": aaa"))
        .collect();
    assert_eq!(pieces.len(), 3, "16384 + 16384 + 7232 bytes");
    assert!(pieces[0].ends_with(&format!("{} [cut]", "a".repeat(100))));
    assert!(pieces[1].ends_with(" [cut]"));
    assert!(pieces[2].ends_with(&format!(": {}", "a".repeat(7232))));
    // The partial line comes before the news of the worker's exit.
    let at = log.find(bye).unwrap();
    let exited = format!("pid {pid}");
    let before_exit = log[..at]
        .lines()
        .any(|l| l.contains(&exited) && l.contains("exit status"));
    assert!(!before_exit, "{log}");
    assert_eq!(
        log.lines()
            .filter(|l| l.contains(&mine) && l.contains(": bye"))
            .count(),
        1
    );
    let cut = m.pool("c")["output"]["cut"].as_u64().unwrap_or(0);
    assert!(cut >= 2 && cut % 2 == 0, "two cut pieces per run: {cut}");
}

#[test]
fn capture_pipes_reach_no_other_process_and_workers_get_only_fds_0_1_2() {
    let sleeper = |name: &str, extra: &str| {
        format!(
            r#"
[pools.{name}]
command = ["sleep", "3600"]
count = 1
ack_timer = "100ms"
{extra}
"#
        )
    };
    let toml = format!(
        "{}{}{}",
        head(),
        sleeper("cap", "stdout = \"log\"\nstderr = \"{dir}/cap.err\""),
        sleeper("plain", "")
    );
    let m = MasterBuilder::config(&toml).start();
    let cap = m.wait_acked("cap", 1)[0];
    let plain = m.wait_acked("plain", 1)[0];
    let fds = |pid: i32| -> BTreeMap<i32, String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                let n: i32 = e.file_name().to_string_lossy().parse().ok()?;
                Some((
                    n,
                    std::fs::read_link(e.path())
                        .ok()?
                        .to_string_lossy()
                        .into_owned(),
                ))
            })
            .collect()
    };
    for pid in [cap, plain] {
        let f = fds(pid);
        assert_eq!(
            f.keys().copied().collect::<Vec<_>>(),
            [0, 1, 2],
            "{pid}: {f:?}"
        );
    }
    let f = fds(cap);
    assert!(
        f[&1].starts_with("pipe:") && f[&2].starts_with("pipe:"),
        "{f:?}"
    );
    assert_ne!(f[&1], f[&2], "one pipe per stream");
    assert!(!fds(plain)[&1].starts_with("pipe:") || fds(plain)[&1] != f[&1]);
}

#[test]
fn changing_stdout_on_reload_rolls_the_pool() {
    let m = MasterBuilder::config(&format!("{}{}", head(), ticking_pool("t", ""))).start();
    let old = m.wait_acked("t", 1);
    m.write_config(&format!(
        "{}{}",
        head(),
        ticking_pool("t", "stdout = \"log\"")
    ));
    let (msg, err) = m.cmd("reload", &[], None);
    assert!(!err && msg.contains("stdout"), "{msg}");
    let new = m.wait_rolled("t", 2, 1, &old);
    m.wait_log(&format!("] pid {} stdout: tick", new[0]), WAIT);
}

#[test]
fn a_logs_follower_that_does_not_read_is_dropped_and_memory_stays_bounded() {
    let pool = r#"
[pools.y]
command = ["yes", "a line written as fast as the pipe takes it"]
count = 1
ack_timer = "100ms"
stop_signal = "TERM"
stdout = "{dir}/y.log"
output_max_bytes = "1MiB"
output_backups = 0
"#;
    let m = MasterBuilder::config(&format!("{}{pool}", head())).start();
    m.wait_acked("y", 1);
    // A follower that asks and then never reads.
    let mut s = UnixStream::connect(&m.sock).unwrap();
    writeln!(
        s,
        "{}",
        json!({"command": "logs", "args": ["-f"], "pool": "y"})
    )
    .unwrap();
    m.wait_log("logs: dropping a follower that does not read", WAIT);
    // The master still answers, and its memory did not follow the output.
    let st = m.state();
    assert!(
        st["pools"]["y"]["output"]["lines"].as_u64().unwrap_or(0) > 10_000,
        "{st}"
    );
    let pid = m.pid();
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(rss_kib < 64 * 1024, "master RSS {rss_kib} KiB");
    assert!(std::fs::metadata(m.dir.join("y.log")).unwrap().len() <= 1024 * 1024);
    drop(s);
}

#[test]
fn the_masters_log_file_rotates_and_the_ctl_follows_logs() {
    let toml = format!(
        "{}[log]\nfile = \"{{dir}}/m.log\"\nmax_bytes = 4096\nbackups = 2\n{}",
        head(),
        ticking_pool("t", "stdout = \"log\"")
    );
    let m = MasterBuilder::config(&toml).start();
    m.wait_acked("t", 1);
    let p = |s: &str| m.dir.join(s);
    wait_for("two rotations of the master's log", WAIT, || {
        p("m.log.2").exists().then_some(())
    });
    for f in ["m.log", "m.log.1", "m.log.2"] {
        let len = std::fs::metadata(p(f)).map(|x| x.len()).unwrap_or(0);
        assert!(len <= 4096, "{f}: {len}");
    }
    assert!(!p("m.log.3").exists());
    let (status, _) = m.cmd("status", &[], None);
    assert!(
        status.contains("log file ") && status.contains(" rotation(s), 0 dropped"),
        "{status}"
    );
    // einhyrningsinsctl logs -f, given up after a while: what it printed.
    let out = m.ctl(&["--timeout", "1s", "logs", "-f", "-n", "1", "--pool", "t"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let ticks = text
        .lines()
        .filter(|l| l.contains(" t[0] pid ") && l.contains(": tick"))
        .count();
    assert!(ticks >= 5, "the last line, then the new ones: {text}");
    // -f and -n only go with logs (and events).
    let out = m.ctl(&["-f", "status"]);
    assert_eq!(out.status.code(), Some(2));
}
