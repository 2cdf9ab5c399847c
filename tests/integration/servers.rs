//! Servers nobody here wrote, as workers: each recipe of docs/workers.md runs
//! from its own file in examples/configs/, under a request loop, through two
//! rolling upgrades.
//!
//! The servers come from Debian and PyPI: `.ci/install-servers` (run by
//! `.ci/run`) puts what it can into `target/ci-servers` (or
//! `$EINHYRNINGSINS_SERVERS`): a venv with gunicorn, uvicorn and hypercorn,
//! the Go example worker built with Debian's Go; nginx, haproxy, lighttpd and
//! puma from Debian; node from the machine. A test whose server is missing
//! prints `SKIPPED: ...` and returns: it never passes silently.
//!
//! The example file is used as written but for what a test must own: the
//! control socket and paths go into the test's temp dir, and the bind's port
//! is 0 (the kernel's pick, read back from `state`) for the servers told
//! their socket by fd alone. nginx, lighttpd and puma match the inherited
//! socket against an address in their own config, so for them a port the
//! kernel picked and released ([`free_port`]) is written into both.
//!
//! Asserted: no failed request on a new connection per request for the
//! servers that drain cleanly; for the Go and Node examples' graceful drain,
//! none on keep-alive connections either. uvicorn and hypercorn close
//! connections they accepted but had not read yet when asked to stop (issue
//! 17; docs/workers.md): for them the failures are counted and printed, and
//! the pool must still have rolled and be serving.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn tools_dir() -> PathBuf {
    std::env::var_os("EINHYRNINGSINS_SERVERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(REPO).join("target/ci-servers"))
}

/// The PATH workers get: the venv first, then sbin (nginx, haproxy, lighttpd).
fn worker_path() -> String {
    let venv = tools_dir().join("venv/bin");
    format!(
        "{}:/usr/sbin:/usr/local/sbin:{}",
        venv.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn find(program: &str) -> Option<PathBuf> {
    worker_path()
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// Whether a recipe's programs are here; if not, say so loudly.
fn available(server: &str, programs: &[&str]) -> bool {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| find(p).is_none() && !Path::new(p).is_file())
        .collect();
    if missing.is_empty() {
        return true;
    }
    eprintln!(
        "SKIPPED: servers::{server}: {} not installed (run .ci/install-servers; looked in {})",
        missing.join(", "),
        worker_path()
    );
    false
}

/// How a recipe's bind gets its port.
#[derive(Clone, Copy, PartialEq)]
enum Port {
    /// 0 in the bind; the server is told its socket by fd.
    Kernel,
    /// The server's own config names the address: a port picked for both.
    Named,
}

/// Copy `from` into `to`, rewriting each text file with `fix`.
fn copy_tree(from: &Path, to: &Path, fix: &dyn Fn(&str) -> String) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read examples/servers") {
        let entry = entry.expect("dir entry");
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst, fix);
        } else {
            match std::fs::read_to_string(&src) {
                Ok(text) => std::fs::write(&dst, fix(&text)).expect("write server file"),
                Err(_) => {
                    std::fs::copy(&src, &dst).expect("copy server file");
                }
            }
        }
    }
}

/// Start the master on `examples/configs/{server}.toml`, rewritten for this test.
fn start(server: &str, port: Port) -> Master {
    let text = std::fs::read_to_string(format!("{REPO}/examples/configs/{server}.toml"))
        .expect("read the example config");
    let port_text = match port {
        Port::Kernel => "0".to_string(),
        Port::Named => free_port().to_string(),
    };
    let mut toml = String::new();
    for line in text.lines() {
        let line = if line.starts_with("socket = ") {
            "socket = \"{sock}\"".to_string()
        } else {
            line.replace("examples/servers", "{dir}/servers")
                .replace(
                    "\"./go_worker\"",
                    &format!("{:?}", tools_dir().join("bin/go_worker")),
                )
                .replace("/tmp/einhyrningsins-", "{dir}/")
                .replace("127.0.0.1:8080", &format!("127.0.0.1:{port_text}"))
        };
        toml.push_str(&line);
        toml.push('\n');
    }
    let p = port_text.clone();
    MasterBuilder::config(&toml)
        .env("PATH", &worker_path())
        .prepare(move |dir| {
            let d = dir.display().to_string();
            copy_tree(
                &Path::new(REPO).join("examples/servers"),
                &dir.join("servers"),
                &|t: &str| {
                    t.replace("127.0.0.1:8080", &format!("127.0.0.1:{p}"))
                        .replace("server.port = 8080", &format!("server.port = {p}"))
                        .replace("/tmp/einhyrningsins-", &format!("{d}/"))
                        .replace(
                            "var.CWD + \"/examples/servers/www\"",
                            &format!("\"{d}/servers/www\""),
                        )
                },
            );
        })
        .start()
}

/// What a run saw.
struct Run {
    fresh: (u64, Vec<String>),
    kept: (u64, Vec<String>),
}

/// Two upgrades under a new-connection loop and a keep-alive loop; the pool
/// must end rolled, at version 3, serving.
fn two_upgrades_under_load(server: &str, m: &Master) -> Run {
    let first = m.wait_acked("web", 2);
    let addr = m.addr("web");
    let fresh = Load::start(&addr, false);
    let kept = Load::start(&addr, true);
    fresh.wait_more(20);
    kept.wait_more(20);
    for _ in 0..2 {
        let out = m.ctl(&["-e", "upgrade"]);
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && said.contains("done"),
            "upgrade: {said} {}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            m.log_text()
        );
        fresh.wait_more(20);
        kept.wait_more(20);
    }
    m.wait_rolled("web", 3, 2, &first);
    fresh.wait_more(20);
    kept.wait_more(20);
    let run = Run {
        fresh: fresh.finish(),
        kept: kept.finish(),
    };
    eprintln!(
        "servers::{server}: {} new-connection requests, {} failed; {} keep-alive requests, {} failed",
        run.fresh.0,
        run.fresh.1.len(),
        run.kept.0,
        run.kept.1.len()
    );
    run
}

