//! Every key of the configuration file, declared once: its section, type,
//! default, allowed values, meaning, and what a reload does when it changes.
//!
//! The TOML walk takes its lists of known keys from here (an unknown key's
//! error lists them); `--help`, the einhyrningsins.toml(5) page,
//! docs/configuration.md and `check` are generated from it, and tests hold the
//! parser, the reload diff and the documents to it, so none of them can drift.

use std::fmt::Write as _;

/// Where a key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Control,
    Log,
    Watch,
    MasterProcess,
    /// `[metrics]`: the Prometheus listener (src/metrics/).
    Metrics,
    /// `[pools.NAME]`
    Pool,
}

impl Section {
    pub const ALL: [Section; 6] = [
        Section::Control,
        Section::Log,
        Section::Watch,
        Section::MasterProcess,
        Section::Metrics,
        Section::Pool,
    ];

    /// The table header as written in a file.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn header(self) -> &'static str {
        match self {
            Section::Control => "[control]",
            Section::Log => "[log]",
            Section::Watch => "[watch]",
            Section::MasterProcess => "[master]",
            Section::Metrics => "[metrics]",
            Section::Pool => "[pools.NAME]",
        }
    }

    /// The top-level key of the section.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn table(self) -> &'static str {
        match self {
            Section::Control => "control",
            Section::Log => "log",
            Section::Watch => "watch",
            Section::MasterProcess => "master",
            Section::Metrics => "metrics",
            Section::Pool => "pools",
        }
    }
}

/// What a reload does when a key changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The pool's workers are replaced by a rolling upgrade.
    Roll,
    /// The pool is scaled in place.
    Scale,
    /// New workers and timers use the new value; running workers are kept.
    Retune,
    /// Applied to the running master at once.
    Apply,
    /// Kept as running: it takes a restart (or re-exec) of the master.
    Restart,
}

impl Reload {
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn describe(self) -> &'static str {
        match self {
            Reload::Roll => "rolls the pool",
            Reload::Scale => "scales the pool in place",
            Reload::Retune => "retuned in place (new workers and timers use it)",
            Reload::Apply => "applied at once",
            Reload::Restart => "needs a restart of the master (kept as running)",
        }
    }
}

/// One key of the file. (Outside the parser's key lists, the descriptive
/// fields are read by the generators of the documents, which run as tests.)
#[derive(Debug)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct Key {
    pub section: Section,
    pub name: &'static str,
    /// Type and allowed values, as an operator reads them.
    pub kind: &'static str,
    /// The default, as it would be written (`-` when there is none).
    pub default: &'static str,
    pub help: &'static str,
    pub reload: Reload,
}

const fn key(
    section: Section,
    name: &'static str,
    kind: &'static str,
    default: &'static str,
    reload: Reload,
    help: &'static str,
) -> Key {
    Key {
        section,
        name,
        kind,
        default,
        help,
        reload,
    }
}

use Reload::{Apply, Restart, Retune, Roll, Scale};
use Section::{Control, Log, MasterProcess, Metrics, Pool, Watch};

/// The durations' syntax, said once.
pub const DURATION: &str =
    "duration: \"500ms\", \"2s\", \"1m\", \"1h30m\" or a number of seconds; at most 7 days";

