use super::*;

const FULL: &str = r#"
[control]
socket = "/run/app/einhorn.sock"
mode = "0660"
allow_uids = [1000, 1001]

[log]
level = "debug"
syslog = true
syslog_socket = "/run/log/syslog.sock"

[watch]
enabled = false
debounce = "500ms"

[master]
pidfile = "/run/app.pid"
lockfile = "app.lock"
command_name = "app"

[pools.web]
command = ["./bin/web", "--workers-from-env"]
count = 4
binds = ["127.0.0.1:8080,r", "[::1]:8080,r,n"]
drop_env = ["AWS_SECRET_ACCESS_KEY"]
env = { RUST_LOG = "info" }
cwd = "/srv/web"
ack = "manual"
ack_timer = "1.5s"
ack_timeout = 45
retries = 3
respawn_delay = 0.25
stop_signal = "SIGTERM"
stop_timeout = "1m"
max_unacked = 2
max_surge = 1
upgrade = "fleet"
watch = ["/srv/web/REVISION"]
command_socket_as_fd = true
kill_children_on_exit = true

[pools.jobs]
command = ["./bin/jobs"]
count = 0
"#;

fn errors_of(text: &str) -> Vec<ConfigError> {
    match Config::from_toml_str(text, Some(Path::new("app.toml"))) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(ConfigErrors(v)) => v,
    }
}

#[test]
fn full_file_maps_every_key() -> Result<(), ConfigErrors> {
    let c = Config::from_toml_str(FULL, Some(Path::new("app.toml")))?;
    assert_eq!(c.source.as_deref(), Some(Path::new("app.toml")));
    assert_eq!(c.control.socket, PathBuf::from("/run/app/einhorn.sock"));
    assert_eq!(c.control.mode, 0o660);
    assert_eq!(c.control.allow_uids, vec![1000, 1001]);
    assert_eq!(c.log.level, log::LevelFilter::Debug);
    assert!(c.log.syslog);
    assert_eq!(
        c.log.syslog_socket.as_deref(),
        Some(Path::new("/run/log/syslog.sock"))
    );
    assert!(!c.watch.enabled);
    assert_eq!(c.watch.debounce, Duration::from_millis(500));
    assert_eq!(c.master.pidfile, Some(PathBuf::from("/run/app.pid")));
    assert_eq!(c.master.lockfile, Some(PathBuf::from("app.lock")));
    assert_eq!(c.master.command_name.as_deref(), Some("app"));
    let w = &c.pools["web"];
    assert_eq!(w.name, "web");
    assert_eq!(w.command, vec!["./bin/web", "--workers-from-env"]);
    assert_eq!(w.count, 4);
    assert_eq!(w.binds.len(), 2);
    assert_eq!(w.binds[1].addr_text(), "[::1]:8080");
    assert!(w.binds[1].nonblock);
    assert_eq!(w.drop_env, vec!["AWS_SECRET_ACCESS_KEY"]);
    assert_eq!(w.env.get("RUST_LOG").map(String::as_str), Some("info"));
    assert_eq!(w.cwd, Some(PathBuf::from("/srv/web")));
    assert_eq!(w.ack, AckMode::Manual);
    assert_eq!(w.ack_timer, Duration::from_millis(1500));
    assert_eq!(w.ack_timeout, Duration::from_secs(45));
    assert_eq!(w.retries, Some(3));
    assert_eq!(w.respawn_delay, Duration::from_millis(250));
    assert_eq!(w.stop_signal, Signal::SIGTERM);
    assert_eq!(w.stop_timeout, Duration::from_secs(60));
    assert_eq!(w.max_unacked, 2);
    assert_eq!(w.max_surge, Some(1));
    assert_eq!(w.upgrade, UpgradeStrategy::Fleet);
    assert_eq!(w.watch, vec![PathBuf::from("/srv/web/REVISION")]);
    assert!(w.command_socket_as_fd && w.kill_children_on_exit);
    let j = &c.pools["jobs"];
    assert_eq!(j.count, 0);
    assert_eq!(j.ack, AckMode::Timer);
    assert_eq!(j.stop_signal, Signal::SIGUSR2);
    assert_eq!(j.max_surge, None);
    Ok(())
}

#[test]
fn minimal_file_gets_defaults() -> Result<(), ConfigErrors> {
    let c = Config::from_toml_str("[pools.a]\ncommand = [\"x\"]\n", None)?;
    let d = Config::default();
    assert_eq!(c.control, d.control);
    assert_eq!(c.log, d.log);
    assert_eq!(c.watch, d.watch);
    assert_eq!(c.pools["a"], PoolConfig::new("a", vec!["x".into()]));
    Ok(())
}

