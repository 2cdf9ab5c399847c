//! Integration-test harness: runs the real `einhyrningsins` binary with real
//! workers in a private temp dir, and talks to it over its real control socket.
//!
//! Nothing here sleeps for synchronisation: every wait polls a condition against a
//! deadline. A `Drop` guard kills the master and every worker it reported, so a
//! failing test leaves no process behind.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const MASTER: &str = env!("CARGO_BIN_EXE_einhyrningsins");
pub const CTL: &str = env!("CARGO_BIN_EXE_einhyrningsinsctl");

/// The Rust example worker (built by `cargo test` as an example).
pub fn http_worker() -> PathBuf {
    let mut p = PathBuf::from(MASTER);
    p.pop();
    p.push("examples");
    p.push("http_worker");
    assert!(
        p.exists(),
        "{} is missing: run `cargo test` (which builds examples) or `cargo build --examples`",
        p.display()
    );
    p
}

/// A fresh, short temp dir (unix socket paths must stay under ~108 bytes).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "ehy-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Poll `f` until it returns `Some`, or panic with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A port the kernel picked and released (for configs that need a fixed port).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind :0");
    l.local_addr().expect("local addr").port()
}

pub struct Master {
    pub child: Option<Child>,
    pub dir: TempDir,
    pub sock: PathBuf,
    pub log: PathBuf,
    /// Workers seen in `state`, with their start time, so that the drop guard
    /// kills only those very processes (never a pid reused by another one).
    seen_pids: Vec<(i32, u64)>,
}

impl Master {
    /// Start a master from a TOML text. `{sock}` and `{worker}` and `{dir}` in the
    /// text are replaced by the control socket path, the example worker path and
    /// the temp dir.
    pub fn with_config(tag: &str, toml: &str) -> Master {
        Master::start_config(tag, toml, &[], &[], |_, _| {})
    }

    /// The general form of the `with_config*` constructors: the config written
    /// into a fresh temp dir, `prepare` run on that dir (to put files the config
    /// names there), then the master started with extra arguments and environment.
    pub fn start_config(
        tag: &str,
        toml: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
        prepare: impl FnOnce(&TempDir, &Path),
    ) -> Master {
        let (dir, sock, cfg) = Master::prepare_config(tag, toml);
        prepare(&dir, &sock);
        let cfg_s = cfg.to_string_lossy().into_owned();
        let mut args = vec!["--config", &cfg_s];
        args.extend_from_slice(extra_args);
        Master::spawn_env(dir, sock, &args, env)
    }

    /// Start a master with classic command-line arguments; `-d` is added.
    pub fn with_args(tag: &str, args: &[&str]) -> Master {
        Master::with_args_prepared(tag, args, |_| {})
    }

    /// [`Master::with_config`] with extra variables in the master's environment.
    pub fn with_config_env(tag: &str, toml: &str, env: &[(&str, &str)]) -> Master {
        Master::start_config(tag, toml, &[], env, |_, _| {})
    }

    /// [`Master::with_args`] with the control socket at `sock` (which may outlive
    /// this master, e.g. to test a stale socket file) instead of in the temp dir.
    pub fn with_args_at(tag: &str, sock: &Path, args: &[&str]) -> Master {
        let dir = TempDir::new(tag);
        let sock_s = sock.to_string_lossy().into_owned();
        let mut all = vec!["-d", &sock_s];
        let expanded: Vec<String> = args.iter().map(|a| expand(a, &dir, sock)).collect();
        all.extend(expanded.iter().map(String::as_str));
        Master::spawn_env(dir, sock.to_path_buf(), &all, &[])
    }

    /// Like `with_config`, with extra master arguments, and `prepare` run on the
    /// temp dir before the master starts (to put files the config names there).
    pub fn with_config_prepared(
        tag: &str,
        toml: &str,
        extra_args: &[&str],
        prepare: impl FnOnce(&Path),
    ) -> Master {
        Master::start_config(tag, toml, extra_args, &[], |dir, _| prepare(dir.path()))
    }

    /// Like `with_args`, with `prepare` run on the temp dir before the master starts.
    pub fn with_args_prepared(tag: &str, args: &[&str], prepare: impl FnOnce(&Path)) -> Master {
        let dir = TempDir::new(tag);
        prepare(dir.path());
        let sock = dir.join("ctl.sock");
        let sock_s = sock.to_string_lossy().into_owned();
        let mut all = vec!["-d", &sock_s];
        let expanded: Vec<String> = args.iter().map(|a| expand(a, &dir, &sock)).collect();
        all.extend(expanded.iter().map(String::as_str));
        Master::spawn_env(dir, sock, &all, &[])
    }

