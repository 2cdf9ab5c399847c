//! The one way to start a master: [`MasterBuilder`], and the running
//! [`Master`] it gives.
//!
//! The master runs in a private temp dir with its log (stdout and stderr) in
//! `master.log` there; `{sock}`, `{worker}` and `{dir}` in its config text,
//! arguments, environment values and files are replaced by the control socket
//! path, the Rust example worker and the temp dir. Dropping the [`Master`]
//! SIGKILLs it and then every process carrying its [`Tag`]: workers, their
//! children, and whatever wrapper started the master.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use super::procs::{Proc, Tag};
use super::tempdir::{test_label, TempDir};
use super::wait::wait_for;

pub const MASTER: &str = env!("CARGO_BIN_EXE_einhyrningsins");
pub const CTL: &str = env!("CARGO_BIN_EXE_einhyrningsinsctl");

/// Variables a service manager may have given the test run; a master under
/// test never sees them unless a test sets them.
const SERVICE_MANAGER_VARS: [&str; 6] = [
    "NOTIFY_SOCKET",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

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

fn expand(s: &str, dir: &Path, sock: &Path) -> String {
    s.replace("{sock}", &sock.to_string_lossy())
        .replace("{worker}", &http_worker().to_string_lossy())
        .replace("{dir}", &dir.to_string_lossy())
}

/// Write `text` (expanded) to `dir/name` atomically: a temp file renamed into
/// place, so neither the master nor its watcher ever sees half a file.
fn put_file(dir: &Path, sock: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, expand(text, dir, sock)).expect("write file");
    std::fs::rename(&tmp, dir.join(name)).expect("rename file into place");
}

/// A config file with `text` (not expanded) in a fresh temp dir, for runs of
/// the master that must refuse it; the dir and the file's path.
pub fn config_file(text: &str) -> (TempDir, String) {
    let dir = TempDir::new(&test_label());
    let path = dir.join("app.toml");
    std::fs::write(&path, text).expect("write config");
    let p = path.to_string_lossy().into_owned();
    (dir, p)
}

enum Run {
    /// `--config {dir}/app.toml`, from this text.
    Config(String),
    /// einhorn's command line; `-d {sock}` is put first.
    Cli(Vec<String>),
}

/// How a test starts its master. A fresh temp dir exists from the start, so
/// files can be put there before the master runs.
///
/// ```ignore
/// let m = MasterBuilder::config(TOML).files(&[("w.sh", SCRIPT)]).env("K", "v").start();
/// let m = MasterBuilder::cli(&["-n", "2", "--", "{worker}"]).start();
/// ```
pub struct MasterBuilder {
    run: Run,
    dir: TempDir,
    sock: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    wrapper: Vec<String>,
    listen_fds: Option<Vec<RawFd>>,
    fd_limit: Option<libc::rlim_t>,
    wait_for_socket: bool,
}

impl MasterBuilder {
    fn new(run: Run) -> MasterBuilder {
        let dir = TempDir::new(&test_label());
        let sock = dir.join("ctl.sock");
        MasterBuilder {
            run,
            dir,
            sock,
            args: Vec::new(),
            env: Vec::new(),
            wrapper: Vec::new(),
            listen_fds: None,
            fd_limit: None,
            wait_for_socket: true,
        }
    }

    /// A master run from a TOML config (written to `{dir}/app.toml` at start).
    pub fn config(toml: &str) -> MasterBuilder {
        MasterBuilder::new(Run::Config(toml.to_string()))
    }

    /// A master run with classic einhorn arguments; `-d {sock}` is added.
    pub fn cli(args: &[&str]) -> MasterBuilder {
        MasterBuilder::new(Run::Cli(args.iter().map(|a| a.to_string()).collect()))
    }

    /// The temp dir the master will run in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Put the control socket at `path` instead of `{dir}/ctl.sock` (a path
    /// that outlives this master: a stale socket, a second master on it). Call
    /// before anything that expands `{sock}`.
    pub fn socket(mut self, path: &Path) -> MasterBuilder {
        self.sock = path.to_path_buf();
        self
    }