#[test]
fn type_error_has_file_line_column_key_and_found_value() {
    let text = "[pools.web]\ncommand = [\"x\"]\ncount = \"four\"\n";
    let e = errors_of(text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(
        e[0].to_string(),
        "app.toml:3:9: pools.web.count: expected a non-negative integer, found string \"four\""
    );
}

#[test]
fn every_problem_is_reported_not_only_the_first() {
    let text = r#"
[control]
sockett = "/tmp/x"

[pools.web]
command = ["x"]
count = -1
binds = ["127.0.0.1:8080", "8080", "127.0.0.1:8080"]
ack = "sometimes"
stop_signal = "USR9"
colour = "blue"
respawn_delay = "soon"

[pools.jobs]
count = 2
"#;
    let e = errors_of(text);
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    for k in [
        "control.sockett",
        "pools.web.count",
        "pools.web.binds[1]",
        "pools.web.ack",
        "pools.web.stop_signal",
        "pools.web.colour",
        "pools.web.respawn_delay",
        "pools.jobs.command",
    ] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    // Sorted by position, every one with a line.
    assert!(e.iter().all(|e| e.line.is_some()), "{e:?}");
    let lines: Vec<usize> = e.iter().filter_map(|e| e.line).collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{lines:?}");
    let unknown = e.iter().find(|e| e.key == "pools.web.colour");
    match unknown {
        Some(u) => {
            assert_eq!(u.line, Some(11));
            assert!(u.message.contains("`colour`") && u.message.contains("[pools.web]"));
        }
        None => panic!("no colour error"),
    }
    let bind = e.iter().find(|e| e.key == "pools.web.binds[1]");
    assert!(
        matches!(bind, Some(b) if b.message.contains("\"8080\"")),
        "{bind:?}"
    );
    // Missing command points at the pool header.
    let missing = e.iter().find(|e| e.key == "pools.jobs.command");
    assert!(
        matches!(missing, Some(m) if m.line == Some(14)),
        "{missing:?}"
    );
}

#[test]
fn duplicate_binds_are_refused_naming_both_places() {
    let text = r#"[pools.a]
command = ["a"]
binds = ["127.0.0.1:9000,r"]

[pools.b]
command = ["b"]
binds = ["unix:/tmp/s.sock", "127.0.0.1:9000"]
"#;
    let e = errors_of(text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].key, "pools.b.binds[1]");
    assert_eq!(e[0].line, Some(7));
    assert!(e[0].message.contains("127.0.0.1:9000"), "{}", e[0]);
    assert!(
        e[0].message.contains("pools.a.binds[0] (app.toml:3)"),
        "{}",
        e[0]
    );
    // Within one pool too; port 0 never clashes.
    let e = errors_of("[pools.a]\ncommand=[\"a\"]\nbinds=[\"/tmp/x\", \"unix:/tmp/x\"]\n");
    assert_eq!(e[0].key, "pools.a.binds[1]");
    let ok = Config::from_toml_str(
        "[pools.a]\ncommand=[\"a\"]\nbinds=[\"127.0.0.1:0\", \"127.0.0.1:0\"]\n",
        None,
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn command_must_be_argv() {
    let e = errors_of("[pools.a]\ncommand = \"./server --flag\"\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].message.contains("argv"), "{}", e[0]);
    let e = errors_of("[pools.a]\ncommand = []\n");
    assert_eq!(e[0].key, "pools.a.command");
    let e = errors_of("[pools.a]\ncommand = [1]\n");
    assert_eq!(e[0].key, "pools.a.command[0]");
}

#[test]
fn syntax_errors_have_line_and_column() {
    let e = errors_of("[pools.a]\ncommand = [\"a\"\ncount = 1\n");
    assert!(!e.is_empty());
    assert!(e[0].line.is_some() && e[0].column.is_some(), "{e:?}");
    assert!(e[0].to_string().starts_with("app.toml:"), "{}", e[0]);
    assert!(e[0].message.contains("syntax"), "{}", e[0]);
    // Duplicate keys are a TOML error too.
    let e = errors_of("[pools.a]\ncommand = [\"a\"]\ncount = 1\ncount = 2\n");
    assert_eq!(e[0].line, Some(4), "{e:?}");
}

#[test]
fn unknown_top_level_and_wrong_table_types() {
    let e = errors_of("pool = 1\ncontrol = 3\n[pools]\n\"bad name\" = {command=[\"x\"]}\n");
    let msgs: Vec<String> = e.iter().map(ToString::to_string).collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("app.toml:1:1: pool: unknown key `pool` at the top level")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("control: expected a table, found integer 3")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("invalid pool name \"bad name\"")),
        "{msgs:?}"
    );
}

#[test]
fn ranges_and_formats() {
    let e = errors_of("[pools.a]\ncommand=[\"a\"]\nmax_unacked = 0\nmax_surge = 0\n");
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, vec!["pools.a.max_unacked", "pools.a.max_surge"]);
    assert_eq!(e[0].line, Some(3));
    let e = errors_of("[control]\nmode = \"0999\"\n[log]\nlevel = \"loud\"\n");
    assert_eq!(e.len(), 2, "{e:?}");
    let c = Config::from_toml_str("[control]\nmode = 0o640\n", None);
    assert!(matches!(c, Ok(c) if c.control.mode == 0o640));
    let c = Config::from_toml_str("[control]\nmode = 600\n", None);
    assert!(matches!(c, Ok(c) if c.control.mode == 0o600));
    let e = errors_of("[pools.a]\ncommand=[\"a\"]\nack_timer = -1\nstop_timeout = true\n");
    assert_eq!(e.len(), 2, "{e:?}");
    let e = errors_of("[pools.a]\ncommand=[\"a\"]\nack = \"manual\"\nack_timeout = 0\n");
    assert_eq!(e[0].key, "pools.a.ack_timeout");
    // A typo must not fork millions of workers.
    let e = errors_of("[pools.a]\ncommand=[\"a\"]\ncount = 40000000\n");
    assert_eq!(
        (e[0].key.as_str(), e[0].line),
        ("pools.a.count", Some(3)),
        "{e:?}"
    );
    assert!(Config::from_toml_str("[pools.a]\ncommand=[\"a\"]\ncount = 100000\n", None).is_ok());
}