pub const KEYS: &[Key] = &[
    key(Control, "socket", "path", "/tmp/einhorn.sock", Restart,
        "Path of the control socket (einhyrningsinsctl, einhornsh, workers' acks)."),
    key(Control, "mode", "octal file mode, as a string (\"0660\") or 0o660", "\"0600\"", Restart,
        "File mode the control socket is created with (and the workers' notify socket)."),
    key(Control, "allow_uids", "array of uids", "[]", Restart,
        "Uids allowed to connect besides the master's own and root (checked with SO_PEERCRED)."),
    key(Log, "level", "\"error\" | \"warn\" | \"info\" | \"debug\" | \"trace\" | \"off\"", "\"info\"", Apply,
        "How much the master logs (on stderr)."),
    key(Log, "syslog", "boolean", "false", Restart,
        "Also send WARN and above to syslog."),
    key(Log, "syslog_socket", "path", "/dev/log, then /var/run/syslog, /var/run/log", Restart,
        "The syslog daemon's socket, where containers mount it elsewhere."),
    key(Log, "file", "path", "none (stderr)", Restart,
        "The master's log (and worker lines of `stdout`/`stderr = \"log\"`) goes to this file instead of stderr, rotated at max_bytes; reopened by `reopen_logs` and SIGUSR1 (docs/logging.md)."),
    key(Log, "max_bytes", "size: \"50MiB\", \"1G\", or bytes; 0: never rotate", "\"50MiB\"", Restart,
        "With `file`: rotate it before a line would take it past this size."),
    key(Log, "backups", "integer, 0 to 1000", "10", Restart,
        "With `file`: rotated files kept (file.1 newest); 0: the file is truncated instead."),
    key(Watch, "enabled", "boolean", "true", Apply,
        "Watch each pool's executable and `watch` paths and the config file; a change rolls the pool or reloads the file."),
    key(Watch, "debounce", DURATION, "\"200ms\"", Apply,
        "Quiet time after the last change before acting (a burst of events makes one roll)."),
    key(Metrics, "listen", "\"HOST:PORT\" (TCP) or a path (unix socket; contains a `/`)", "- (off)", Restart,
        "Serve Prometheus metrics at GET /metrics here (docs/observability.md); off when unset."),
    key(MasterProcess, "pidfile", "path", "-", Restart,
        "Write the master's pid here (no symlinks followed; removed on exit)."),
    key(MasterProcess, "lockfile", "path", "-", Restart,
        "Hold an exclusive lock on this file while running: a second master is refused."),
    key(MasterProcess, "command_name", "string", "-", Restart,
        "Name of the master in the process list and syslog."),
    key(MasterProcess, "subreaper", "boolean", "false", Restart,
        "Become a child subreaper: orphaned descendants of workers are reaped by the master (as PID 1 in a container)."),
    key(MasterProcess, "reexec_as", "string: a program and its arguments", "the path the master was started from", Apply,
        "What `reexec` runs in place of the master (einhorn's --reexec-as); the master's own arguments follow."),
    key(MasterProcess, "upgrade_check", "boolean", "true", Apply,
        "Before `reexec`, run the new binary in its check mode (it must load the config and read the state); false: exec at once (einhorn's --no-upgrade-check)."),
    key(MasterProcess, "upgrade_check_timeout", "duration, more than 0, at most 7 days", "\"10s\"", Apply,
        "How long the new binary's check may take before the re-exec is refused."),
    key(Pool, "command", "array of strings (argv, no shell)", "- (required)", Roll,
        "The worker program and its arguments; command[0] is looked up in PATH. In arguments, {fd:N} and {fd:NAME} become the fd number the worker gets for binds[N] or the bind with name=NAME; {{fd: is a literal {fd:."),
    key(Pool, "count", "integer, 0 to 100000", "1", Scale,
        "How many workers to keep running."),
    key(Pool, "binds", "array of bind specs: \"HOST:PORT[,OPT...]\", \"[IPV6]:PORT\", \"unix:PATH\"; OPT: r, n, b, nodelay, reuseport, backlog=N, mode=OCTAL, name=NAME", "[]", Roll,
        "Sockets the master binds and passes to every worker, in order (EINHORN_FD_0, ...). Listeners are non-blocking (O_NONBLOCK, shared by every worker, as einhorn's) unless `b`/`blocking`; `nodelay` sets TCP_NODELAY, inherited by accepted connections."),
    key(Pool, "drop_env", "array of variable names", "[]", Roll,
        "Variables of the master's environment not passed to workers."),
    key(Pool, "env", "table of strings", "{}", Roll,
        "Variables added to the workers' environment (the child API's own cannot be set)."),
    key(Pool, "cwd", "path", "the master's working directory", Roll,
        "Working directory of the workers."),
    key(Pool, "ack", "\"timer\" | \"manual\" | \"notify\"", "\"timer\"", Roll,
        "How a worker proves it is ready: alive for ack_timer; a worker:ack message; READY=1 on NOTIFY_SOCKET."),
    key(Pool, "ack_timer", DURATION, "\"1s\"", Roll,
        "Timer ack: a worker alive this long counts as ready."),
    key(Pool, "ack_timeout", DURATION, "\"30s\"", Roll,
        "Manual and notify ack: a worker that has not acked by then is killed and replaced."),
    key(Pool, "retries", "integer, 1 and up", "none (retry forever; upgrades: 3)", Retune,
        "Give up respawning after this many consecutive failed attempts; an upgrade is abandoned after this many failures."),
    key(Pool, "respawn_delay", DURATION, "\"1s\"", Retune,
        "First delay before refilling a slot whose worker died before it acked; grows x1.5 per consecutive such death (in the pool with no ack in between, or of that slot, whichever streak is longer), capped at 30 s. Each slot waits on its own timer; a worker that had acked is replaced at once."),
    key(Pool, "stop_signal", "signal name or number (\"USR2\", \"SIGTERM\", 15)", "\"USR2\"", Retune,
        "Signal that asks a worker to stop gracefully."),
    key(Pool, "stop_timeout", DURATION, "\"30s\"", Retune,
        "A stopping worker still alive after this long gets SIGKILL."),
    key(Pool, "max_unacked", "integer, 1 and up", "the number of CPUs", Retune,
        "During an upgrade, at most this many new workers not yet acked at a time."),
    key(Pool, "max_surge", "integer, 1 and up", "count", Retune,
        "During a smooth upgrade, at most this many workers beyond count."),
    key(Pool, "upgrade", "\"smooth\" | \"fleet\"", "\"smooth\"", Retune,
        "smooth: each new ack retires one old worker; fleet: all new first, then all old retired."),
    key(Pool, "watch", "array of paths", "[]", Retune,
        "Files whose change rolls this pool, besides its executable and every argument of `command` that names an existing file (the script of `python3 app.py`); `check` lists what is watched."),
    key(Pool, "command_socket_as_fd", "boolean", "false", Roll,
        "Give each worker an fd already connected to the control socket (EINHORN_SOCK_FD; einhorn -g)."),
    key(Pool, "kill_children_on_exit", "boolean", "false", Roll,
        "Workers get their stop signal if the master dies (PR_SET_PDEATHSIG; einhorn -k)."),
    key(Pool, "socket_protocol", "array of \"einhorn\" and/or \"systemd\"", "[\"einhorn\"]", Roll,
        "How workers are told about their sockets: EINHORN_FD_*; or fds 3.. with LISTEN_FDS (systemd)."),
    key(Pool, "watchdog", DURATION, "none", Roll,
        "Notify ack: an acked worker must send WATCHDOG=1 at least this often or it is replaced."),
    key(Pool, "canary", "integer, 1 to count - 1", "none (full upgrades)", Retune,
        "Upgrades (command, signal, watcher, reload) start as a canary: this many new workers replace as many old ones, then the pool holds with both versions until `promote` or `rollback`."),
    key(Pool, "canary_hold", DURATION, "none (hold until promote or rollback)", Retune,
        "A canary that stayed healthy (none died, missed its ack, heartbeat or watchdog) this long is promoted; one that dies rolls back at once."),
    key(Pool, "max_age", DURATION, "none", Retune,
        "Replace a worker once it is this old, through the smooth engine: its successor acks first, then it drains."),
    key(Pool, "max_age_jitter", DURATION, "\"0s\"", Retune,
        "Up to this much is added to each worker's max_age, spread over the pool, so it does not recycle all at once."),
    key(Pool, "max_rss", "size: \"512MiB\", \"2G\", or bytes", "none", Retune,
        "Replace a worker whose resident memory exceeds this, through the smooth engine."),
    key(Pool, "max_rss_interval", DURATION, "\"10s\"", Retune,
        "How often workers' RSS is read from /proc, for pools that set max_rss only."),
    key(Pool, "heartbeat_timeout", DURATION, "none", Retune,
        "Einhorn-protocol workers: one that sends no worker:ping for this long (after it acked) is killed and replaced."),
    key(Pool, "user", "string: a user name, or a numeric uid", "the master's user", Roll,
        "Workers run as this user (the master must be root): uid, the user's groups, and HOME, USER, LOGNAME. The master binds the sockets first, so a port below 1024 is fine."),
    key(Pool, "group", "string: a group name, or a numeric gid", "the user's primary group", Roll,
        "Workers run with this group (and the user's supplementary groups)."),
    key(Pool, "umask", "octal: \"0027\" or 0o027", "the master's", Roll,
        "The workers' file mode creation mask."),
    key(Pool, "nice", "integer, -20 to 19", "the master's", Roll,
        "The workers' scheduling niceness (below the master's needs root)."),
    key(Pool, "rlimits", "table: as, core, cpu, data, fsize, memlock, nofile, nproc, stack = N, \"64MiB\", \"unlimited\" or \"SOFT:HARD\"", "the master's", Roll,
        "Resource limits of the workers (setrlimit); one value sets soft and hard. Above the master's hard limit needs root."),
    key(Pool, "oom_score_adj", "integer, -1000 to 1000", "the master's", Roll,
        "The workers' OOM-killer adjustment (below the master's needs root)."),
    key(Pool, "stop_group", "boolean", "false", Retune,
        "Stop signals go to the worker's whole process group, and what is left of the group when the worker exits is killed. The SIGKILL after stop_timeout always goes to the group."),
    key(Pool, "stdout", "\"inherit\" | \"log\" | \"null\" | a file path with {pool} and {index}", "\"inherit\"", Roll,
        "Where the workers' stdout goes: the master's stdout as is; each line into the master's log with pool, index and pid (lines cut at 16 KiB); /dev/null; or a file the master writes and rotates. \"log\" and files are captured through a pipe and kept for `logs` (docs/logging.md)."),
    key(Pool, "stderr", "as stdout", "\"inherit\"", Roll,
        "Where the workers' stderr goes (as stdout)."),
    key(Pool, "output_max_bytes", "size: \"50MiB\", \"1G\", or bytes; 0: never rotate", "\"50MiB\"", Roll,
        "A stdout/stderr file is rotated before a line would take it past this size."),
    key(Pool, "output_backups", "integer, 0 to 1000", "10", Roll,
        "Rotated stdout/stderr files kept (path.1 newest); 0: the file is truncated instead."),
];

