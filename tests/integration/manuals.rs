//! What a user installs besides the binaries: the man pages render and their
//! OPTIONS are exactly `--help`'s, the completion scripts load in bash, zsh
//! and fish, and they complete a pool name from a live master (bash in a
//! pty; fish through `complete -C`). A missing tool makes its test print
//! SKIPPED. That the committed files are current is checked by the unit
//! tests next to their generators (src/manual/, src/bin/einhyrningsinsctl/manual.rs).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;

const T: Duration = Duration::from_secs(20);

/// Whether `program` is in PATH (mandoc has no --version for [`have`]).
fn installed(program: &str) -> bool {
    Proc::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The page as text, by `man -l` or mandoc; None when neither is installed.
fn render(page: &Path) -> Option<String> {
    let out = if installed("man") {
        Proc::new("man")
            .arg("-l")
            .arg(page)
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .env("MANWIDTH", "200")
            .output()
    } else if installed("mandoc") {
        Proc::new("mandoc").arg("-Tascii").arg(page).output()
    } else {
        return None;
    };
    let out = out.expect("run man");
    assert!(out.status.success(), "{}: {out:?}", page.display());
    // Strip overstrike (bold, underline) if the formatter kept it.
    let mut text = String::new();
    for c in String::from_utf8_lossy(&out.stdout).chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    Some(text)
}

/// The long options listed in `text` between the line `from` and the next
/// line at the margin (a section heading), or to the end.
fn long_options(text: &str, from: &str) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    let mut inside = false;
    for line in text.lines() {
        if line.trim_end() == from {
            inside = true;
            continue;
        }
        if inside && !line.is_empty() && !line.starts_with(' ') {
            break;
        }
        if !inside {
            continue;
        }
        // Only the option lines themselves: the first word of the line.
        let t = line.trim_start();
        if !t.starts_with('-') {
            continue;
        }
        for word in t.split([' ', ',', '=', '<', '[']) {
            if let Some(name) = word.strip_prefix("--") {
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                if !name.is_empty() {
                    set.insert(name);
                }
            }
        }
    }
    set
}

#[test]
fn each_man_page_renders_and_its_options_are_the_help_options() {
    for (page, bin) in [
        ("man/einhyrningsins.1", MASTER),
        ("man/einhyrningsinsctl.1", CTL),
    ] {
        let Some(text) = render(&repo(page)) else {
            eprintln!(
                "SKIPPED: manuals: neither man nor mandoc is installed (.ci/run installs mandoc)"
            );
            return;
        };
        let (st, help, _) = run_to_exit(bin, &["--help"], T);
        assert!(st.success());
        let want = long_options(&help, "Options:");
        let got = long_options(&text, "OPTIONS");
        assert!(want.len() > 5, "{bin} --help: {want:?}");
        assert_eq!(got, want, "{page}: OPTIONS differ from {bin} --help");
        for needle in ["NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS", "SEE ALSO"] {
            assert!(text.contains(needle), "{page}: {needle} missing");
        }
    }
    let Some(text) = render(&repo("man/einhyrningsins.toml.5")) else {
        return;
    };
    for needle in [
        "[pools.NAME]",
        "max_surge",
        "allow_uids",
        "respawn_delay",
        "Default:",
    ] {
        assert!(
            text.contains(needle),
            "einhyrningsins.toml(5): {needle} missing"
        );
    }
}

#[test]
fn each_completion_script_loads_in_its_shell() {
    let scripts = [
        ("bash", "einhyrningsins.bash"),
        ("bash", "einhyrningsinsctl.bash"),
        ("zsh", "_einhyrningsins"),
        ("zsh", "_einhyrningsinsctl"),
        ("fish", "einhyrningsins.fish"),
        ("fish", "einhyrningsinsctl.fish"),
    ];
    for (shell, file) in scripts {
        if !installed(shell) {
            eprintln!("SKIPPED: manuals: {shell} is not installed; {file} not checked (.ci/run installs it)");
            continue;
        }
        let path = repo(&format!("contrib/completions/{file}"));
        let out = Proc::new(shell)
            .arg("-n")
            .arg(&path)
            .output()
            .expect("run shell");
        assert!(out.status.success(), "{shell} -n {file}: {out:?}");
    }
}

const POOLS: &str = r#"
[control]
socket = "{sock}"
[watch]
enabled = false
[pools.webfront]
command = ["{worker}"]
[pools.api]
command = ["{worker}"]
"#;

/// PATH with the built einhyrningsinsctl first, as an installed one would be.
fn path_with_ctl() -> String {
    let dir = Path::new(CTL)
        .parent()
        .expect("ctl dir")
        .display()
        .to_string();
    format!("{dir}:{}", std::env::var("PATH").unwrap_or_default())
}

/// Types `einhyrningsinsctl -d SOCK --pool web<TAB>` into an interactive
/// bash in a pty and waits for the line to read `webfront`.
const PTY: &str = r#"
import os, pty, select, sys, time
script, sock = sys.argv[1], sys.argv[2]
pid, fd = pty.fork()
if pid == 0:
    os.execvp("bash", ["bash", "--norc", "--noprofile", "-i"])
def send(s):
    os.write(fd, s.encode())
out = b""
def read_for(secs, want=None):
    global out
    end = time.time() + secs
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                out += os.read(fd, 4096)
            except OSError:
                return False
        if want and want in out:
            return True
    return False
send("PS1='$ '; bind 'set show-all-if-ambiguous on' 2>/dev/null; source %s; echo LOADED\n" % script)
ok = read_for(10, b"LOADED\r\n")
send("einhyrningsinsctl -d %s --pool web\t" % sock)
ok = ok and read_for(10, b"--pool webfront")
os.kill(pid, 9)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(0 if ok else 1)
"#;

#[test]
fn bash_completes_a_pool_name_from_a_live_master_in_a_pty() {
    if !installed("bash") || !installed("python3") {
        eprintln!(
            "SKIPPED: manuals: bash or python3 missing; pool completion not checked in a pty"
        );
        return;
    }
    let m = MasterBuilder::config(POOLS).start();
    m.wait_acked("webfront", 1);
    let script = repo("contrib/completions/einhyrningsinsctl.bash");
    let out = Proc::new("python3")
        .arg("-c")
        .arg(PTY)
        .arg(&script)
        .arg(&m.sock)
        .env("PATH", path_with_ctl())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "bash did not complete the pool name:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn fish_completes_a_pool_name_from_a_live_master() {
    if !installed("fish") {
        eprintln!("SKIPPED: manuals: fish is not installed; its pool completion not checked");
        return;
    }
    let m = MasterBuilder::config(POOLS).start();
    m.wait_acked("api", 1);
    let script = repo("contrib/completions/einhyrningsinsctl.fish");
    let out = Proc::new("fish")
        .arg("--no-config")
        .arg("-c")
        .arg(format!(
            "source {}; complete -C 'einhyrningsinsctl -d {} --pool '",
            script.display(),
            m.sock.display()
        ))
        .env("PATH", path_with_ctl())
        .output()
        .expect("fish");
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = text
        .lines()
        .map(|l| l.split('\t').next().unwrap_or(""))
        .collect();
    assert!(
        names.contains(&"webfront") && names.contains(&"api"),
        "{text}"
    );
}