#[test]
fn socket_protocol_ack_notify_and_watchdog() -> Result<(), ConfigErrors> {
    let c = Config::from_toml_str(
        "[pools.a]\ncommand=[\"a\"]\nsocket_protocol = [\"systemd\", \"einhorn\"]\nack = \"notify\"\nwatchdog = \"2s\"\n[pools.b]\ncommand=[\"b\"]\nsocket_protocol = [\"systemd\"]\n",
        None,
    )?;
    let a = &c.pools["a"];
    assert_eq!(
        a.socket_protocol,
        SocketProtocol {
            einhorn: true,
            systemd: true
        }
    );
    assert_eq!(a.ack, AckMode::Notify);
    assert_eq!(a.watchdog, Some(Duration::from_secs(2)));
    assert!(!c.pools["b"].socket_protocol.einhorn && c.pools["b"].socket_protocol.systemd);
    assert_eq!(c.pools["b"].watchdog, None, "no watchdog unless asked");
    let e = errors_of("[pools.a]\ncommand=[\"a\"]\nsocket_protocol = []\n");
    assert_eq!(e[0].key, "pools.a.socket_protocol");
    let e = errors_of("[pools.a]\ncommand=[\"a\"]\nsocket_protocol = [\"inetd\"]\n");
    assert!(e[0].message.contains("inetd"), "{}", e[0].message);
    let e = errors_of("[pools.a]\ncommand=[\"a\"]\nwatchdog = \"1s\"\n");
    assert_eq!(e[0].key, "pools.a.watchdog");
    Ok(())
}

#[test]
fn value_parsers() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
    assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
    assert!(parse_duration("-1").is_err());
    assert!(parse_duration("soon").is_err());
    assert_eq!(parse_signal("USR2"), Ok(Signal::SIGUSR2));
    assert_eq!(parse_signal("SIGTERM"), Ok(Signal::SIGTERM));
    assert_eq!(parse_signal("quit"), Ok(Signal::SIGQUIT));
    assert_eq!(parse_signal("15"), Ok(Signal::SIGTERM));
    assert_eq!(parse_signal("-USR1"), Ok(Signal::SIGUSR1));
    assert_eq!(parse_signal("-9"), Ok(Signal::SIGKILL));
    assert!(parse_signal("--9").is_err() && parse_signal("-").is_err());
    assert!(parse_signal("USR9").is_err());
    assert!(parse_signal("999").is_err());
    assert_eq!(parse_mode("0600"), Ok(0o600));
    assert!(parse_mode("8").is_err());
    assert!(valid_pool_name("web-1.a_b") && !valid_pool_name("a b") && !valid_pool_name(""));
    let st = Config::from_toml_str("[pools.a]\ncommand=[\"a\"]\nstop_signal = 3\n", None);
    assert!(matches!(st, Ok(c) if c.pools["a"].stop_signal == Signal::SIGQUIT));
}

