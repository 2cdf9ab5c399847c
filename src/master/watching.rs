//! File watching on the master's loop: which files each pool and the config
//! depend on, the watcher's wake-ups, and the debounced decisions (roll a pool,
//! reload the config). The watcher thread itself (src/watch.rs) only forwards.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::token::Source;
use super::{Deadline, Master, WatchOwner};
use crate::watch::{pool_files, FileWatcher};

impl Master {
    /// Start the watcher thread (if enabled) and watch what the config names.
    pub(super) fn start_watcher(&mut self) {
        if !self.config.watch.enabled {
            log::info!("file watching is off");
            return;
        }
        let waker = match mio::Waker::new(self.poll.registry(), Source::Watch.token()) {
            Ok(w) => Arc::new(w),
            Err(e) => {
                log::error!("file watching disabled: could not create a waker: {e}");
                return;
            }
        };
        // The watcher's threads inherit this thread's signal mask: with the
        // handled signals blocked there, every signal goes to the loop's
        // thread, and none can be taken by a thread that a re-exec then
        // destroys (src/master/reexec.rs).
        super::reexec::block_handled(true);
        let watcher = FileWatcher::new(waker);
        super::reexec::block_handled(false);
        match watcher {
            Ok(w) => self.watcher = Some(w),
            Err(e) => {
                log::error!("file watching disabled: {e}");
                return;
            }
        }
        self.watch_config();
    }

    /// (Re)compute the watched files: each pool's resolved executable and its
    /// `watch` paths, and the config file.
    pub(super) fn watch_config(&mut self) {
        self.debounce.set_delay(self.config.watch.debounce);
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        let cwd = std::env::current_dir().unwrap_or_default();
        let mut wanted: BTreeMap<PathBuf, Vec<WatchOwner>> = BTreeMap::new();
        let mut add = |p: PathBuf, o: WatchOwner| wanted.entry(cwd.join(p)).or_default().push(o);
        if let Some(src) = &self.config.source {
            add(src.clone(), WatchOwner::Config);
        }
        for (name, pool) in &self.config.pools {
            let owner = WatchOwner::Pool(name.clone());
            let files = pool_files(pool);
            if let Some(cmd0) = pool.command.first() {
                if !files.iter().any(|(_, why)| *why == "executable") {
                    log::warn!("pool {name}: {cmd0:?} not found in PATH; not watching it");
                }
            }
            for (p, _) in files {
                add(p, owner.clone());
            }
        }
        let n = wanted.len();
        for problem in watcher.set(wanted) {
            log::warn!("watch: {problem}");
        }
        log::debug!("watching {n} file(s) for changes");
    }

    pub(super) fn on_watch_events(&mut self) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        let report = watcher.take_events();
        for problem in report.problems {
            log::warn!("watch: {problem}");
        }
        let now = Instant::now();
        for change in report.changed {
            for owner in change.owners {
                if change.writing {
                    // Written in place and not closed yet: what is on disk may
                    // be a prefix (a config with half its pools, a truncated
                    // binary). The debounce runs, but nothing is done until the
                    // writer closes the file (see on_debounced).
                    log::debug!("watch: {} is being written", change.path.display());
                    self.held
                        .insert(owner.clone(), (change.path.clone(), false));
                } else if let Some((path, told)) = self.held.remove(&owner) {
                    if told {
                        log::info!("watch: {} was closed by its writer", path.display());
                    }
                }
                let what = match &owner {
                    WatchOwner::Config => "the configuration will be reloaded".to_string(),
                    WatchOwner::Pool(p) => format!("pool {p} will roll"),
                };
                // One line per burst; the rest of a burst only at debug.
                if self.debounce.is_pending(&owner) {
                    log::debug!("watch: {} changed again", change.path.display());
                } else {
                    log::info!(
                        "watch: {} changed; {what} after {:?} without further changes",
                        change.path.display(),
                        self.debounce.delay()
                    );
                    let for_what = match &owner {
                        WatchOwner::Config => serde_json::Value::String("config".into()),
                        WatchOwner::Pool(p) => serde_json::Value::String(p.clone()),
                    };
                    self.master_event(
                        "watch_triggered",
                        serde_json::json!({
                            "path": change.path.display().to_string(),
                            "pool": for_what,
                            "message": format!("{} changed; {what}", change.path.display()),
                        }),
                    );
                }
                self.debounce.event(owner, now);
            }
        }
        if let Some(at) = self.debounce.next_deadline() {
            self.timers.arm(Deadline::Debounce, at);
        }
    }

    pub(super) fn on_debounced(&mut self, now: Instant) {
        let due = self.debounce.due(now);
        // Reload first: it may roll pools itself, which then need no second roll.
        let mut rolled = Vec::new();
        if due.contains(&WatchOwner::Config) && !self.held.contains_key(&WatchOwner::Config) {
            if let Ok(r) = self.reload("config file changed") {
                rolled = r.rolled;
            }
        }
        for owner in due {
            if let Some((path, told)) = self.held.get_mut(&owner) {
                if !*told {
                    *told = true;
                    log::info!(
                        "watch: waiting for the writer of {} to close it before {}",
                        path.display(),
                        match &owner {
                            WatchOwner::Config => "reloading the configuration".to_string(),
                            WatchOwner::Pool(p) => format!("rolling pool {p}"),
                        }
                    );
                }
                continue;
            }
            let WatchOwner::Pool(name) = owner else {
                continue;
            };
            if rolled.contains(&name) || self.pools.get(&name).is_none_or(|e| e.removing) {
                continue;
            }
            match self.start_upgrade(Some(&name), None, None) {
                Ok(_) => self.note_change(&name, "rolled (a watched file changed)".into()),
                Err(e) => log::warn!("watch: pool {name}: {e}"),
            }
        }
        if let Some(at) = self.debounce.next_deadline() {
            self.timers.arm(Deadline::Debounce, at);
        }
    }
}
