//! Semantic checks shared by both front ends (file and command line).

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;

/// Why `env` may not set `name` for this pool, if it may not: the child API's
/// variables are the master's to set (a worker told a wrong fd or master pid
/// would accept on the wrong socket or ack the wrong master).
fn reserved_env(name: &str, pool: &PoolConfig) -> Option<String> {
    const CHILD_API: &[&str] = &[
        "EINHORN_FD_COUNT",
        "EINHORN_FDS",
        "EINHORN_SOCK_PATH",
        "EINHORN_SOCK_FD",
        "EINHORN_MASTER_PID",
        "EINHORN_CHILD_INDEX",
    ];
    let api = CHILD_API.contains(&name)
        || name
            .strip_prefix("EINHORN_FD_")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if api {
        return Some(format!(
            "{name} is set by the master for every worker (the child API); it cannot be overridden"
        ));
    }
    if matches!(name, "LISTEN_PID" | "LISTEN_FDS" | "LISTEN_FDNAMES") {
        return Some(format!(
            "{name} is set by the master for workers with socket_protocol = [\"systemd\"] and \
             removed for the others; it cannot be set here"
        ));
    }
    if pool.ack == AckMode::Notify && matches!(name, "NOTIFY_SOCKET" | "WATCHDOG_USEC") {
        return Some(format!(
            "{name} is set by the master for ack = \"notify\" workers; it cannot be overridden"
        ));
    }
    None
}

impl Config {
    /// Semantic checks shared by both front ends. Errors carry file and line when
    /// the config came from a file.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs: Vec<(String, String)> = Vec::new();
        let mut err = |key: String, msg: String| errs.push((key, msg));

        if self.control.socket.as_os_str().is_empty() {
            err("control.socket".into(), "must not be empty".into());
        }
        if self.control.mode > 0o7777 {
            err(
                "control.mode".into(),
                format!(
                    "{:o} is not a file mode (at most 7777 octal)",
                    self.control.mode
                ),
            );
        }

        // Address text -> first key that bound it.
        let mut bound: BTreeMap<String, String> = BTreeMap::new();
        for (name, pool) in &self.pools {
            let p = format!("pools.{name}");
            if !valid_pool_name(name) {
                err(
                    p.clone(),
                    format!("invalid pool name {name:?}: use letters, digits, '_', '.', '-'"),
                );
            }
            if pool.name != *name {
                err(
                    p.clone(),
                    format!("pool is filed as {name:?} but named {:?}", pool.name),
                );
            }
            match pool.command.first() {
                None => err(
                    format!("{p}.command"),
                    "missing: every pool needs a program, e.g. command = [\"./server\", \"--flag\"]"
                        .into(),
                ),
                Some(c) if c.trim().is_empty() => {
                    err(format!("{p}.command[0]"), "program name is empty".into())
                }
                Some(_) => {}
            }
            for (i, a) in pool.command.iter().enumerate() {
                if a.contains('\0') {
                    err(format!("{p}.command[{i}]"), "contains a NUL byte".into());
                }
            }
            for (i, e) in placeholders::check(&pool.command, &pool.binds) {
                err(format!("{p}.command[{i}]"), e.to_string());
            }
            if pool.count > MAX_WORKERS {
                err(
                    format!("{p}.count"),
                    format!("{} is more than {MAX_WORKERS} workers", pool.count),
                );
            }
            if pool.max_unacked == 0 {
                err(
                    format!("{p}.max_unacked"),
                    "must be at least 1 (0 would never start a worker)".into(),
                );
            }
            if pool.max_surge == Some(0) {
                err(
                    format!("{p}.max_surge"),
                    "must be at least 1 (0 would never start a new worker during an upgrade)"
                        .into(),
                );
            }
            if pool.ack != AckMode::Timer && pool.ack_timeout.is_zero() {
                err(
                    format!("{p}.ack_timeout"),
                    "must be more than 0 in manual and notify ack modes".into(),
                );
            }
            if pool.watchdog.is_some() && pool.ack != AckMode::Notify {
                err(
                    format!("{p}.watchdog"),
                    "needs ack = \"notify\" (workers ping with WATCHDOG=1 on the notify socket)"
                        .into(),
                );
            }
            if pool.watchdog.is_some_and(|w| w.is_zero()) {
                err(format!("{p}.watchdog"), "must be more than 0".into());
            }
            if let Some(n) = pool.canary {
                if n == 0 || n >= pool.count.max(1) {
                    err(
                        format!("{p}.canary"),
                        format!(
                            "must be at least 1 and fewer than count ({}): a canary replaces only part of the pool",
                            pool.count
                        ),
                    );
                }
            }
            if pool.canary_hold.is_some() && pool.canary.is_none() {
                err(
                    format!("{p}.canary_hold"),
                    "needs `canary` (the number of new workers to hold with)".into(),
                );
            }
            for (key, d) in [
                ("canary_hold", pool.canary_hold),
                ("max_age", pool.max_age),
                ("heartbeat_timeout", pool.heartbeat_timeout),
                ("max_rss_interval", Some(pool.max_rss_interval)),
            ] {
                if d.is_some_and(|d| d.is_zero()) {
                    err(format!("{p}.{key}"), "must be more than 0".into());
                }
            }
            if pool.max_age_jitter > Duration::ZERO && pool.max_age.is_none() {
                err(format!("{p}.max_age_jitter"), "needs `max_age`".into());
            }
            if pool.heartbeat_timeout.is_some() && pool.ack == AckMode::Notify {
                err(
                    format!("{p}.heartbeat_timeout"),
                    "is for einhorn-protocol workers (worker:ping); notify workers use `watchdog`"
                        .into(),
                );
            }
            for (i, v) in pool.drop_env.iter().enumerate() {
                if v.is_empty() || v.contains('=') || v.contains('\0') {
                    err(
                        format!("{p}.drop_env[{i}]"),
                        format!("{v:?} is not an environment variable name"),
                    );
                }
            }
            for (k, v) in &pool.env {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    err(
                        format!("{p}.env"),
                        format!("{k:?} is not an environment variable name"),
                    );
                } else if let Some(why) = reserved_env(k, pool) {
                    err(format!("{p}.env.{k}"), why);
                } else if v.contains('\0') {
                    err(format!("{p}.env.{k}"), "value contains a NUL byte".into());
                }
            }
            for (i, b) in pool.binds.iter().enumerate() {
                let key = format!("{p}.binds[{i}]");
                // Port 0 asks the kernel for a fresh port each time: never a clash.
                if matches!(b.addr, BindAddr::Inet { port: 0, .. }) {
                    continue;
                }
                let addr = b.addr_text();
                match bound.get(&addr) {
                    Some(first) => err(
                        key,
                        format!(
                            "address {addr} is already bound by {} ({})",
                            first,
                            self.locate(first)
                        ),
                    ),
                    None => {
                        bound.insert(addr, key);
                    }
                }
            }
        }

        if errs.is_empty() {
            return Ok(());
        }
        Err(ConfigErrors(
            errs.into_iter()
                .map(|(key, message)| {
                    let pos = self.locations.find(&key);
                    ConfigError {
                        file: self.source.clone(),
                        line: pos.map(|p| p.0),
                        column: pos.map(|p| p.1),
                        key,
                        message,
                    }
                })
                .collect(),
        ))
    }
}