#[test]
fn locations_and_layout_independent_equality() -> Result<(), ConfigErrors> {
    let a = Config::from_toml_str(
        "[pools.web]\ncommand = [\"x\"]\nbinds = [\n  \"127.0.0.1:1\",\n  \"127.0.0.1:2\",\n]\n",
        Some(Path::new("app.toml")),
    )?;
    assert_eq!(a.locate("pools.web.binds[1]"), "app.toml:5");
    assert_eq!(a.locate("pools.web.cwd"), "app.toml:1");
    assert_eq!(a.locate("nowhere"), "nowhere");
    let b = Config::from_toml_str(
        "\n\n[pools.web]\nbinds = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\ncommand = [\"x\"]\n",
        Some(Path::new("app.toml")),
    )?;
    assert_eq!(a, b);
    assert_eq!(b.locate("pools.web.binds[1]"), "app.toml:4");
    Ok(())
}

#[test]
fn load_names_an_unreadable_path() {
    match Config::load(Path::new("/nonexistent/einhyrningsins.toml")) {
        Ok(_) => panic!("loaded a missing file"),
        Err(e) => {
            let s = e.to_string();
            assert!(
                s.starts_with("/nonexistent/einhyrningsins.toml: cannot read"),
                "{s}"
            );
        }
    }
}

#[test]
fn load_reads_a_real_file() -> Result<(), Box<dyn std::error::Error>> {
    let dir = crate::testutil::TempDir::new("cfg");
    let path = dir.join("app.toml");
    std::fs::write(&path, FULL)?;
    let c = Config::load(&path)?;
    assert_eq!(c.source.as_deref(), Some(path.as_path()));
    assert_eq!(c.pools.len(), 2);
    Ok(())
}

#[test]
fn summary_names_pools_and_socket() -> Result<(), ConfigErrors> {
    let c = Config::from_toml_str(FULL, None)?;
    let s = c.summary();
    for needle in [
        "/run/app/einhorn.sock",
        "pool web:",
        "./bin/web --workers-from-env",
        "count:    4",
        "127.0.0.1:8080,r",
        "manual",
        "fleet",
        "pool jobs:",
        "TERM",
    ] {
        assert!(s.contains(needle), "{needle:?} not in\n{s}");
    }
    Ok(())
}

#[test]
fn validate_catches_cli_built_configs() {
    let mut c = Config::default();
    let mut p = PoolConfig::new("main", vec![]);
    p.max_unacked = 0;
    c.pools.insert("main".into(), p);
    match c.validate() {
        Ok(()) => panic!("accepted"),
        Err(ConfigErrors(e)) => {
            assert_eq!(e.len(), 2, "{e:?}");
            assert!(e.iter().all(|e| e.file.is_none() && e.line.is_none()));
            assert_eq!(
                e[0].to_string().split(':').next(),
                Some("pools.main.command")
            );
        }
    }
}

fn two_pools() -> Result<Config, ConfigErrors> {
    Config::from_toml_str(
        r#"
[pools.web]
command = ["./web"]
count = 2
binds = ["127.0.0.1:8080"]
[pools.jobs]
command = ["./jobs"]
[pools.cron]
command = ["./cron"]
"#,
        None,
    )
}

#[test]
fn diff_identical_is_empty() -> Result<(), ConfigErrors> {
    let a = two_pools()?;
    let d = diff(&a, &a.clone());
    let nothing = ConfigDiff {
        unchanged: d.unchanged.clone(),
        ..ConfigDiff::default()
    };
    assert_eq!(d, nothing);
    assert_eq!(d.unchanged, vec!["cron", "jobs", "web"]);
    Ok(())
}

#[test]
fn diff_classifies_every_kind_of_change() -> Result<(), ConfigErrors> {
    let old = two_pools()?;
    let mut new = old.clone();
    new.pools.remove("cron");
    new.pools.insert(
        "mail".into(),
        PoolConfig::new("mail", vec!["./mail".into()]),
    );
    if let Some(w) = new.pools.get_mut("web") {
        w.count = 5;
        w.command.push("--v2".into());
        w.binds.clear();
    }
    if let Some(j) = new.pools.get_mut("jobs") {
        j.stop_timeout = Duration::from_secs(3);
        j.count = 3;
    }
    new.log.level = log::LevelFilter::Trace;
    new.control.socket = "/tmp/other.sock".into();
    let d = diff(&old, &new);
    assert_eq!(d.added, vec!["mail"]);
    assert_eq!(d.removed, vec!["cron"]);
    assert_eq!(
        d.scaled,
        vec![("jobs".to_string(), 1, 3), ("web".to_string(), 2, 5)]
    );
    assert_eq!(
        d.rolled,
        vec![("web".to_string(), vec!["command", "binds"])]
    );
    assert_eq!(d.retuned, vec!["jobs"]);
    assert!(d.unchanged.is_empty());
    assert_eq!(d.global, vec!["control", "log"]);
    Ok(())
}