/// The keys of one section, in declaration order.
pub fn keys_of(section: Section) -> impl Iterator<Item = &'static Key> {
    KEYS.iter().filter(move |k| k.section == section)
}

/// The names of one section's keys (for "unknown key" errors).
pub fn names_of(section: Section) -> Vec<&'static str> {
    keys_of(section).map(|k| k.name).collect()
}

/// The key list for `--help`: one line per section.
pub fn help_summary() -> String {
    let mut s = String::new();
    for section in Section::ALL {
        let names = names_of(section).join(", ");
        let _ = writeln!(s, "    {} {names}", section.header());
    }
    s
}

/// The reference as markdown (docs/configuration.md's generated part).
#[cfg(test)]
pub fn markdown() -> String {
    let mut s = String::new();
    for section in Section::ALL {
        let _ = writeln!(s, "### `{}`\n", section.header());
        let _ = writeln!(s, "| key | type | default | on reload | meaning |");
        let _ = writeln!(s, "| --- | --- | --- | --- | --- |");
        for k in keys_of(section) {
            let _ = writeln!(
                s,
                "| `{}` | {} | {} | {} | {} |",
                k.name,
                k.kind.replace('|', "\\|"),
                code_or_text(k.default),
                k.reload.describe(),
                k.help.replace('|', "\\|")
            );
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
fn code_or_text(d: &str) -> String {
    if d == "-" || d.contains(' ') && !d.starts_with('"') && !d.starts_with('[') {
        d.to_string()
    } else {
        format!("`{d}`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEGIN: &str = "<!-- BEGIN GENERATED from src/config/schema.rs: do not edit -->\n";
    const END: &str = "<!-- END GENERATED -->";

    fn doc_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md")
    }

    fn with_generated(doc: &str) -> Option<String> {
        let a = doc.find(BEGIN)? + BEGIN.len();
        let b = doc[a..].find(END)? + a;
        Some(format!("{}{}{}", &doc[..a], markdown(), &doc[b..]))
    }

    /// docs/configuration.md's reference is the schema, as generated.
    #[test]
    fn the_configuration_doc_is_the_schema() {
        let doc = std::fs::read_to_string(doc_path()).unwrap_or_default();
        let want = with_generated(&doc).unwrap_or_else(|| {
            panic!("docs/configuration.md lacks the generated block ({BEGIN:?} ... {END:?})")
        });
        assert!(
            doc == want,
            "docs/configuration.md is out of date with src/config/schema.rs: run \
             `cargo test --lib regenerate_configuration_doc -- --ignored`"
        );
        for k in KEYS {
            assert!(doc.contains(&format!("| `{}` |", k.name)), "{}", k.name);
        }
    }

    /// Rewrites the generated block of docs/configuration.md.
    #[test]
    #[ignore = "writes docs/configuration.md; run it after changing the schema"]
    fn regenerate_configuration_doc() {
        let doc = std::fs::read_to_string(doc_path()).unwrap_or_default();
        if let Some(new) = with_generated(&doc) {
            std::fs::write(doc_path(), new).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn names_are_unique_per_section_and_documented() {
        for section in Section::ALL {
            let names = names_of(section);
            for (i, n) in names.iter().enumerate() {
                assert!(!names[i + 1..].contains(n), "{n} twice in {section:?}");
            }
        }
        for k in KEYS {
            assert!(!k.help.is_empty() && !k.kind.is_empty() && !k.default.is_empty());
        }
    }

    #[test]
    fn pool_keys_reload_as_the_diff_decides() {
        use super::super::diff::Effect;
        // The diff's own sweep (config/tests.rs) mutates every key; here each
        // schema entry must agree with the effect the diff chooses.
        let base = super::super::PoolConfig::new("p", vec!["./a".into()]);
        let mut seen = 0;
        for k in keys_of(Section::Pool) {
            let effect = super::super::tests::change_one(&base, k.name)
                .unwrap_or_else(|| panic!("no sweep case for pools.{}", k.name));
            let want = match k.reload {
                Reload::Roll => Effect::Roll,
                Reload::Scale => Effect::Scale,
                Reload::Retune => Effect::Retune,
                other => panic!("pools.{} reloads as {other:?}", k.name),
            };
            assert_eq!(effect, want, "pools.{}", k.name);
            seen += 1;
        }
        assert!(seen > 20, "{seen}");
    }
}