    /// The config file a `with_config*` master was started from.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("app.toml")
    }

    /// Replace the config file (placeholders expanded, as at start) atomically:
    /// written to a temp file and renamed over it, so a watcher never sees half.
    pub fn write_config(&self, toml: &str) {
        let text = expand(toml, &self.dir, &self.sock);
        let tmp = self.dir.join(".app.toml.tmp");
        std::fs::write(&tmp, text).expect("write new config");
        std::fs::rename(&tmp, self.config_path()).expect("rename new config");
    }

    /// A pool's version (bumped by each upgrade), from `state`.
    pub fn version(&mut self, pool: &str) -> u64 {
        self.state()["pools"][pool]["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("pool {pool} has no version in state"))
    }

    /// Lines of the master's log containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn spawn_env(dir: TempDir, sock: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Master {
        let mut cmd = Command::new(MASTER);
        cmd.args(args).envs(env.iter().copied());
        Master::from_command(dir, sock, cmd)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One JSON request, all reply lines until the final one (no `wait`).
    pub fn request(&self, req: Value) -> Vec<Value> {
        request_at(&self.sock, &req)
    }

    /// Send a command (optionally to a pool); the final reply's message, and
    /// whether it was an error.
    pub fn cmd(&self, command: &str, args: &[&str], pool: Option<&str>) -> (String, bool) {
        let mut req = serde_json::json!({"command": command, "args": args, "id": 1});
        if let Some(p) = pool {
            req["pool"] = Value::from(p);
        }
        let replies = self.request(req);
        let last = replies.last().cloned().unwrap_or(Value::Null);
        (
            last["message"].as_str().unwrap_or("").to_string(),
            last["error"].as_bool().unwrap_or(false),
        )
    }

    /// The `state` dump.
    pub fn state(&mut self) -> Value {
        let (msg, err) = self.cmd("state", &[], None);
        assert!(!err, "state failed: {msg}");
        let v: Value = serde_json::from_str(&msg).expect("state is JSON");
        if let Some(pools) = v["pools"].as_object() {
            for p in pools.values() {
                for w in p["workers"].as_array().into_iter().flatten() {
                    if let Some(pid) = w["pid"].as_i64() {
                        self.remember(pid as i32);
                    }
                }
            }
        }
        v
    }

    /// Pids of a pool's workers in a given state ("acked", "unacked", "draining").
    pub fn pids(&mut self, pool: &str, state: &str) -> Vec<i32> {
        let st = self.state();
        let mut v: Vec<i32> = st["pools"][pool]["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| w["state"] == state)
            .filter_map(|w| w["pid"].as_i64().map(|p| p as i32))
            .collect();
        v.sort_unstable();
        v
    }

    /// Wait until `pool` has exactly `n` acked workers and nothing else.
    pub fn wait_acked(&mut self, pool: &str, n: usize) -> Vec<i32> {
        let log = self.log.clone();
        wait_for(
            &format!("{n} acked workers in pool {pool} (log: {})", log.display()),
            Duration::from_secs(30),
            || {
                let st = self.state();
                let ws = st["pools"][pool]["workers"].as_array()?.clone();
                let acked: Vec<i32> = ws
                    .iter()
                    .filter(|w| w["state"] == "acked")
                    .filter_map(|w| w["pid"].as_i64().map(|p| p as i32))
                    .collect();
                (acked.len() == n && ws.len() == n).then_some(acked)
            },
        )
    }

    /// Exit status if the master has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let st = wait_for("the master to exit", timeout, || self.try_exit());
        self.child = None;
        st
    }

    /// SIGKILL the master (its workers are not touched) and reap it.
    pub fn kill_hard(&mut self) -> ExitStatus {
        let _ = self.state_quiet();
        let mut c = self.child.take().expect("master already exited");
        c.kill().expect("SIGKILL the master");
        c.wait().expect("reap the master")
    }

    /// Wait until the log contains `needle`; the whole log.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        wait_for(
            &format!("{needle:?} in the log {}", self.log.display()),
            timeout,
            || {
                let t = self.log_text();
                t.contains(needle).then_some(t)
            },
        )
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Run einhyrningsinsctl against this master.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(CTL)
            .arg("-d")
            .arg(&self.sock)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run einhyrningsinsctl")
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = self.state_quiet();
            let _ = c.kill();
            let _ = c.wait();
        }
        for &(pid, started) in &self.seen_pids {
            if start_time(pid) == Some(started) {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// A process's parent pid and start time (clock ticks since boot), from
/// /proc/PID/stat fields 4 and 22.
fn parent_and_start(pid: i32) -> Option<(i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

fn start_time(pid: i32) -> Option<u64> {
    parent_and_start(pid).map(|(_, t)| t)
}

impl Master {
    fn remember(&mut self, pid: i32) {
        if self.seen_pids.iter().any(|(p, _)| *p == pid) {
            return;
        }
        // Only our master's children: a pid reported by a master in another
        // pid namespace names some other process here.
        if let Some((ppid, t)) = parent_and_start(pid) {
            if ppid == self.pid() {
                self.seen_pids.push((pid, t));
            }
        }
    }

    fn state_quiet(&mut self) -> Option<()> {
        let mut s = UnixStream::connect(&self.sock).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok();
        s.write_all(b"{\"command\":\"state\"}\n").ok()?;
        // One reply line: the master keeps an open connection open, so reading
        // to EOF would time out and lose the pids (leaking workers).
        let mut buf = String::new();
        BufReader::new(s).read_line(&mut buf).ok()?;
        let v: Value = serde_json::from_str(buf.trim()).ok()?;
        let st: Value = serde_json::from_str(v["message"].as_str()?).ok()?;
        for p in st["pools"].as_object()?.values() {
            for w in p["workers"].as_array()? {
                if let Some(pid) = w["pid"].as_i64() {
                    self.remember(pid as i32);
                }
            }
        }
        Some(())
    }
}

fn expand(s: &str, dir: &TempDir, sock: &Path) -> String {
    s.replace("{sock}", &sock.to_string_lossy())
        .replace("{worker}", &http_worker().to_string_lossy())
        .replace("{dir}", &dir.path().to_string_lossy())
}

/// `GET path` over a new connection with `Connection: close`; the body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    if !resp.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("bad response: {resp:?}")));
    }
    Ok(resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// Is a process alive (and not a zombie)?
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

impl Master {
    /// Like [`Master::with_config`], but first writes `files` (name, text) into the
    /// temp dir, with the same `{sock}`/`{worker}`/`{dir}` expansion: wrapper
    /// scripts the pool's command points at, which a test later swaps to make the
    /// "new version" behave differently.
    pub fn with_config_files(tag: &str, toml: &str, files: &[(&str, &str)]) -> Master {
        Master::start_config(tag, toml, &[], &[], |dir, sock| {
            for (name, text) in files {
                put_file(dir, sock, name, text);
            }
        })
    }

    /// Replace a file in the temp dir atomically (write, then rename), with
    /// expansion: what a deploy does to the binary before asking for an upgrade.
    pub fn put_file(&self, name: &str, text: &str) {
        put_file(&self.dir, &self.sock, name, text);
    }

    /// The first bound address of `pool`, as `state` reports it (after port 0
    /// resolution).
    pub fn addr(&mut self, pool: &str) -> String {
        let st = self.state();
        st["pools"][pool]["binds"][0]
            .as_str()
            .unwrap_or_else(|| panic!("pool {pool} has no bind in state: {st}"))
            .to_string()
    }
}

fn put_file(dir: &TempDir, sock: &Path, name: &str, text: &str) {
    let tmp = dir.join(&format!(".{name}.tmp"));
    std::fs::write(&tmp, expand(text, dir, sock)).expect("write file");
    std::fs::rename(&tmp, dir.join(name)).expect("rename file into place");
}

/// One JSON request to the control socket at `sock`; every reply line up to the
/// final one. Usable from threads that do not own the [`Master`].
pub fn request_at(sock: &Path, req: &Value) -> Vec<Value> {
    let mut s = UnixStream::connect(sock).expect("connect control socket");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut line = req.to_string();
    line.push('\n');
    s.write_all(line.as_bytes()).expect("send request");
    let mut out = Vec::new();
    let mut r = BufReader::new(s);
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap_or(0) == 0 {
            return out;
        }
        let v: Value = serde_json::from_str(&l).expect("reply is JSON");
        let more = v.get("wait").and_then(Value::as_bool).unwrap_or(false);
        out.push(v);
        if !more {
            return out;
        }
    }
}

/// The `state` dump from the control socket at `sock` (for sampler threads).
pub fn state_at(sock: &Path) -> Value {
    let replies = request_at(sock, &serde_json::json!({"command": "state"}));
    let msg = replies
        .last()
        .and_then(|v| v["message"].as_str())
        .expect("state reply has a message");
    serde_json::from_str(msg).expect("state is JSON")
}

impl Master {
    /// Start a master from a prepared command (extra env, inherited fds, a
    /// trampoline...). The command's stdout/stderr go to the log; waits for the
    /// control socket `sock`.
    pub fn from_command(dir: TempDir, sock: PathBuf, mut cmd: Command) -> Master {
        let log = dir.join("master.log");
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("create log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log"))
            .stderr(logf)
            .spawn()
            .expect("spawn master");
        let mut m = Master {
            child: Some(child),
            dir,
            sock,
            log,
            seen_pids: Vec::new(),
        };
        let sock = m.sock.clone();
        wait_for("the control socket", Duration::from_secs(10), || {
            if let Some(st) = m.try_exit() {
                panic!("master exited early ({st}); log:\n{}", m.log_text());
            }
            UnixStream::connect(&sock).ok()
        });
        m
    }

    /// Write a TOML config (same `{sock}`/`{worker}`/`{dir}` expansion as
    /// [`Master::with_config`]) into a fresh temp dir; returns the dir, the control
    /// socket path and the config path, for [`Master::from_command`].
    pub fn prepare_config(tag: &str, toml: &str) -> (TempDir, PathBuf, PathBuf) {
        let dir = TempDir::new(tag);
        let sock = dir.join("ctl.sock");
        let text = expand(toml, &dir, &sock);
        let cfg = dir.join("app.toml");
        std::fs::write(&cfg, text).expect("write config");
        (dir, sock, cfg)
    }

    /// Hand the master process over (e.g. to wait for it elsewhere); the guard
    /// still kills the workers it saw.
    pub fn take_child(&mut self) -> Option<Child> {
        self.child.take()
    }
}

/// `GET path` returning the status line's code and the body (any status).
pub fn http_get_status(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((
        code,
        resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    ))
}

/// Run the master (or any program) that is expected to exit by itself, e.g. on a
/// bad configuration; panics (after killing it) if it is still running after
/// `timeout`. Returns the exit status, stdout and stderr.
pub fn run_to_exit(
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> (ExitStatus, String, String) {
    let dir = TempDir::new("run");
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("create stdout file"))
        .stderr(std::fs::File::create(&err).expect("create stderr file"))
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{program} {args:?} still running after {timeout:?}; stderr:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status,
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default(),
    )
}