#[test]
fn diff_scale_only_and_rolled_keys() -> Result<(), ConfigErrors> {
    let old = two_pools()?;
    let mut new = old.clone();
    if let Some(w) = new.pools.get_mut("web") {
        w.count = 0;
    }
    if let Some(j) = new.pools.get_mut("jobs") {
        j.env.insert("A".into(), "1".into());
        j.cwd = Some("/srv".into());
        j.ack = AckMode::Manual;
        j.max_surge = Some(2);
    }
    let d = diff(&old, &new);
    assert_eq!(d.scaled, vec![("web".to_string(), 2, 0)]);
    assert_eq!(
        d.rolled,
        vec![("jobs".to_string(), vec!["env", "cwd", "ack"])]
    );
    // A rolled pool takes its new tunables with the roll.
    assert!(d.retuned.is_empty());
    assert_eq!(d.unchanged, vec!["cron"]);
    assert!(d.global.is_empty());
    Ok(())
}

/// Change one pool key of `base` to another valid value; the effect the
/// reload diff decides for it (`None`: no such key in this sweep).
pub(super) fn change_one(base: &PoolConfig, key: &str) -> Option<super::diff::Effect> {
    use super::diff::pool_changes;
    let d = std::time::Duration::from_millis(1234);
    let mut n = base.clone();
    match key {
        "command" => n.command = vec!["./b".into()],
        "count" => n.count = 7,
        "binds" => n.binds = vec![BindSpec::parse("127.0.0.1:1").unwrap_or_else(|e| panic!("{e}"))],
        "drop_env" => n.drop_env = vec!["X".into()],
        "env" => {
            n.env.insert("A".into(), "b".into());
        }
        "cwd" => n.cwd = Some("/".into()),
        "ack" => n.ack = AckMode::Manual,
        "ack_timer" => n.ack_timer = d,
        "ack_timeout" => n.ack_timeout = d,
        "retries" => n.retries = Some(2),
        "respawn_delay" => n.respawn_delay = d,
        "stop_signal" => n.stop_signal = nix::sys::signal::Signal::SIGTERM,
        "stop_timeout" => n.stop_timeout = d,
        "max_unacked" => n.max_unacked = 99,
        "max_surge" => n.max_surge = Some(3),
        "upgrade" => n.upgrade = UpgradeStrategy::Fleet,
        "watch" => n.watch = vec!["/x".into()],
        "command_socket_as_fd" => n.command_socket_as_fd = true,
        "kill_children_on_exit" => n.kill_children_on_exit = true,
        "socket_protocol" => n.socket_protocol.systemd = true,
        "watchdog" => n.watchdog = Some(d),
        "canary" => n.canary = Some(1),
        "canary_hold" => n.canary_hold = Some(d),
        "max_age" => n.max_age = Some(d),
        "max_age_jitter" => n.max_age_jitter = d,
        "max_rss" => n.max_rss = Some(1 << 30),
        "max_rss_interval" => n.max_rss_interval = d,
        "heartbeat_timeout" => n.heartbeat_timeout = Some(d),
        "user" => n.identity.user = Some(identity::Principal::Id(1)),
        "group" => n.identity.group = Some(identity::Principal::Id(1)),
        "umask" => n.identity.umask = Some(0o077),
        "nice" => n.identity.nice = Some(5),
        "rlimits" => {
            n.identity.rlimits.insert(
                identity::Resource::Nofile,
                identity::Limit {
                    soft: Some(1),
                    hard: Some(1),
                },
            );
        }
        "oom_score_adj" => n.identity.oom_score_adj = Some(100),
        "stop_group" => n.stop_group = true,
        "stdout" => n.output.stdout = output::Sink::Log,
        "stderr" => n.output.stderr = output::Sink::Null,
        "output_max_bytes" => n.output.max_bytes = 1,
        "output_backups" => n.output.backups = 1,
        _ => return None,
    }
    match pool_changes(base, &n).as_slice() {
        [(k, e)] if *k == key => Some(*e),
        other => panic!("changing {key} changed {other:?}"),
    }
}

