//! The interactive shell of `einhyrningsinsctl` (rustyline) driven through a real
//! pseudo-terminal against a real master: what an operator's keystrokes do.
//!
//! Script mode (stdin not a terminal) is covered elsewhere; only a pty makes the
//! client take its rustyline path, so prompt, tab completion, history recall and
//! Ctrl-C/Ctrl-D handling can only be checked here. The pty is opened with
//! `libc::openpty` (no new crate), the client made its session leader with the
//! pty as controlling terminal, and its screen output read with deadlines:
//! every step waits for the text it expects (never a fixed sleep) and fails with
//! the screen text seen so far.
//!
//! `TERM=xterm` keeps rustyline's line editing on (it falls back to a plain
//! line reader for `dumb`); its escape sequences are stripped before matching,
//! so assertions are on the text an operator would read. The client leaves
//! rustyline's cursor-position query off (its default), so nothing on the
//! terminal side has to answer, and keys are typed only once the prompt they
//! are meant for is on the screen.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use crate::support::*;

/// Deadline for each screen expectation: generous for a loaded 2-core machine.
const STEP: Duration = Duration::from_secs(15);

const PROMPT: &str = "einhyrningsins> ";

/// Two pools on short ack timers, so a count change shows in `state` quickly.
const TWO_POOLS: &str = r#"
[control]
socket = "{sock}"
[pools.web]
command = ["{worker}"]
count = 1
binds = ["127.0.0.1:0"]
ack_timer = "50ms"
[pools.api]
command = ["{worker}"]
count = 1
binds = ["127.0.0.1:0"]
ack_timer = "50ms"
"#;

/// The client running on the slave side of a pty; we hold the master side.
struct Shell {
    child: Option<Running>,
    pty: File,
    /// Everything the client wrote to the terminal, raw.
    raw: Vec<u8>,
    /// How much of the stripped screen text earlier expectations consumed.
    mark: usize,
    /// The pty reported EOF/EIO: no more output will come.
    closed: bool,
}

