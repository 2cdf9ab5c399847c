//! Reload: re-read the config file, validate it whole, bind what is new, then
//! apply the per-pool difference; and SIGHUP, which reloads and rolls the rest.
//!
//! Four steps, of which only the first three may fail, and nothing has changed
//! when they do:
//! 1. [`Master::read_new_config`]: parse and validate the whole file;
//! 2. [`crate::config::diff`]: the plan (pure: which pools start, drain, scale,
//!    roll or retune);
//! 3. [`Master::bind_new_sockets`]: bind every address that no running socket
//!    has yet (all or nothing);
//! 4. [`Master::apply`]: hand each pool its sockets and its new settings.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::{Master, PoolEntry, ReloadRecord, RuntimeError, WatchOwner};
use crate::bind::{self, BoundSocket};
use crate::config::{BindAddr, BindSpec, Config, ConfigDiff};
use crate::pool::{Pool, Shutdown};

/// A reload that was applied.
pub(super) struct Reloaded {
    /// `Reloaded app.toml: rolling web (command changed); unchanged api`.
    pub summary: String,
    /// Pools the reload rolled (a HUP does not roll them a second time).
    pub rolled: Vec<String>,
    /// The plan, for the `reload_applied` event.
    pub diff: serde_json::Value,
}

/// Where one socket of a rebinding pool comes from.
enum Source {
    /// The same address, from the pool that holds it now.
    Take(String),
    New(BoundSocket),
}

impl Master {
    /// HUP: re-read the config (with `--config`), then roll every pool the reload
    /// did not already roll.
    pub(super) fn on_hup(&mut self) {
        let sd_reload = self.sd_begin_reload();
        let mut rolled = Vec::new();
        if self.config.source.is_some() {
            match self.reload("SIGHUP") {
                Ok(r) => {
                    log::info!("SIGHUP: {}", r.summary);
                    rolled = r.rolled;
                }
                Err(e) => log::error!("SIGHUP: config not reloaded, running one unchanged: {e}"),
            }
        }
        if !self.is_shutting_down() {
            log::info!("SIGHUP: smooth upgrade of every pool");
            let names: Vec<String> = self
                .pools
                .iter()
                .filter(|(n, e)| !e.removing && !rolled.contains(n))
                .map(|(n, _)| n.clone())
                .collect();
            for name in names {
                match self.start_upgrade(Some(&name), None, None) {
                    Ok(_) => self.note_change(&name, "upgrade (SIGHUP)".into()),
                    Err(e) => log::warn!("SIGHUP: pool {name}: {e}"),
                }
            }
        }
        self.sd_end_reload(sd_reload);
    }

    pub(super) fn note_change(&mut self, name: &str, what: String) {
        if let Some(e) = self.pools.get_mut(name) {
            e.last_change = Some((Instant::now(), what));
        }
    }

    /// Re-read the config file and apply the difference: new pools start,
    /// removed pools drain, count changes scale, changed pools roll, unchanged
    /// pools are not touched. Nothing is applied unless the whole new file is valid
    /// and every new address binds.
    pub(super) fn reload(&mut self, trigger: &str) -> Result<Reloaded, RuntimeError> {
        let sd_reload = self.sd_begin_reload();
        let result = self.reload_steps(trigger);
        self.sd_end_reload(sd_reload);
        self.last_reload = Some(ReloadRecord {
            at: Instant::now(),
            trigger: trigger.to_string(),
            result: match &result {
                Ok(r) => Ok(r.summary.clone()),
                Err(e) => Err(e.to_string()),
            },
        });
        let event = match &result {
            Ok(r) => serde_json::json!({
                "trigger": trigger, "ok": true, "message": r.summary, "diff": r.diff,
            }),
            Err(e) => {
                serde_json::json!({"trigger": trigger, "ok": false, "message": e.to_string()})
            }
        };
        self.master_event(
            if result.is_ok() {
                "reload_applied"
            } else {
                "reload_refused"
            },
            event,
        );
        match &result {
            Ok(r) => log::info!("{}", r.summary),
            Err(RuntimeError::Config(errors)) => {
                log::error!(
                    "reload ({trigger}) refused, configuration unchanged: {} problem(s):",
                    errors.0.len()
                );
                for e in &errors.0 {
                    log::error!("  {e}");
                }
            }
            Err(e) => log::error!("reload ({trigger}) refused, configuration unchanged: {e}"),
        }
        result
    }