#[test]
fn every_pool_key_has_a_reload_effect() {
    use super::diff::{pool_changes, Effect};
    let base = PoolConfig::new("p", vec!["./a".into()]);
    for (key, effect) in [
        ("command", Effect::Roll),
        ("count", Effect::Scale),
        ("binds", Effect::Roll),
        ("drop_env", Effect::Roll),
        ("env", Effect::Roll),
        ("cwd", Effect::Roll),
        ("ack", Effect::Roll),
        ("ack_timer", Effect::Roll),
        ("ack_timeout", Effect::Roll),
        ("retries", Effect::Retune),
        ("respawn_delay", Effect::Retune),
        ("stop_signal", Effect::Retune),
        ("stop_timeout", Effect::Retune),
        ("max_unacked", Effect::Retune),
        ("max_surge", Effect::Retune),
        ("upgrade", Effect::Retune),
        ("watch", Effect::Retune),
        ("command_socket_as_fd", Effect::Roll),
        ("kill_children_on_exit", Effect::Roll),
        ("socket_protocol", Effect::Roll),
        ("watchdog", Effect::Roll),
        ("canary", Effect::Retune),
        ("canary_hold", Effect::Retune),
        ("max_age", Effect::Retune),
        ("max_age_jitter", Effect::Retune),
        ("max_rss", Effect::Retune),
        ("max_rss_interval", Effect::Retune),
        ("heartbeat_timeout", Effect::Retune),
        ("user", Effect::Roll),
        ("group", Effect::Roll),
        ("umask", Effect::Roll),
        ("nice", Effect::Roll),
        ("rlimits", Effect::Roll),
        ("oom_score_adj", Effect::Roll),
        ("stop_group", Effect::Retune),
        ("stdout", Effect::Roll),
        ("stderr", Effect::Roll),
        ("output_max_bytes", Effect::Roll),
        ("output_backups", Effect::Roll),
    ] {
        assert_eq!(change_one(&base, key), Some(effect), "{key}");
    }
    assert!(pool_changes(&base, &base.clone()).is_empty());
}

/// Every key of the schema is understood by the parser: a file setting it
/// (to a valid value) has no "unknown key" error.
#[test]
fn the_parser_knows_every_key_of_the_schema() {
    use super::schema::{Section, KEYS};
    let sample = |section: Section, name: &str| -> &'static str {
        match (section, name) {
            (Section::Control, "socket") => "\"/tmp/x.sock\"",
            (Section::Control, "mode") => "\"0600\"",
            (Section::Control, "allow_uids") => "[1000]",
            (Section::Log, "level") => "\"debug\"",
            (Section::Log, "syslog_socket") => "\"/dev/log\"",
            (Section::Watch, "debounce") => "\"1s\"",
            (Section::MasterProcess, "command_name") => "\"app\"",
            (Section::MasterProcess, "pidfile" | "lockfile") => "\"/tmp/x\"",
            (_, "syslog" | "enabled" | "subreaper" | "upgrade_check") => "true",
            (Section::MasterProcess, "upgrade_check_timeout") => "\"30s\"",
            (Section::MasterProcess, "reexec_as") => "\"/usr/local/bin/einhyrningsins\"",
            (Section::Metrics, "listen") => "\"127.0.0.1:9464\"",
            (Section::Pool, "command") => "[\"./w\"]",
            (Section::Pool, "count" | "retries" | "max_unacked" | "max_surge" | "canary") => "2",
            (Section::Pool, "max_rss") => "\"512MiB\"",
            (Section::Pool, "binds") => "[\"127.0.0.1:0\"]",
            (Section::Pool, "drop_env") => "[\"X\"]",
            (Section::Pool, "env") => "{ A = \"b\" }",
            (Section::Pool, "cwd") => "\"/\"",
            (Section::Pool, "ack") => "\"notify\"",
            (Section::Pool, "stop_signal") => "\"TERM\"",
            (Section::Pool, "upgrade") => "\"fleet\"",
            (Section::Pool, "watch") => "[\"/x\"]",
            (Section::Pool, "command_socket_as_fd" | "kill_children_on_exit" | "stop_group") => {
                "true"
            }
            (Section::Pool, "user" | "group") => "\"nobody\"",
            (Section::Pool, "umask") => "\"0027\"",
            (Section::Pool, "nice" | "oom_score_adj") => "5",
            (Section::Pool, "rlimits") => "{ nofile = 1024, core = \"unlimited\" }",
            (Section::Pool, "socket_protocol") => "[\"systemd\"]",
            (Section::Pool, "stdout") => "\"log\"",
            (Section::Pool, "stderr") => "\"/tmp/{pool}-{index}.err\"",
            (_, "max_bytes" | "output_max_bytes") => "\"1MiB\"",
            (_, "backups" | "output_backups") => "3",
            (Section::Log, "file") => "\"/tmp/master.log\"",
            _ => "\"2s\"",
        }
    };
    for k in KEYS {
        let text = match k.section {
            Section::Pool => {
                // A notify pool, so that `watchdog` is valid too.
                let ack = if k.name == "heartbeat_timeout" {
                    "\"manual\""
                } else {
                    "\"notify\""
                };
                let mut lines = vec![
                    ("command", "[\"./w\"]".to_string()),
                    ("ack", ack.to_string()),
                    ("count", "3".to_string()),
                ];
                // Keys that only make sense with another one.
                match k.name {
                    "canary_hold" => lines.push(("canary", "1".to_string())),
                    "max_age_jitter" => lines.push(("max_age", "\"1h\"".to_string())),
                    _ => {}
                }
                match lines.iter_mut().find(|(n, _)| *n == k.name) {
                    Some(l) => l.1 = sample(k.section, k.name).to_string(),
                    None => lines.push((k.name, sample(k.section, k.name).to_string())),
                }
                let body: String = lines.iter().map(|(n, v)| format!("{n} = {v}\n")).collect();
                format!("[pools.web]\n{body}")
            }
            s => format!(
                "[{}]\n{} = {}\n[pools.web]\ncommand = [\"./w\"]\n",
                s.table(),
                k.name,
                sample(k.section, k.name)
            ),
        };
        if let Err(e) = Config::from_toml_str(&text, None) {
            panic!("{}.{}: {e}\n{text}", k.section.table(), k.name);
        }
    }
}