/// The local TCP port of socket `fd` in process `pid` (via /proc), if it is a
/// TCP socket: which bind an inherited fd number really is.
pub fn tcp_port_of_fd(pid: i32, fd: i32) -> Option<u16> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let inode = link
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .to_string();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok()?;
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(9) == Some(&inode.as_str()) {
                let port = cols.get(1)?.rsplit(':').next()?;
                return u16::from_str_radix(port, 16).ok();
            }
        }
    }
    None
}

/// Timestamps (ms since midnight UTC) of log lines containing `needle`, in order.
/// The master's log lines start with an RFC 3339 timestamp with milliseconds.
pub fn log_times(log: &str, needle: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            let ts = l.split_whitespace().next()?;
            let time = ts.split('T').nth(1)?.trim_end_matches('Z');
            let mut it = time.split(':');
            let h: u64 = it.next()?.parse().ok()?;
            let m: u64 = it.next()?.parse().ok()?;
            let s: f64 = it.next()?.parse().ok()?;
            Some((h * 3600 + m * 60) * 1000 + (s * 1000.0).round() as u64)
        })
        .collect()
}

/// Copy the example worker to `to` (a new inode, executable).
pub fn copy_worker(to: &Path) {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).expect("create dir for worker copy");
    }
    std::fs::copy(http_worker(), to).expect("copy example worker");
}

/// Set a file's mtime to now (creating it if needed), as `touch` does.
pub fn touch(path: &Path) {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open file to touch");
    f.set_modified(std::time::SystemTime::now())
        .expect("set mtime");
}
