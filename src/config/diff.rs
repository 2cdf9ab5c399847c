//! What a reload changes (BRIEF §6): which pools start, stop, scale, roll, or
//! only take new tunables. Pure: the master applies the result as a separate
//! step (src/master/reload.rs).
//!
//! Every key of a pool has one reload effect, decided in [`pool_changes`] by
//! destructuring [`PoolConfig`] without `..`: a key added to the struct does not
//! compile until its effect is chosen here.

use super::{Config, PoolConfig};

/// What changing one pool key does on reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Workers must be replaced (a rolling upgrade to the new settings).
    Roll,
    /// The pool is scaled to the new count in place.
    Scale,
    /// New workers and timers use the new value; running workers are kept.
    Retune,
}

/// What a reload changes. Pool names in each list are in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Pools only in the new config: start them.
    pub added: Vec<String>,
    /// Pools only in the old config: drain them.
    pub removed: Vec<String>,
    /// (pool, old count, new count).
    pub scaled: Vec<(String, usize, usize)>,
    /// Pools whose workers must be replaced, with the keys that changed.
    pub rolled: Vec<(String, Vec<&'static str>)>,
    /// Pools not rolled whose new tunables apply in place (retries, delays,
    /// stop signal/timeout, max_unacked, max_surge, upgrade, watch).
    pub retuned: Vec<String>,
    /// Pools identical in both.
    pub unchanged: Vec<String>,
    /// Changed global sections: "control", "log", "watch", "master", "metrics".
    pub global: Vec<&'static str>,
}

/// The keys that differ between two versions of one pool, with their effect.
pub fn pool_changes(old: &PoolConfig, new: &PoolConfig) -> Vec<(&'static str, Effect)> {
    use Effect::{Retune, Roll, Scale};
    let PoolConfig {
        name: _,
        command,
        count,
        binds,
        drop_env,
        env,
        cwd,
        ack,
        ack_timer,
        ack_timeout,
        retries,
        respawn_delay,
        stop_signal,
        stop_timeout,
        max_unacked,
        max_surge,
        upgrade,
        watch,
        command_socket_as_fd,
        kill_children_on_exit,
        socket_protocol,
        watchdog,
        canary,
        canary_hold,
        max_age,
        max_age_jitter,
        max_rss,
        max_rss_interval,
        heartbeat_timeout,
        identity,
        stop_group,
        output,
    } = old;
    let mut out = Vec::new();
    let mut key = |changed: bool, name: &'static str, effect: Effect| {
        if changed {
            out.push((name, effect));
        }
    };
    key(*command != new.command, "command", Roll);
    key(*count != new.count, "count", Scale);
    key(*binds != new.binds, "binds", Roll);
    key(*drop_env != new.drop_env, "drop_env", Roll);
    key(*env != new.env, "env", Roll);
    key(*cwd != new.cwd, "cwd", Roll);
    key(*ack != new.ack, "ack", Roll);
    key(*ack_timer != new.ack_timer, "ack_timer", Roll);
    key(*ack_timeout != new.ack_timeout, "ack_timeout", Roll);
    key(*retries != new.retries, "retries", Retune);
    key(*respawn_delay != new.respawn_delay, "respawn_delay", Retune);
    key(*stop_signal != new.stop_signal, "stop_signal", Retune);
    key(*stop_timeout != new.stop_timeout, "stop_timeout", Retune);
    key(*max_unacked != new.max_unacked, "max_unacked", Retune);
    key(*max_surge != new.max_surge, "max_surge", Retune);
    key(*upgrade != new.upgrade, "upgrade", Retune);
    key(*watch != new.watch, "watch", Retune);
    key(
        *command_socket_as_fd != new.command_socket_as_fd,
        "command_socket_as_fd",
        Roll,
    );
    key(
        *kill_children_on_exit != new.kill_children_on_exit,
        "kill_children_on_exit",
        Roll,
    );
    key(
        *socket_protocol != new.socket_protocol,
        "socket_protocol",
        Roll,
    );
    key(*watchdog != new.watchdog, "watchdog", Roll);
    key(*canary != new.canary, "canary", Retune);
    key(*canary_hold != new.canary_hold, "canary_hold", Retune);
    key(*max_age != new.max_age, "max_age", Retune);
    key(
        *max_age_jitter != new.max_age_jitter,
        "max_age_jitter",
        Retune,
    );
    key(*max_rss != new.max_rss, "max_rss", Retune);
    key(
        *max_rss_interval != new.max_rss_interval,
        "max_rss_interval",
        Retune,
    );
    key(
        *heartbeat_timeout != new.heartbeat_timeout,
        "heartbeat_timeout",
        Retune,
    );
    // A new identity needs a new process: each of its keys rolls.
    let super::identity::Identity {
        user,
        group,
        umask,
        nice,
        rlimits,
        oom_score_adj,
    } = identity;
    let id = &new.identity;
    key(*user != id.user, "user", Roll);
    key(*group != id.group, "group", Roll);
    key(*umask != id.umask, "umask", Roll);
    key(*nice != id.nice, "nice", Roll);
    key(*rlimits != id.rlimits, "rlimits", Roll);
    key(*oom_score_adj != id.oom_score_adj, "oom_score_adj", Roll);
    key(*stop_group != new.stop_group, "stop_group", Retune);
    // A worker's stdout/stderr are set at its exec: a new sink needs a new process.
    let super::output::Output {
        stdout,
        stderr,
        max_bytes,
        backups,
    } = output;
    let o = &new.output;
    key(*stdout != o.stdout, "stdout", Roll);
    key(*stderr != o.stderr, "stderr", Roll);
    key(*max_bytes != o.max_bytes, "output_max_bytes", Roll);
    key(*backups != o.backups, "output_backups", Roll);
    out
}