/// Durations are bounded where they are written: a value `check` accepts can
/// never overflow a deadline in the running master.
#[test]
fn absurd_durations_are_refused_with_key_and_line() {
    for key in [
        "ack_timeout",
        "ack_timer",
        "stop_timeout",
        "respawn_delay",
        "watchdog",
    ] {
        for value in ["\"1e19\"", "1e19", "\"8d\"", "604801", "\"1000000h\""] {
            let ack = if key == "watchdog" {
                "ack = \"notify\"\n"
            } else {
                ""
            };
            let text = format!("[pools.web]\ncommand = [\"./w\"]\n{ack}{key} = {value}\n");
            let errs = errors_of(&text);
            assert!(
                errs.iter().any(|e| e.key == format!("pools.web.{key}")
                    && e.line.is_some()
                    && e.message.contains("7 days")),
                "{key} = {value}: {errs:?}"
            );
        }
    }
    let errs = errors_of("[watch]\ndebounce = \"1e19\"\n[pools.web]\ncommand = [\"./w\"]\n");
    assert!(errs.iter().any(|e| e.key == "watch.debounce"), "{errs:?}");
    // The maximum itself is fine.
    let ok = Config::from_toml_str(
        "[pools.web]\ncommand = [\"./w\"]\nstop_timeout = \"7d\"\n",
        None,
    );
    assert!(ok.is_ok(), "{ok:?}");
}

