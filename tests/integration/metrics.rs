//! `/metrics` of a real master, read by a real Prometheus parser
//! (prometheus_client's): counters move as workers ack, crash and upgrade; a
//! hostile scraper is bounded; a unix socket and the classic `--metrics` flag.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::prom::{exchange, metrics_addr, parse, parser_available, scrape, wait_metrics};
use crate::support::*;

const T: Duration = Duration::from_secs(30);

const CONFIG: &str = r#"
[control]
socket = "{sock}"
[metrics]
listen = "127.0.0.1:0"
[pools.web]
command = ["{worker}"]
count = 2
ack_timer = "200ms"
respawn_delay = "100ms"
stop_timeout = "5s"
"#;

#[test]
fn counters_move_as_workers_ack_crash_and_upgrade_and_prometheus_parses_them() {
    if !parser_available("metrics::counters_move") {
        return;
    }
    let m = MasterBuilder::config(CONFIG).start();
    let addr = metrics_addr(&m);
    let pids = m.wait_acked("web", 2);
    let w = &[("pool", "web")];
    wait_metrics("2 acks", &addr, T, |x| {
        (x.get("einhyrningsins_worker_ack_duration_seconds_count", w) == Some(2.0)).then_some(())
    });
    let x = parse(&scrape(&addr));
    // Types as Prometheus reads them (histograms and counters by family name).
    assert_eq!(
        x.families["einhyrningsins_worker_ack_duration_seconds"],
        "histogram"
    );
    assert_eq!(x.families["einhyrningsins_worker_spawns"], "counter");
    assert_eq!(x.families["einhyrningsins_pool_workers"], "gauge");
    assert_eq!(x.get("einhyrningsins_worker_spawns_total", w), Some(2.0));
    assert_eq!(x.get("einhyrningsins_pool_desired_workers", w), Some(2.0));
    assert_eq!(
        x.get(
            "einhyrningsins_pool_workers",
            &[("pool", "web"), ("state", "acked")]
        ),
        Some(2.0)
    );
    assert_eq!(x.get("einhyrningsins_pool_version", w), Some(1.0));
    // Timer acks come after ack_timer: the 0.1 s bucket is empty, +Inf has both.
    assert_eq!(
        x.get(
            "einhyrningsins_worker_ack_duration_seconds_bucket",
            &[("pool", "web"), ("le", "0.1")]
        ),
        Some(0.0)
    );
    assert_eq!(
        x.get(
            "einhyrningsins_worker_ack_duration_seconds_bucket",
            &[("pool", "web"), ("le", "+Inf")]
        ),
        Some(2.0)
    );
    for pid in &pids {
        let p = pid.to_string();
        let rss = x
            .get(
                "einhyrningsins_worker_resident_memory_bytes",
                &[("pid", &p)],
            )
            .unwrap_or(0.0);
        assert!(rss > 100_000.0, "worker {pid} rss {rss}\n{}", x.text);
        assert!(x
            .get("einhyrningsins_worker_cpu_seconds_total", &[("pid", &p)])
            .is_some());
    }
    assert!(
        x.get("einhyrningsins_master_resident_memory_bytes", &[])
            .unwrap_or(0.0)
            > 100_000.0
    );
    assert!(x.get("einhyrningsins_master_open_fds", &[]).unwrap_or(0.0) >= 5.0);
    assert!(x
        .get("einhyrningsins_master_cpu_seconds_total", &[])
        .is_some());
    assert!(
        x.get("einhyrningsins_master_uptime_seconds", &[])
            .unwrap_or(0.0)
            > 0.0
    );
    assert!(
        x.get(
            "einhyrningsins_control_requests_total",
            &[("command", "state")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{}",
        x.text
    );

    // A crash after the ack: counted, respawned, acked again.
    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    let c = &[("pool", "web"), ("cause", "crash_after_ack")];
    wait_metrics("the crash and its replacement", &addr, T, |x| {
        (x.get("einhyrningsins_worker_exits_total", c) == Some(1.0)
            && x.get("einhyrningsins_worker_spawns_total", w) == Some(3.0)
            && x.get("einhyrningsins_worker_ack_duration_seconds_count", w) == Some(3.0))
        .then_some(())
    });

    // An upgrade: started, done, its duration observed, old workers stopped.
    m.wait_acked("web", 2);
    let (msg, err) = m.cmd("upgrade", &[], Some("web"));
    assert!(!err, "{msg}");
    let x = wait_metrics("the upgrade done", &addr, T, |x| {
        let done = &[("pool", "web"), ("outcome", "done")];
        (x.get("einhyrningsins_upgrades_total", done) == Some(1.0)
            && x.get(
                "einhyrningsins_worker_exits_total",
                &[("pool", "web"), ("cause", "stopped")],
            ) == Some(2.0))
        .then_some(x.text.clone())
    });
    let x = parse(&x);
    let started = &[("pool", "web"), ("outcome", "started")];
    assert_eq!(x.get("einhyrningsins_upgrades_total", started), Some(1.0));
    assert_eq!(
        x.get(
            "einhyrningsins_upgrade_duration_seconds_count",
            &[("pool", "web"), ("outcome", "done")]
        ),
        Some(1.0)
    );
    assert_eq!(
        x.get(
            "einhyrningsins_worker_stops_total",
            &[("pool", "web"), ("reason", "retired")]
        ),
        Some(2.0)
    );
    assert_eq!(x.get("einhyrningsins_pool_version", w), Some(2.0));
    assert!(
        x.get(
            "einhyrningsins_control_requests_total",
            &[("command", "upgrade")]
        ) >= Some(1.0)
    );
    assert_eq!(
        x.get(
            "einhyrningsins_worker_exits_total",
            &[("pool", "web"), ("cause", "crash_before_ack")]
        ),
        Some(0.0)
    );

    // Only /metrics; other paths and methods get their status.
    let ask = |req: &str| {
        let s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        exchange(s, req).0
    };
    assert_eq!(ask("GET / HTTP/1.1\r\n\r\n"), 404);
    assert_eq!(ask("POST /metrics HTTP/1.1\r\n\r\n"), 405);
    assert_eq!(ask("GET /metrics HTTP/1.0\r\n\r\n"), 200);
    let x = parse(&scrape(&addr));
    assert!(
        x.get("einhyrningsins_metrics_scrapes_total", &[("code", "404")]) == Some(1.0),
        "{}",
        x.text
    );
}

#[test]
fn a_hostile_scraper_does_not_hurt_the_master() {
    let mut m = MasterBuilder::config(CONFIG).start();
    let addr = metrics_addr(&m);
    m.wait_acked("web", 2);
    // A huge header without an end: 431 once 8 KiB are in, then closed.
    let mut big = TcpStream::connect(&addr).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    big.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let junk = vec![b'a'; 1 << 20];
    let _ = big.write_all(b"GET /metrics HTTP/1.1\r\nX: ");
    let _ = big.write_all(&junk); // the master stops reading; this may fail
    let mut resp = Vec::new();
    let _ = big.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    // Many scrapers that ask and never read, and many that never ask: more
    // than the connection cap.
    let mut idle = Vec::new();
    for i in 0..100 {
        let mut s = TcpStream::connect(&addr).unwrap();
        if i % 2 == 0 {
            s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        }
        idle.push(s);
    }
    // The master still answers promptly: control and a new scrape.
    let t = Instant::now();
    let (msg, err) = m.cmd("status", &[], None);
    assert!(!err, "{msg}");
    let body = scrape(&addr);
    assert!(body.contains("einhyrningsins_pool_workers"), "{body}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    // At most the cap stays open: the others were answered or closed to make
    // room (a read sees the response or EOF; none is left hanging).
    let open = idle
        .iter_mut()
        .filter(|s: &&mut TcpStream| {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let mut b = [0u8; 4096];
            matches!((&**s).read(&mut b), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
        })
        .count();
    assert!(open <= 64, "{open} of 100 still open");
    assert!(m.try_exit().is_none(), "the master died:\n{}", m.log_text());
    drop(idle);
    m.wait_acked("web", 2);
}

#[test]
fn the_classic_flag_serves_metrics_on_a_unix_socket() {
    let m = MasterBuilder::cli(&[
        "-n",
        "1",
        "--metrics",
        "{dir}/metrics.sock",
        "--",
        "{worker}",
    ])
    .start();
    m.wait_acked("main", 1);
    let path = m.dir.join("metrics.sock");
    let body = wait_for("the metrics socket", T, || {
        let s = std::os::unix::net::UnixStream::connect(&path).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let (code, _, body) = exchange(s, "GET /metrics HTTP/1.1\r\n\r\n");
        (code == 200).then_some(body)
    });
    assert!(
        body.contains("einhyrningsins_pool_desired_workers{pool=\"main\"} 1\n"),
        "{body}"
    );
    if parser_available("metrics::the_classic_flag") {
        let x = parse(&body);
        assert_eq!(
            x.get("einhyrningsins_worker_spawns_total", &[("pool", "main")]),
            Some(1.0)
        );
    }
}

#[test]
fn a_taken_metrics_address_is_refused_at_start_with_exit_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut m = MasterBuilder::config(&format!(
        "[control]\nsocket = \"{{sock}}\"\n[metrics]\nlisten = \"{addr}\"\n[pools.a]\ncommand = [\"{{worker}}\"]\n"
    ))
    .lazy()
    .start();
    let st = m.wait_exit(T);
    assert_eq!(st.code(), Some(2), "{}", m.log_text());
    let log = m.log_text();
    assert!(
        log.contains(&format!("could not listen for metrics on {addr}")),
        "{log}"
    );
    drop(taken);
}

#[test]
fn counters_survive_a_reexec_and_the_listener_comes_back() {
    let m = MasterBuilder::config(CONFIG).start();
    let addr = metrics_addr(&m);
    let pids = m.wait_acked("web", 2);
    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    let w = &[("pool", "web")];
    let crash = &[("pool", "web"), ("cause", "crash_after_ack")];
    wait_for("the crash counted", T, || {
        let body = scrape(&addr);
        (body.contains(
            "einhyrningsins_worker_exits_total{pool=\"web\",cause=\"crash_after_ack\"} 1\n",
        ) && body.contains("einhyrningsins_worker_spawns_total{pool=\"web\"} 3\n"))
        .then_some(())
    });
    let out = m.ctl(&["reexec"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same master (pid), a new image: the counters came with the state.
    let mut last = String::new();
    let body = poll_until(T, || {
        let s = TcpStream::connect(&addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let (code, _, body) = exchange(s, "GET /metrics HTTP/1.1\r\n\r\n");
        last = body.clone();
        (code == 200 && body.contains("einhyrningsins_reexecs_total{outcome=\"done\"} 1\n"))
            .then_some(body)
    })
    .unwrap_or_else(|| {
        panic!(
            "no metrics after the re-exec; last:\n{last}\nlog:\n{}",
            m.log_text()
        )
    });
    assert!(
        body.contains("einhyrningsins_worker_spawns_total{pool=\"web\"} 3\n"),
        "{body}"
    );
    assert!(
        body.contains(
            "einhyrningsins_worker_exits_total{pool=\"web\",cause=\"crash_after_ack\"} 1\n"
        ),
        "{body}"
    );
    assert!(
        body.contains("einhyrningsins_control_requests_total{command=\"reexec\"} 1\n"),
        "{body}"
    );
    if parser_available("metrics::counters_survive_a_reexec") {
        let x = parse(&body);
        assert_eq!(x.get("einhyrningsins_worker_spawns_total", w), Some(3.0));
        assert_eq!(x.get("einhyrningsins_worker_exits_total", crash), Some(1.0));
    }
}

#[test]
fn a_reload_keeps_the_listener_as_started() {
    let m = MasterBuilder::config(CONFIG).start();
    let addr = metrics_addr(&m);
    m.wait_acked("web", 2);
    m.write_config(&CONFIG.replace("127.0.0.1:0", "{dir}/other.sock"));
    let (msg, err) = m.cmd("reload", &[], None);
    assert!(!err, "{msg}");
    m.wait_log("[metrics] changes need a restart; kept as running", T);
    let body = scrape(&addr);
    assert!(
        body.contains("einhyrningsins_reloads_total{outcome=\"applied\"} 1\n"),
        "{body}"
    );
    assert!(!m.dir.join("other.sock").exists());
}

#[test]
fn silent_and_slowloris_scrapers_are_closed_after_the_idle_time() {
    let m = MasterBuilder::config(CONFIG).start();
    let addr = metrics_addr(&m);
    let t0 = Instant::now();
    let mut silent = TcpStream::connect(&addr).unwrap();
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // The slow one trickles a header byte every 500 ms: it is still closed
    // 10 s after its accept, however long it keeps trickling.
    let trickle = std::thread::spawn(move || {
        let mut sent = 0;
        while slow.write_all(b"X").is_ok() && sent < 60 {
            sent += 1;
            std::thread::sleep(Duration::from_millis(500));
        }
        let mut b = [0u8; 1];
        slow.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        (sent, std::io::Read::read(&mut slow, &mut b).ok())
    });
    let mut b = [0u8; 1];
    assert_eq!(silent.read(&mut b).unwrap_or(0), 0, "silent: EOF expected");
    let silent_after = t0.elapsed();
    let (sent, _) = trickle.join().unwrap();
    let slow_after = t0.elapsed();
    assert!(
        silent_after >= Duration::from_secs(9) && silent_after < Duration::from_secs(20),
        "{silent_after:?}"
    );
    assert!(
        sent < 40,
        "the trickler kept its connection for {sent} bytes ({slow_after:?})"
    );
    // And the master carried on.
    assert!(scrape(&addr).contains("einhyrningsins_pool_workers"));
}
