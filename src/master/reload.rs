//! Reload: re-read the config file, validate it whole, bind what is new, then
//! apply the per-pool difference; and SIGHUP, which reloads and rolls the rest.

use super::*;
use crate::bind::BindSpec;

impl Master {
    /// HUP: re-read the config (with `--config`), then roll every pool the reload
    /// did not already roll.
    pub(super) fn on_hup(&mut self) {
        let sd_reload = self.sd.begin_reload();
        self.on_hup_inner();
        self.sd.end_reload(sd_reload);
    }

    fn on_hup_inner(&mut self) {
        let mut rolled = Vec::new();
        if self.config.source.is_some() {
            match self.reload("SIGHUP") {
                Ok((summary, r)) => {
                    log::info!("SIGHUP: {summary}");
                    rolled = r;
                }
                Err(e) => log::error!("SIGHUP: config not reloaded, running one unchanged: {e}"),
            }
        }
        if self.phase != Phase::Running {
            return;
        }
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

    pub(crate) fn note_change(&mut self, name: &str, what: String) {
        if let Some(e) = self.pools.get_mut(name) {
            e.last_change = Some((Instant::now(), what));
        }
    }

    /// Re-read the config file and apply the difference: new pools start,
    /// removed pools drain, count changes scale, changed pools roll, unchanged
    /// pools are not touched. Nothing is applied unless the whole new file is valid
    /// and every new address binds. Returns a summary and the pools rolled.
    pub(crate) fn reload(&mut self, trigger: &str) -> Result<(String, Vec<String>), String> {
        let sd_reload = self.sd.begin_reload();
        let result = self.reload_inner(trigger);
        self.sd.end_reload(sd_reload);
        let record = ReloadRecord {
            at: Instant::now(),
            trigger: trigger.to_string(),
            result: result
                .as_ref()
                .map(|(s, _)| s.clone())
                .map_err(Clone::clone),
        };
        self.last_reload = Some(record);
        if let Err(e) = &result {
            log::error!("reload ({trigger}) refused, configuration unchanged:\n{e}");
        }
        result
    }

    fn reload_inner(&mut self, trigger: &str) -> Result<(String, Vec<String>), String> {
        if self.phase != Phase::Running {
            return Err("the master is shutting down".into());
        }
        let Some(path) = self.config.source.clone() else {
            return Err(
                "reload needs --config (this master was started from the command line)".into(),
            );
        };
        let mut new = Config::load(&path).map_err(|e| e.to_string())?;
        // The control socket and the master's files stay as started.
        if new.control != self.config.control || new.master != self.config.master {
            log::warn!("reload: [control] and [master] changes need a restart; kept as running");
        }
        new.control = self.config.control.clone();
        new.master = self.config.master.clone();
        let d = crate::config::diff(&self.config, &new);
        // Sockets for every added or rolled pool: a running socket with the same
        // address is kept (no moment without a listener), others are bound anew;
        // all or nothing. Port-0 binds are only kept by their own pool: each one
        // is a different port.
        enum Src {
            Take(String),
            New(BoundSocket),
        }
        let rebinding: Vec<String> = d
            .added
            .iter()
            .chain(d.rolled.iter().map(|(n, _)| n))
            .cloned()
            .collect();
        let mut plans: HashMap<String, Vec<Src>> = HashMap::new();
        for name in &rebinding {
            let Some(spec) = new.pools.get(name) else {
                continue;
            };
            let mut plan = Vec::new();
            for (i, b) in spec.binds.iter().enumerate() {
                let key = b.addr_text();
                let ephemeral = matches!(b.addr, crate::bind::BindAddr::Inet { port: 0, .. });
                let owner = self.pools.iter().find(|(n, e)| {
                    (!ephemeral || *n == name) && e.sockets.iter().any(|s| s.key() == key)
                });
                match owner {
                    Some((owner, _)) => plan.push(Src::Take(owner.clone())),
                    None => {
                        let s = bind::bind(b, bind::DEFAULT_BACKLOG).map_err(|e| {
                            format!(
                                "{}: pools.{name}.binds[{i}]: {e}",
                                new.locate(&format!("pools.{name}.binds[{i}]"))
                            )
                        })?;
                        plan.push(Src::New(s));
                    }
                }
            }
            plans.insert(name.clone(), plan);
        }
        // Past this point nothing fails.
        let mut sockets_for: HashMap<String, Vec<BoundSocket>> = HashMap::new();
        for name in &rebinding {
            let Some(spec) = new.pools.get(name) else {
                continue;
            };
            let mut sockets = Vec::new();
            for (b, src) in spec
                .binds
                .iter()
                .zip(plans.remove(name).unwrap_or_default())
            {
                let sock = match src {
                    Src::New(s) => Some(s),
                    Src::Take(owner) => self.pools.get_mut(&owner).and_then(|e| {
                        let pos = e.sockets.iter().position(|s| s.key() == b.addr_text())?;
                        Some(e.sockets.remove(pos))
                    }),
                };
                match sock {
                    Some(s) => sockets.push(s),
                    None => log::error!("reload: pool {name}: lost the socket for {}", b.raw),
                }
            }
            sockets_for.insert(name.clone(), sockets);
        }
        // A pool removed earlier may still be draining under the name the new
        // file adds again: it moves aside (an internal name no config can use,
        // its workers' pids re-pointed) and drains there, and the new pool
        // starts at once under its name.
        for name in &d.added {
            if self.pools.get(name).is_some_and(|e| e.removing) {
                self.move_aside(name);
            }
        }
        let now = Instant::now();
        let mut parts = Vec::new();
        for name in &d.removed {
            if let Some(e) = self.pools.get_mut(name) {
                e.removing = true;
                let actions = e.pool.shutdown(Shutdown::Graceful, now);
                self.execute(name, actions);
                self.note_change(name, format!("removed ({trigger})"));
            }
        }
        let mut rolled = Vec::new();
        for name in &rebinding {
            let Some(spec) = new.pools.get(name) else {
                continue;
            };
            let sockets = sockets_for.remove(name).unwrap_or_default();
            let old_binds: Vec<String> = self
                .config
                .pools
                .get(name)
                .map(|p| p.binds.iter().map(BindSpec::addr_text).collect())
                .unwrap_or_default();
            let binds_changed = old_binds
                != spec
                    .binds
                    .iter()
                    .map(BindSpec::addr_text)
                    .collect::<Vec<_>>();
            let spec = Arc::new(spec.clone());
            if let Some(e) = self.pools.get_mut(name) {
                // Rolled: new workers get the new spec and sockets; old ones keep
                // the sockets they inherited until they drain. The addresses the
                // new binds dropped were left here by the take above.
                let mut old_only = std::mem::replace(&mut e.sockets, sockets);
                if binds_changed && e.fallback.is_none() {
                    // Keep the previous set, in order, until the roll ends: a
                    // failed roll falls back to the version that expects it.
                    let mut fallback = Vec::new();
                    for key in &old_binds {
                        if let Some(pos) = old_only.iter().position(|s| s.key() == *key) {
                            fallback.push(old_only.remove(pos));
                        } else if let Some(s) = e.sockets.iter().find(|s| s.key() == *key) {
                            match s.try_clone_disowned() {
                                Ok(dup) => fallback.push(dup),
                                Err(err) => log::warn!("reload: pool {name}: could not keep {key} for a fallback: {err}"),
                            }
                        }
                    }
                    e.fallback = Some(fallback);
                }
                drop(old_only);
                let mut actions = e.pool.set_count(spec.count, now).unwrap_or_default();
                match e.pool.upgrade(None, Some(spec), now) {
                    Ok((_, a)) => actions.extend(a),
                    Err(err) => log::warn!("reload: {err}"),
                }
                self.execute(name, actions);
                let keys = d
                    .rolled
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, k)| k.join(", "))
                    .unwrap_or_default();
                self.note_change(name, format!("rolled ({trigger}: {keys} changed)"));
                rolled.push(name.clone());
            } else {
                let mut pool = Pool::new(spec);
                let actions = pool.start(now);
                self.pools
                    .insert(name.clone(), PoolEntry::new(pool, sockets));
                self.execute(name, actions);
                self.note_change(name, format!("added ({trigger})"));
            }
        }
        for (name, from, to) in &d.scaled {
            if rolled.contains(name) {
                continue;
            }
            if let Some(spec) = new.pools.get(name) {
                let spec = Arc::new(spec.clone());
                if let Some(e) = self.pools.get_mut(name) {
                    let mut actions = e.pool.retune(spec, now);
                    actions.extend(e.pool.set_count(*to, now).unwrap_or_default());
                    self.execute(name, actions);
                    self.note_change(name, format!("scaled {from} -> {to} ({trigger})"));
                }
            }
        }
        for name in &d.retuned {
            if let (Some(spec), Some(e)) = (new.pools.get(name), self.pools.get_mut(name)) {
                let actions = e.pool.retune(Arc::new(spec.clone()), now);
                self.execute(name, actions);
                self.note_change(name, format!("settings updated in place ({trigger})"));
            }
        }
        if new.log != self.config.log {
            log::set_max_level(new.log.level);
        }
        if !d.added.is_empty() {
            parts.push(format!("added {}", d.added.join(", ")));
        }
        if !d.removed.is_empty() {
            parts.push(format!("removed {}", d.removed.join(", ")));
        }
        for (n, keys) in &d.rolled {
            parts.push(format!("rolling {n} ({} changed)", keys.join(", ")));
        }
        for (n, a, b) in &d.scaled {
            parts.push(format!("scaled {n} {a} -> {b}"));
        }
        if !d.retuned.is_empty() {
            parts.push(format!("retuned {}", d.retuned.join(", ")));
        }
        if !d.unchanged.is_empty() {
            parts.push(format!("unchanged {}", d.unchanged.join(", ")));
        }
        self.config = new;
        for name in &d.removed {
            self.debounce.cancel(&WatchOwner::Pool(name.clone()));
        }
        self.watch_config();
        let summary = format!(
            "Reloaded {}: {}",
            path.display(),
            if parts.is_empty() {
                "nothing changed".into()
            } else {
                parts.join("; ")
            }
        );
        log::info!("{summary}");
        Ok((summary, rolled))
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