impl Shell {
    fn spawn(sock: &std::path::Path, home: &std::path::Path) -> Shell {
        let (mut master, mut slave) = (-1, -1);
        // Wide enough that no line of `status` or of the completion list wraps.
        let ws = libc::winsize {
            ws_row: 50,
            ws_col: 200,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &ws,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        for fd in [master, slave] {
            // Neither end may leak into the client beyond its stdio copies.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        let master = unsafe { OwnedFd::from_raw_fd(master) };
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup pty slave"));
        let cmd = Proc::new(CTL)
            .arg("-d")
            .arg(sock)
            .env("HOME", home)
            .env("TERM", "xterm")
            .env("USER", "shell-test")
            .env_remove("EINHORN_SOCK_PATH")
            .env_remove("COLUMNS")
            .env_remove("LINES")
            .stdin(stdio(&slave))
            .stdout(stdio(&slave))
            .stderr(stdio(&slave));
        // SAFETY: setsid and ioctl are async-signal-safe; nothing is allocated.
        let cmd = unsafe {
            // A session of its own with the pty as controlling terminal, as a
            // login shell would have it (/dev/tty, job-control signals).
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        // Spawning drops the command's copies of the slave; ours must go too,
        // so the master side reports EIO once the client has exited.
        let child = cmd.spawn().expect("spawn einhyrningsinsctl on a pty");
        drop(slave);
        Shell {
            child: Some(child),
            pty: File::from(master),
            raw: Vec::new(),
            mark: 0,
            closed: false,
        }
    }

    fn send(&mut self, keys: &str) {
        self.pty
            .write_all(keys.as_bytes())
            .expect("write to the pty");
    }

    fn screen(&self) -> String {
        strip(&self.raw)
    }

    /// Reads whatever the client writes within `wait` (returns early on output).
    fn pump(&mut self, wait: Duration) {
        if self.closed {
            return;
        }
        let mut pfd = libc::pollfd {
            fd: self.pty.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().clamp(1, 1000) as i32;
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 {
            return;
        }
        let mut buf = [0u8; 8192];
        match self.pty.read(&mut buf) {
            Ok(0) => self.closed = true,
            Ok(k) => self.raw.extend_from_slice(&buf[..k]),
            // EIO: every slave descriptor is closed, i.e. the client is gone.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => self.closed = true,
        }
    }

    /// Waits until `needle` appears in the screen text after what earlier
    /// expectations consumed; returns that text up to and including it.
    fn expect(&mut self, needle: &str) -> String {
        // Some(Some(i)): found at i past the mark; Some(None): terminal closed.
        let found = poll_until(STEP, || {
            let screen = self.screen();
            if let Some(i) = screen[self.mark.min(screen.len())..].find(needle) {
                return Some(Some(i));
            }
            if self.closed {
                return Some(None);
            }
            self.pump(Duration::from_millis(100));
            None
        });
        let screen = self.screen();
        let rest = &screen[self.mark.min(screen.len())..];
        if let Some(Some(i)) = found {
            let seen = rest[..i + needle.len()].to_string();
            self.mark += i + needle.len();
            return seen;
        }
        panic!(
            "{} waiting for {needle:?} on the shell's terminal; seen since the last \
             match:\n{rest}\n--- whole screen (escapes stripped):\n{screen}",
            if found.is_some() {
                "terminal closed"
            } else {
                "timed out"
            }
        );
    }

    /// Waits for the next prompt; the text before it (the last command's output).
    fn prompt(&mut self) -> String {
        let seen = self.expect(PROMPT);
        seen[..seen.len() - PROMPT.len()].to_string()
    }

    /// Types a line, Enter included; the output up to the next prompt.
    fn run(&mut self, line: &str) -> String {
        self.send(line);
        self.send("\r");
        self.prompt()
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let child = &mut self.child.as_mut().expect("shell already reaped").child;
        let status = wait_for("the shell to exit", STEP, || {
            child.try_wait().expect("try_wait on the shell")
        });
        self.child = None;
        status
    }
}

/// Screen text without terminal control: CSI and OSC sequences, other
/// two-byte escapes, carriage returns and bells. An escape cut off at the end
/// of the buffer yields nothing, so the text only ever grows as output arrives.
fn strip(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        match c {
            '\x1b' => match it.next() {
                Some('[') => {
                    for c in it.by_ref() {
                        if ('\x40'..='\x7e').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    while let Some(c) = it.next() {
                        if c == '\x07' {
                            break;
                        }
                        if c == '\x1b' {
                            it.next();
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\r' | '\x07' => {}
            c => out.push(c),
        }
    }
    out
}

fn count(m: &Master, pool: &str) -> u64 {
    m.state()["pools"][pool]["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("pool {pool} has no count in state"))
}

#[test]
fn strip_removes_escapes_and_keeps_text() {
    assert_eq!(
        strip(b"\x1b[6n\x1b[?2004h\x1b]0;title\x07ab\r\x1b[Kc\x07d\r\n"),
        "abcd\n"
    );
    // A sequence cut short at the end is dropped, not half-shown.
    assert_eq!(strip(b"x\x1b[1"), "x");
}

#[test]
fn interactive_shell_on_a_pty() {
    let mut m = MasterBuilder::config(TWO_POOLS).start();
    let web = m.wait_acked("web", 1);
    let api = m.wait_acked("api", 1);
    let home = TempDir::new("shell-home");
    let mut sh = Shell::spawn(&m.sock, home.path());

    // The greeting (ehlo, sent on connect) comes before the first prompt.
    let greeting = sh.prompt();
    assert!(
        greeting.contains("einhyrningsins"),
        "greeting: {greeting:?}"
    );

    // `status` prints the master's table: both pools and their workers' pids.
    let out = sh.run("status");
    for needle in ["pool web:", "pool api:"] {
        assert!(out.contains(needle), "status lacks {needle:?}:\n{out}");
    }
    for pid in web.iter().chain(&api) {
        assert!(
            out.contains(&pid.to_string()),
            "status lacks pid {pid}:\n{out}"
        );
    }

    // Tab completion, bash style: the first TAB extends `upg` to the common
    // prefix `upgrade`, the second lists both candidates.
    sh.send("upg\t");
    sh.expect(&format!("{PROMPT}upgrade"));
    sh.send("\t");
    let listed = sh.expect("upgrade_fleet");
    let list_line = listed.lines().last().unwrap_or("");
    assert_eq!(
        list_line.split_whitespace().collect::<Vec<_>>(),
        ["upgrade", "upgrade_fleet"],
        "completion list line {list_line:?} in:\n{listed}"
    );
    // The line is redrawn under the list, still holding `upgrade`.
    sh.expect(&format!("{PROMPT}upgrade"));
    // Ctrl-C abandons the line (nothing is sent) and gives a fresh prompt.
    sh.send("\x03");
    sh.prompt();
    // A unique prefix completes to the whole name, which then runs.
    sh.send("che\t");
    sh.expect(&format!("{PROMPT}check"));
    sh.send("\r");
    let out = sh.prompt();
    assert!(
        out.contains("ready: api 1/1 acked; web 1/1 acked"),
        "check after completion:\n{out}"
    );
    assert!(!out.contains("upgrade"), "the abandoned line ran:\n{out}");
    assert_eq!(m.version("web"), 1, "Ctrl-C must not have sent `upgrade`");

    // `pool web` makes web the default pool for later count changes.
    let out = sh.run("pool web");
    assert!(out.trim() == "pool web", "pool web printed:\n{out}");
    let out = sh.run("pool");
    assert!(out.contains("default pool: web"), "{out}");
    sh.run("inc");
    wait_for("web's count to go to 2", STEP, || {
        (count(&m, "web") == 2).then_some(())
    });
    assert_eq!(count(&m, "api"), 1, "inc went to the wrong pool");

    // `pool -` clears it: with two pools, `inc` is now refused, and the error
    // reply is shown without ending the shell.
    sh.run("pool -");
    let out = sh.run("pool");
    assert!(out.contains("no default pool"), "{out}");
    let out = sh.run("inc");
    assert!(
        out.contains("inc changes a count: say which pool"),
        "inc without a pool:\n{out}"
    );
    let out = sh.run("set_workers many --pool web");
    assert!(
        out.contains("\"many\" is not a worker count"),
        "set_workers many:\n{out}"
    );
    assert_eq!(count(&m, "web"), 2);
    assert_eq!(count(&m, "api"), 1);
    // A line the shell cannot split is reported by the shell itself.
    let out = sh.run("pool 'web");
    assert!(
        out.contains("cannot split the line: unterminated single quote"),
        "{out}"
    );
    // At the prompt, `help` adds the shell's own commands to the master's list.
    let out = sh.run("help");
    assert!(
        out.contains("set_workers") && out.contains("Shell commands: pool NAME"),
        "help at the prompt:\n{out}"
    );

    // History: Up recalls the last line, Enter runs it again.
    sh.run("version");
    sh.send("\x1b[A");
    sh.expect(&format!("{PROMPT}version"));
    sh.send("\r");
    let out = sh.prompt();
    assert!(
        out.contains(env!("CARGO_PKG_VERSION")),
        "recalled `version`:\n{out}"
    );
    // Two steps back: the line before it (`help`); Ctrl-C drops the recall.
    sh.send("\x1b[A\x1b[A");
    sh.expect(&format!("{PROMPT}help"));
    sh.send("\x03");
    sh.prompt();

    // The master goes away while the shell idles: the next command says so,
    // fails to reconnect, and the shell keeps its prompt.
    let sock = m.sock.clone();
    m.kill_hard();
    let out = sh.run("status");
    assert!(
        out.contains("master went away") && out.contains("reconnecting"),
        "after the master died:\n{out}"
    );
    assert!(
        out.contains("no master is listening"),
        "reconnect to a dead master:\n{out}"
    );
    // A new master on the same socket: the same shell reconnects to it.
    let m2 = MasterBuilder::cli(&["-n", "1", "--", "{worker}"])
        .socket(&sock)
        .start();
    let out = sh.run("status");
    assert!(
        out.contains(&format!("pid {}", m2.pid())),
        "status from the new master (pid {}):\n{out}",
        m2.pid()
    );

    // Ctrl-D at an empty prompt leaves with status 0.
    sh.send("\x04");
    let status = sh.wait_exit();
    assert_eq!(status.code(), Some(0), "shell exit: {status}");

    // The history went to $HOME, one entry per command typed (as typed: the
    // completed `check ` keeps the space the completion added).
    let hist = std::fs::read_to_string(home.join(".einhyrningsinsctl_history"))
        .expect("history file in $HOME");
    for line in ["status", "check", "pool web", "set_workers many --pool web"] {
        assert!(
            hist.lines().any(|l| l.trim_end() == line),
            "history lacks {line:?}:\n{hist}"
        );
    }
    assert!(
        !hist.lines().any(|l| l.starts_with("upgrade")),
        "an abandoned line went to the history:\n{hist}"
    );
}