    fn reload_steps(&mut self, trigger: &str) -> Result<Reloaded, RuntimeError> {
        let new = self.read_new_config()?;
        // Users, groups and limits as they are now (a user may be gone).
        let identities =
            super::identities::Identities::load(&new).map_err(RuntimeError::Identity)?;
        let plan = crate::config::diff(&self.config, &new);
        let mut sockets = self.bind_new_sockets(&plan, &new)?;
        // Past this point nothing fails.
        self.identities = identities;
        let rolled = self.apply(&plan, &mut sockets, &new, trigger);
        let path = new.source.clone().unwrap_or_default();
        if new.log != self.config.log {
            log::set_max_level(new.log.level);
        }
        let watching = (self.config.watch.enabled, new.watch.enabled);
        self.config = new;
        self.regrant_sockets();
        for name in &plan.removed {
            self.debounce.cancel(&WatchOwner::Pool(name.clone()));
        }
        match watching {
            (false, true) => self.start_watcher(),
            (true, false) => {
                log::info!("file watching is off");
                self.watcher = None;
                self.held.clear();
            }
            _ => self.watch_config(),
        }
        Ok(Reloaded {
            summary: format!("Reloaded {}: {}", path.display(), plan.summary()),
            rolled,
            diff: super::events::diff_json(&plan),
        })
    }

    /// Step 1: the new file, parsed and validated whole. `[control]` and
    /// `[master]` stay as started (they name files and sockets the master holds).
    fn read_new_config(&self) -> Result<Config, RuntimeError> {
        if self.is_shutting_down() {
            return Err(RuntimeError::ShuttingDown);
        }
        let path = self
            .config
            .source
            .clone()
            .ok_or(RuntimeError::NoConfigFile)?;
        let mut new = Config::load(&path).map_err(RuntimeError::Config)?;
        // What the next `reexec` runs and how it is checked name no resource
        // the master holds: they apply at once.
        let mut master = self.config.master.clone();
        master.reexec_as = new.master.reexec_as.clone();
        master.upgrade_check = new.master.upgrade_check;
        master.upgrade_check_timeout = new.master.upgrade_check_timeout;
        if new.control != self.config.control || new.master != master {
            log::warn!("reload: [control] and [master] changes need a restart; kept as running");
        }
        new.control = self.config.control.clone();
        new.master = master;
        // The listener is held as started (src/master/metrics.rs), like the
        // control socket.
        if new.metrics != self.config.metrics {
            log::warn!("reload: [metrics] changes need a restart; kept as running");
            new.metrics = self.config.metrics.clone();
        }
        Ok(new)
    }

    /// Step 3: every socket the added and rolled pools need. A running socket
    /// with the same address is kept (no moment without a listener), the rest
    /// are bound now; a failure drops what this step bound and changes nothing.
    /// Port-0 binds are only kept by their own pool: each one is a new port.
    fn bind_new_sockets(
        &self,
        plan: &ConfigDiff,
        new: &Config,
    ) -> Result<HashMap<String, Vec<(BindSpec, Source)>>, RuntimeError> {
        let mut out = HashMap::new();
        for name in plan.rebinding() {
            let Some(spec) = new.pools.get(&name) else {
                continue;
            };
            let mut sources = Vec::new();
            for (i, b) in spec.binds.iter().enumerate() {
                let key = b.addr_text();
                let ephemeral = matches!(b.addr, BindAddr::Inet { port: 0, .. });
                let owner = self.pools.iter().find(|(n, e)| {
                    (!ephemeral || **n == name) && e.sockets.iter().any(|s| s.key() == key)
                });
                let source = match owner {
                    Some((owner, _)) => Source::Take(owner.clone()),
                    None => {
                        Source::New(bind::bind(b, bind::DEFAULT_BACKLOG).map_err(|source| {
                            RuntimeError::Bind {
                                pool: name.clone(),
                                index: i,
                                location: new.locate(&format!("pools.{name}.binds[{i}]")),
                                source,
                            }
                        })?)
                    }
                };
                sources.push((b.clone(), source));
            }
            out.insert(name, sources);
        }
        Ok(out)
    }