    /// More arguments for the master (after `--config FILE`, or before the
    /// classic arguments).
    pub fn args(mut self, args: &[&str]) -> MasterBuilder {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// A variable in the master's environment (the value is expanded).
    pub fn env(mut self, key: &str, value: &str) -> MasterBuilder {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Several variables in the master's environment.
    pub fn envs(mut self, vars: &[(&str, &str)]) -> MasterBuilder {
        for (k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    /// Files (name, text) written into the temp dir now, expanded: wrapper
    /// scripts the pool's command points at, Python workers...
    pub fn files(self, files: &[(&str, &str)]) -> MasterBuilder {
        for (name, text) in files {
            put_file(self.dir.path(), &self.sock, name, text);
        }
        self
    }

    /// Run `f` on the temp dir now (copy a binary there, bind a socket...).
    pub fn prepare(self, f: impl FnOnce(&Path)) -> MasterBuilder {
        f(self.dir.path());
        self
    }

    /// Start the master through another program: `argv` (expanded), then the
    /// master's path and arguments (`sh -c 'exec "$@"' sh`, `unshare ...`,
    /// `systemd-socket-activate ...`). The wrapper carries the tag too.
    pub fn wrapper(mut self, argv: &[&str]) -> MasterBuilder {
        self.wrapper = argv.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Hand `fds` to the started program as fds 3, 4, ... (socket activation).
    pub fn listen_fds(mut self, fds: &[RawFd]) -> MasterBuilder {
        self.listen_fds = Some(fds.to_vec());
        self
    }

    /// Start the master with RLIMIT_NOFILE at `n`.
    pub fn fd_limit(mut self, n: u64) -> MasterBuilder {
        self.fd_limit = Some(n as libc::rlim_t);
        self
    }

    /// Do not wait for the control socket: the wrapper starts the master later
    /// (systemd-socket-activate, on the first connection).
    pub fn lazy(mut self) -> MasterBuilder {
        self.wait_for_socket = false;
        self
    }

    /// Start the master; unless [`MasterBuilder::lazy`], wait until its control
    /// socket accepts (panicking with its log if it exits first).
    pub fn start(self) -> Master {
        let MasterBuilder {
            run,
            dir,
            sock,
            args,
            env,
            wrapper,
            listen_fds,
            fd_limit,
            wait_for_socket,
        } = self;
        let x = |s: &str| expand(s, dir.path(), &sock);
        let mut argv: Vec<OsString> = wrapper.iter().map(|a| x(a).into()).collect();
        argv.push(MASTER.into());
        match &run {
            Run::Config(text) => {
                let cfg = dir.join("app.toml");
                std::fs::write(&cfg, x(text)).expect("write config");
                argv.extend(["--config".into(), cfg.into_os_string()]);
                argv.extend(args.iter().map(|a| x(a).into()));
            }
            Run::Cli(cli) => {
                argv.extend(["-d".into(), sock.clone().into_os_string()]);
                argv.extend(args.iter().map(|a| x(a).into()));
                argv.extend(cli.iter().map(|a| x(a).into()));
            }
        }
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        for v in SERVICE_MANAGER_VARS {
            cmd.env_remove(v);
        }
        for (k, v) in &env {
            cmd.env(k, x(v));
        }
        let tag = Tag::new();
        tag.apply(&mut cmd);
        let log = dir.join("master.log");
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("create log");
        cmd.stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log"))
            .stderr(logf);
        if let Some(n) = fd_limit {
            // SAFETY: setrlimit is async-signal-safe; nothing is allocated.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        if let Some(fds) = &listen_fds {
            // SAFETY: place_from_3 only calls dup3/dup2 and does not allocate.
            unsafe {
                cmd.pre_exec(super::fds::place_from_3(fds));
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn the master {argv:?}: {e}"));
        let mut m = Master {
            child: Some(child),
            tag,
            sock,
            log,
            dir,
        };
        if wait_for_socket {
            let sock = m.sock.clone();
            wait_for("the control socket", Duration::from_secs(10), || {
                if let Some(st) = m.try_exit() {
                    panic!("master exited early ({st}); log:\n{}", m.log_text());
                }
                UnixStream::connect(&sock).ok()
            });
        }
        m
    }
}

/// A running master (see [`MasterBuilder`]).
pub struct Master {
    child: Option<Child>,
    /// Dropped after the master is killed and before the temp dir goes.
    tag: Tag,
    pub sock: PathBuf,
    pub log: PathBuf,
    pub dir: TempDir,
}

impl Master {
    /// The pid of the process started (the master, or its wrapper).
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Live processes of this master's tree (it, its workers and their
    /// children, whatever their parent now).
    pub fn processes(&self) -> Vec<i32> {
        self.tag.processes()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
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
        let mut c = self.child.take().expect("master already exited");
        c.kill().expect("SIGKILL the master");
        c.wait().expect("reap the master")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lines of the master's log containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Wait until the log contains `needle`; the whole log. Only for facts the
    /// log alone shows: anything `state` shows is waited for there.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        wait_for(
            format!("{needle:?} in the log {}", self.log.display()),
            timeout,
            || {
                let t = self.log_text();
                t.contains(needle).then_some(t)
            },
        )
    }

    /// Run einhyrningsinsctl against this master.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Proc::new(CTL)
            .arg("-d")
            .arg(&self.sock)
            .args(args)
            .output()
            .expect("run einhyrningsinsctl")
    }

    /// The config file a [`MasterBuilder::config`] master was started from.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("app.toml")
    }

    /// `{sock}`, `{worker}` and `{dir}` in `text` replaced, as in a config.
    pub fn expand(&self, text: &str) -> String {
        expand(text, self.dir.path(), &self.sock)
    }

    /// Replace the config file (expanded, as at start) atomically.
    pub fn write_config(&self, toml: &str) {
        put_file(self.dir.path(), &self.sock, "app.toml", toml);
    }

    /// Replace a file in the temp dir atomically, expanded: what a deploy does
    /// to the binary before asking for an upgrade.
    pub fn put_file(&self, name: &str, text: &str) {
        put_file(self.dir.path(), &self.sock, name, text);
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Then `tag` drops: SIGKILL to every process of the tree, until none
        // is left.
    }
}