/// The child API is the master's: `env` cannot point a worker at another fd,
/// control socket or master.
#[test]
fn env_cannot_override_the_child_api() {
    for var in [
        "EINHORN_FD_0",
        "EINHORN_FD_COUNT",
        "EINHORN_FDS",
        "EINHORN_SOCK_PATH",
        "EINHORN_SOCK_FD",
        "EINHORN_MASTER_PID",
        "EINHORN_CHILD_INDEX",
        "LISTEN_FDS",
        "LISTEN_PID",
    ] {
        let errs = errors_of(&format!(
            "[pools.web]\ncommand = [\"./w\"]\nenv = {{ {var} = \"7\" }}\n"
        ));
        assert!(
            errs.iter()
                .any(|e| e.key == format!("pools.web.env.{var}") && e.line == Some(3)),
            "{var}: {errs:?}"
        );
    }
    let errs = errors_of(
        "[pools.web]\ncommand = [\"./w\"]\nack = \"notify\"\nenv = { NOTIFY_SOCKET = \"/x\" }\n",
    );
    assert!(errs.iter().any(|e| e.key == "pools.web.env.NOTIFY_SOCKET"));
    // Names that only look alike are the operator's.
    let ok = Config::from_toml_str(
        "[pools.web]\ncommand = [\"./w\"]\nenv = { EINHORN_FD_NAME = \"x\", NOTIFY_SOCKET = \"/x\" }\n",
        None,
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn sizes_parse_in_powers_of_1024() {
    assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
    assert_eq!(parse_bytes("2G"), Ok(2 << 30));
    assert_eq!(parse_bytes("64k"), Ok(64 << 10));
    assert_eq!(parse_bytes("1000"), Ok(1000));
    assert_eq!(parse_bytes("1.5M"), Ok(3 << 19));
    for bad in ["", "0", "-1", "5X", "MiB", "1e30"] {
        assert!(parse_bytes(bad).is_err(), "{bad}");
    }
    let errs = errors_of("[pools.web]\ncommand = [\"./w\"]\nmax_rss = \"lots\"\n");
    assert!(
        errs.iter()
            .any(|e| e.key == "pools.web.max_rss" && e.line == Some(3)),
        "{errs:?}"
    );
    let errs = errors_of("[pools.web]\ncommand = [\"./w\"]\ncount = 2\ncanary = 2\n");
    assert!(errs.iter().any(|e| e.key == "pools.web.canary"), "{errs:?}");
}

#[test]
fn fd_placeholders_are_checked_with_key_and_line_and_shown_resolved() -> Result<(), ConfigErrors> {
    let e = errors_of(
        "[pools.web]\nbinds = [\"127.0.0.1:0,name=http\"]\ncommand = [\n  \"gunicorn\",\n  \"--bind\",\n  \"fd://{fd:1}\",\n  \"{fd:api}\",\n]\n",
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!(
        (e[0].key.as_str(), e[0].line),
        ("pools.web.command[2]", Some(6))
    );
    assert!(e[0].to_string().contains("app.toml:6"), "{}", e[0]);
    assert!(e[0].message.contains("{fd:1}"), "{}", e[0]);
    assert_eq!(
        (e[1].key.as_str(), e[1].line),
        ("pools.web.command[3]", Some(7))
    );
    assert!(e[1].message.contains("known: name=http"), "{}", e[1]);

    let c = Config::from_toml_str(
        "[pools.web]\nbinds = [\"127.0.0.1:0,name=http\", \"127.0.0.1:0,b\"]\n\
         command = [\"gunicorn\", \"--bind\", \"fd://{fd:http}\", \"{{fd:lit}\"]\n\
         [pools.sd]\nbinds = [\"127.0.0.1:0\", \"127.0.0.1:0,nodelay\"]\nsocket_protocol = [\"systemd\"]\n\
         command = [\"uvicorn\", \"--fd\", \"{fd:1}\"]\n",
        None,
    )?;
    let s = c.summary();
    for needle in [
        "command:  gunicorn --bind fd://{fd:http} {{fd:lit}",
        "argv:     gunicorn --bind fd://<EINHORN_FD_0> {fd:lit}",
        "127.0.0.1:0,name=http (non-blocking)",
        "127.0.0.1:0,b (blocking)",
        "argv:     uvicorn --fd 4",
        "127.0.0.1:0,nodelay (non-blocking, TCP_NODELAY)",
    ] {
        assert!(s.contains(needle), "{needle:?} not in\n{s}");
    }
    Ok(())
}

#[test]
fn identity_keys_parse_and_bad_values_are_refused_with_key_and_line() -> Result<(), ConfigErrors> {
    let c = Config::from_toml_str(
        r#"
[pools.web]
command = ["./w"]
user = "www-data"
group = 33
umask = 0o027
nice = 5
oom_score_adj = -100
stop_group = true
rlimits = { nofile = 65536, core = "unlimited", memlock = "64MiB", nproc = "100:200" }
"#,
        Some(Path::new("app.toml")),
    )?;
    let p = &c.pools["web"];
    assert!(p.stop_group);
    let id = &p.identity;
    assert_eq!(id.user, Some(identity::Principal::Name("www-data".into())));
    assert_eq!(id.group, Some(identity::Principal::Id(33)));
    assert_eq!(id.umask, Some(0o027));
    assert_eq!((id.nice, id.oom_score_adj), (Some(5), Some(-100)));
    assert_eq!(id.rlimits.len(), 4);
    assert_eq!(
        id.rlimits[&identity::Resource::Nproc],
        identity::Limit {
            soft: Some(100),
            hard: Some(200)
        }
    );
    assert!(c
        .summary()
        .contains("runs as:  user www-data, group 33, umask 0027, nice 5"));
    for (line, key, wanted) in [
        ("umask = 22", "umask", "decimal"),
        ("umask = \"0800\"", "umask", "octal"),
        ("nice = 20", "nice", "out of range"),
        ("oom_score_adj = -1001", "oom_score_adj", "out of range"),
        ("user = \"a b\"", "user", "not a user"),
        ("user = -1", "user", "not a valid id"),
        ("rlimits = { files = 1 }", "rlimits.files", "unknown limit"),
        (
            "rlimits = { nofile = \"10:5\" }",
            "rlimits.nofile",
            "above the hard limit",
        ),
        (
            "rlimits = { nofile = \"1G\" }",
            "rlimits.nofile",
            "not a number",
        ),
        ("stop_group = 1", "stop_group", "true or false"),
    ] {
        let errs = errors_of(&format!("[pools.web]\ncommand = [\"./w\"]\n{line}\n"));
        assert!(
            errs.iter().any(|e| e.key == format!("pools.web.{key}")
                && e.line == Some(3)
                && e.message.contains(wanted)),
            "{line}: {errs:?}"
        );
    }
    Ok(())
}