    /// Step 4: carry the plan out. Returns the pools rolled.
    fn apply(
        &mut self,
        plan: &ConfigDiff,
        sockets: &mut HashMap<String, Vec<(BindSpec, Source)>>,
        new: &Config,
        trigger: &str,
    ) -> Vec<String> {
        // Take the kept sockets out of their current owners first, so that a
        // pool handing an address to another one has given it up before either
        // is changed.
        let mut sockets_for: HashMap<String, Vec<BoundSocket>> = HashMap::new();
        for name in plan.rebinding() {
            let mut list = Vec::new();
            for (b, src) in sockets.remove(&name).unwrap_or_default() {
                let sock = match src {
                    Source::New(s) => Some(s),
                    Source::Take(owner) => self.pools.get_mut(&owner).and_then(|e| {
                        let pos = e.sockets.iter().position(|s| s.key() == b.addr_text())?;
                        Some(e.sockets.remove(pos))
                    }),
                };
                match sock {
                    Some(s) => list.push(s),
                    None => log::error!("reload: pool {name}: lost the socket for {}", b.raw),
                }
            }
            sockets_for.insert(name, list);
        }
        // A pool removed earlier may still be draining under the name the new
        // file adds again: it moves aside (an internal name no config can use,
        // its workers' pids re-pointed) and drains there, and the new pool
        // starts at once under its name.
        for name in &plan.added {
            if self.pools.get(name).is_some_and(|e| e.removing) {
                self.move_aside(name);
            }
        }
        let now = Instant::now();
        for name in &plan.removed {
            if let Some(e) = self.pools.get_mut(name) {
                e.removing = true;
                let actions = e.pool.shutdown(Shutdown::Graceful, now);
                self.execute(name, actions);
                self.note_change(name, format!("removed ({trigger})"));
            }
        }
        for name in &plan.added {
            let Some(spec) = new.pools.get(name) else {
                continue;
            };
            let mut pool = Pool::new(Arc::new(spec.clone()));
            let actions = pool.start(now);
            let sockets = sockets_for.remove(name).unwrap_or_default();
            self.pools
                .insert(name.clone(), PoolEntry::new(pool, sockets));
            self.execute(name, actions);
            self.note_change(name, format!("added ({trigger})"));
        }
        let mut rolled = Vec::new();
        for (name, keys) in &plan.rolled {
            let Some(spec) = new.pools.get(name) else {
                continue;
            };
            let sockets = sockets_for.remove(name).unwrap_or_default();
            self.roll(name, spec, sockets, now);
            self.note_change(
                name,
                format!("rolled ({trigger}: {} changed)", keys.join(", ")),
            );
            rolled.push(name.clone());
        }
        for (name, from, to) in &plan.scaled {
            if rolled.contains(name) {
                continue;
            }
            let (Some(spec), Some(e)) = (new.pools.get(name), self.pools.get_mut(name)) else {
                continue;
            };
            let mut actions = e.pool.retune(Arc::new(spec.clone()), now);
            match e.pool.set_count(*to, now) {
                Ok(a) => actions.extend(a),
                Err(err) => log::warn!("reload: {err}"),
            }
            self.execute(name, actions);
            self.note_change(name, format!("scaled {from} -> {to} ({trigger})"));
        }
        for name in &plan.retuned {
            if let (Some(spec), Some(e)) = (new.pools.get(name), self.pools.get_mut(name)) {
                let actions = e.pool.retune(Arc::new(spec.clone()), now);
                self.execute(name, actions);
                self.note_change(name, format!("settings updated in place ({trigger})"));
            }
        }
        rolled
    }

    /// Roll a kept pool to a new spec: new workers get the new spec and
    /// sockets; old ones keep the sockets they inherited until they drain.
    fn roll(
        &mut self,
        name: &str,
        spec: &crate::config::PoolConfig,
        sockets: Vec<BoundSocket>,
        now: Instant,
    ) {
        let old_binds: Vec<String> = self
            .config
            .pools
            .get(name)
            .map(|p| p.binds.iter().map(BindSpec::addr_text).collect())
            .unwrap_or_default();
        let new_binds: Vec<String> = spec.binds.iter().map(BindSpec::addr_text).collect();
        // A count set at run time (inc, set_workers) stays unless the file's
        // count itself changed.
        let count_changed = self.config.pools.get(name).map(|p| p.count) != Some(spec.count);
        let Some(e) = self.pools.get_mut(name) else {
            return;
        };
        // The addresses the new binds dropped were left here by the take.
        let mut old_only = std::mem::replace(&mut e.sockets, sockets);
        if old_binds != new_binds && e.fallback.is_none() {
            // Keep the previous set, in order, until the roll ends: a failed
            // roll falls back to the version that expects it.
            let mut fallback = Vec::new();
            for key in &old_binds {
                if let Some(pos) = old_only.iter().position(|s| s.key() == *key) {
                    fallback.push(old_only.remove(pos));
                } else if let Some(s) = e.sockets.iter().find(|s| s.key() == *key) {
                    match s.try_clone_disowned() {
                        Ok(dup) => fallback.push(dup),
                        Err(err) => log::warn!(
                            "reload: pool {name}: could not keep {key} for a fallback: {err}"
                        ),
                    }
                }
            }
            e.fallback = Some(fallback);
        }
        drop(old_only);
        let spec = Arc::new(spec.clone());
        let mut actions = Vec::new();
        if count_changed {
            match e.pool.set_count(spec.count, now) {
                Ok(a) => actions = a,
                Err(err) => log::warn!("reload: {err}"),
            }
        }
        match e.pool.upgrade(None, Some(spec), now) {
            Ok((_, a)) => actions.extend(a),
            Err(err) => log::warn!("reload: {err}"),
        }
        self.execute(name, actions);
    }

    /// Re-key a draining, removed pool as `NAME~old` (or `~old2`, ...).
    fn move_aside(&mut self, name: &str) {
        let key = (1..)
            .map(|n| {
                if n == 1 {
                    format!("{name}~old")
                } else {
                    format!("{name}~old{n}")
                }
            })
            .find(|k| !self.pools.contains_key(k))
            .unwrap_or_else(|| format!("{name}~old"));
        let Some(e) = self.pools.remove(name) else {
            return;
        };
        for pid in e.pool.workers_sorted().iter().filter_map(|w| w.pid) {
            self.pid_pool.insert(pid, key.clone());
        }
        self.pools.insert(key.clone(), e);
        self.dirty.insert(key.clone());
        log::info!(
            "pool {name}: added again while its previous workers still drain; those drain on as {key}"
        );
    }
}