/// Compare two configs for a reload. Every pool present in both ends up in
/// `unchanged`, or in one or more of `scaled`, `rolled`, `retuned` (a pool can
/// be scaled and rolled, or scaled and retuned). The caller should swap in the new
/// [`PoolConfig`] for every kept pool that is not unchanged.
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let mut d = ConfigDiff::default();
    let Config {
        source: _,
        locations: _,
        flags: _,
        control,
        log,
        watch,
        master,
        metrics,
        pools,
    } = old;
    if *control != new.control {
        d.global.push("control");
    }
    if *log != new.log {
        d.global.push("log");
    }
    if *watch != new.watch {
        d.global.push("watch");
    }
    if *master != new.master {
        d.global.push("master");
    }
    if *metrics != new.metrics {
        d.global.push("metrics");
    }
    for name in pools.keys() {
        if !new.pools.contains_key(name) {
            d.removed.push(name.clone());
        }
    }
    for (name, n) in &new.pools {
        let Some(o) = pools.get(name) else {
            d.added.push(name.clone());
            continue;
        };
        let changes = pool_changes(o, n);
        if changes.is_empty() {
            d.unchanged.push(name.clone());
            continue;
        }
        let of = |e: Effect| {
            changes
                .iter()
                .filter(move |(_, x)| *x == e)
                .map(|(k, _)| *k)
        };
        if of(Effect::Scale).next().is_some() {
            d.scaled.push((name.clone(), o.count, n.count));
        }
        let roll: Vec<&'static str> = of(Effect::Roll).collect();
        if !roll.is_empty() {
            d.rolled.push((name.clone(), roll));
        } else if of(Effect::Retune).next().is_some() {
            d.retuned.push(name.clone());
        }
    }
    d
}

impl ConfigDiff {
    /// One phrase per kind of change, for the reload's reply and log line:
    /// `added api; rolling web (command changed); unchanged jobs`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.added.is_empty() {
            parts.push(format!("added {}", self.added.join(", ")));
        }
        if !self.removed.is_empty() {
            parts.push(format!("removed {}", self.removed.join(", ")));
        }
        for (n, keys) in &self.rolled {
            parts.push(format!("rolling {n} ({} changed)", keys.join(", ")));
        }
        for (n, a, b) in &self.scaled {
            parts.push(format!("scaled {n} {a} -> {b}"));
        }
        if !self.retuned.is_empty() {
            parts.push(format!("retuned {}", self.retuned.join(", ")));
        }
        if !self.unchanged.is_empty() {
            parts.push(format!("unchanged {}", self.unchanged.join(", ")));
        }
        if parts.is_empty() {
            "nothing changed".into()
        } else {
            parts.join("; ")
        }
    }

    /// Pools that need sockets for new workers: added and rolled ones.
    pub fn rebinding(&self) -> Vec<String> {
        self.added
            .iter()
            .chain(self.rolled.iter().map(|(n, _)| n))
            .cloned()
            .collect()
    }
}