fn none_failed(what: &str, (ok, failures): &(u64, Vec<String>), m: &Master) {
    assert!(
        failures.is_empty(),
        "{what}: {} of {} requests failed: {:?}\nlog:\n{}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(5)],
        m.log_text()
    );
}

#[test]
fn gunicorn_notify_ack_fd_placeholder_and_no_failed_request() {
    if !available("gunicorn", &["gunicorn"]) {
        return;
    }
    let m = start("gunicorn", Port::Kernel);
    let run = two_upgrades_under_load("gunicorn", &m);
    none_failed("gunicorn, new connections", &run.fresh, &m);
    none_failed("gunicorn, keep-alive", &run.kept, &m);
    // Acked by its own READY=1, and told its fd through argv: `state` shows
    // the argv as resolved, the fd number that EINHORN_FD_0 holds.
    let st = m.state();
    let argv: Vec<&str> = st["pools"]["web"]["argv"]
        .as_array()
        .expect("argv in state")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    let bind = argv
        .iter()
        .find(|a| a.starts_with("fd://"))
        .expect("fd:// arg");
    let pid = st["pools"]["web"]["workers"][0]["pid"]
        .as_i64()
        .expect("pid") as i32;
    assert_eq!(
        bind.trim_start_matches("fd://"),
        environ(pid)["EINHORN_FD_0"],
        "{argv:?}"
    );
    assert_eq!(
        st["pools"]["web"]["workers"][0]["notify_status"],
        "Gunicorn arbiter booted"
    );
}

#[test]
fn uvicorn_fd_placeholder_rolls_and_its_drops_are_counted() {
    if !available("uvicorn", &["uvicorn"]) {
        return;
    }
    let m = start("uvicorn", Port::Kernel);
    let run = two_upgrades_under_load("uvicorn", &m);
    // uvicorn closes what it accepted but had not read when told to stop
    // (docs/workers.md): counted above, not asserted.
    let _ = run;
    http_get(&m.addr("web"), "/").expect("uvicorn serves after the roll");
}

#[test]
fn hypercorn_fd_placeholder_rolls_and_its_drops_are_counted() {
    if !available("hypercorn", &["hypercorn"]) {
        return;
    }
    let m = start("hypercorn", Port::Kernel);
    let _ = two_upgrades_under_load("hypercorn", &m);
    http_get(&m.addr("web"), "/").expect("hypercorn serves after the roll");
}

#[test]
fn go_net_http_with_a_graceful_drain_loses_no_request() {
    let go = tools_dir().join("bin/go_worker");
    if !available("go", &[&go.to_string_lossy()]) {
        return;
    }
    let m = start("go", Port::Kernel);
    let run = two_upgrades_under_load("go", &m);
    none_failed("go, new connections", &run.fresh, &m);
    none_failed("go, keep-alive", &run.kept, &m);
}

#[test]
fn node_http_with_a_graceful_drain_loses_no_request() {
    if !available("node", &["node"]) {
        return;
    }
    let m = start("node", Port::Kernel);
    let run = two_upgrades_under_load("node", &m);
    none_failed("node, new connections", &run.fresh, &m);
    none_failed("node, keep-alive", &run.kept, &m);
}

#[test]
fn nginx_on_a_non_blocking_listener_drains_without_sigkill() {
    if !available("nginx", &["nginx"]) {
        return;
    }
    let m = start("nginx", Port::Named);
    let run = two_upgrades_under_load("nginx", &m);
    none_failed("nginx, new connections", &run.fresh, &m);
    // With a blocking listener a draining nginx can sit in accept() until
    // SIGKILL; on the default non-blocking one each drain ends by itself.
    assert_eq!(m.log_count("SIGKILL"), 0, "log:\n{}", m.log_text());
}

#[test]
fn haproxy_fd_bind_loses_no_request() {
    if !available("haproxy", &["haproxy"]) {
        return;
    }
    let m = start("haproxy", Port::Kernel);
    let run = two_upgrades_under_load("haproxy", &m);
    none_failed("haproxy, new connections", &run.fresh, &m);
}

#[test]
fn lighttpd_socket_activation_loses_no_request() {
    if !available("lighttpd", &["lighttpd"]) {
        return;
    }
    let m = start("lighttpd", Port::Named);
    let run = two_upgrades_under_load("lighttpd", &m);
    none_failed("lighttpd, new connections", &run.fresh, &m);
}

#[test]
fn puma_socket_activation_and_notify_ack_lose_no_request() {
    if !available("puma", &["puma", "ruby"]) {
        return;
    }
    let gem = Proc::new("ruby")
        .args(["-e", "require 'sd_notify'"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !gem {
        eprintln!("SKIPPED: servers::puma: the sd_notify gem (Debian ruby-sd-notify) is missing");
        return;
    }
    let m = start("puma", Port::Named);
    let run = two_upgrades_under_load("puma", &m);
    none_failed("puma, new connections", &run.fresh, &m);
}

/// Every recipe's file (and the demo) is a valid configuration.
#[test]
fn every_example_config_passes_check() {
    let dir = Path::new(REPO).join("examples/configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("read examples/configs") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let (st, out, err) = Proc::new(MASTER)
            .arg("check")
            .arg(&path)
            .run_to_exit(Duration::from_secs(10));
        assert!(st.success(), "{}: {out}{err}", path.display());
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} example configs");
}
