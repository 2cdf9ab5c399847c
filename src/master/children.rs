//! Children: reaping, carrying out the pools' actions, and the spawn queue.
//!
//! All spawning goes through here, and `waitpid(-1)` is looped until nothing is
//! left on every SIGCHLD (signals coalesce). A pid is never signalled after it
//! has been reaped: a pool forgets a worker the moment its exit is seen, and
//! the pid-to-pool map with it.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use nix::sys::signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid as NixPid;

use super::{Master, PendingSpawn};
use crate::bind::BoundSocket;
use crate::config::{AckMode, PoolConfig};
use crate::pool::{Action, Pid, SpawnError};
use crate::spawn::{self, SpawnContext};

impl Master {
    pub(super) fn reap(&mut self) {
        loop {
            match waitpid(NixPid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    let pid = pid.as_raw();
                    let how = describe(&status);
                    if self.reexec_reaped(pid, &status) {
                        continue;
                    }
                    let Some(name) = self.pid_pool.remove(&pid) else {
                        log::debug!("reaped pid {pid} ({how}), not a worker");
                        continue;
                    };
                    // Its last lines come before the news of its exit.
                    self.output_exited(pid);
                    let now = Instant::now();
                    if let Some(e) = self.pools.get_mut(&name) {
                        if let Some(actions) = e.pool.exited(pid, &how, now) {
                            self.execute(&name, actions);
                        }
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::ECHILD) => break,
                Err(e) => {
                    log::warn!("waitpid failed: {e}");
                    break;
                }
            }
        }
    }

    // ---- carrying out pool actions -------------------------------------------

    pub(super) fn execute(&mut self, name: &str, actions: Vec<Action>) {
        self.publish(name);
        for action in actions {
            match action {
                Action::Spawn {
                    worker,
                    index,
                    version,
                    spec,
                } => self.spawn_queue.push_back(PendingSpawn {
                    pool: name.to_string(),
                    worker,
                    index,
                    version,
                    spec,
                }),
                Action::Signal { pid, signal, group } => {
                    // The pid is not reaped yet (the pool forgets workers when
                    // reaped), so it cannot have been reused. A group is the
                    // worker's own (spawned with setpgid(0, 0)): its id is the
                    // worker's pid, held by the kernel while any member lives;
                    // after the worker is reaped (stop_group's last kill, in
                    // the same loop turn) an empty group just gives ESRCH.
                    let target = if group { -pid } else { pid };
                    if let Err(e) = signal::kill(NixPid::from_raw(target), signal) {
                        log::debug!("pool {name}: kill({target}, {signal}) failed: {e}");
                    }
                }
                Action::Progress {
                    upgrade,
                    message,
                    outcome,
                } => {
                    let finished = outcome.as_ref().map(Result::is_ok);
                    if outcome.is_none() {
                        // The final step is the pool's upgrade_done/abandoned event.
                        self.master_event(
                            "upgrade_progress",
                            serde_json::json!({"pool": name, "upgrade": upgrade, "message": message}),
                        );
                    }
                    self.progress(name, upgrade, message, outcome);
                    if let Some(ok) = finished {
                        self.settle_sockets(name, ok);
                        self.prune_releases(name);
                    }
                }
                Action::Stopped => {
                    let removing = self.pools.get(name).is_some_and(|e| e.removing);
                    if self.is_shutting_down() || removing {
                        if removing {
                            log::info!("pool {name}: removed; its sockets are closed");
                        }
                        self.pools.remove(name);
                        self.releases.forget_pool(name);
                        self.counters.pool_gone(name);
                        self.capture.forget_pool(name);
                        self.dirty.remove(name);
                        return;
                    }
                }
            }
        }
        self.dirty.insert(name.to_string());
    }

    /// An upgrade of `name` ended. If it was a roll that changed the binds, the
    /// previous sockets were kept aside: dropped on success (addresses no longer
    /// configured close now), put back on failure, since the pool fell back to
    /// the version that expects them (its EINHORN_FD_n).
    fn settle_sockets(&mut self, name: &str, ok: bool) {
        let Some(e) = self.pools.get_mut(name) else {
            return;
        };
        if e.pool.upgrading().is_some() {
            return; // superseded: the roll goes on
        }
        let Some(fallback) = e.fallback.take() else {
            return;
        };
        if ok {
            return;
        }
        let mut current = std::mem::take(&mut e.sockets);
        // For an address in both sets keep the original (it owns a unix socket's
        // path) and drop the duplicate.
        e.sockets = fallback
            .into_iter()
            .map(
                |old| match current.iter().position(|s| s.key() == old.key()) {
                    Some(pos) => current.remove(pos),
                    None => old,
                },
            )
            .collect();
        let binds: Vec<&str> = e.sockets.iter().map(BoundSocket::local_addr).collect();
        log::warn!(
            "pool {name}: the roll failed; back to the previous binds [{}]",
            binds.join(", ")
        );
    }

    /// Keep the release records a pool may still need: its running versions,
    /// its target and what `rollback` would bring back.
    fn prune_releases(&mut self, name: &str) {
        let Some(e) = self.pools.get(name) else {
            self.releases.forget_pool(name);
            return;
        };
        let mut keep: Vec<u64> = e.pool.workers_sorted().iter().map(|w| w.version).collect();
        keep.push(e.pool.version());
        keep.extend(e.pool.previous().map(|p| p.0));
        self.releases.keep_only(name, &keep);
    }

    /// An older version of a pool (a canary's base, a rollback's target) runs
    /// the files its release ran (src/master/releases.rs), not whatever its
    /// command names now: after a symlink-swap deploy, `current` already
    /// points at the new release. The newest version runs its command as
    /// written, as einhorn does.
    fn pinned(&self, name: &str, version: u64, spec: Arc<PoolConfig>) -> Arc<PoolConfig> {
        let older = self
            .pools
            .get(name)
            .is_some_and(|e| version < e.pool.newest_version());
        match self.releases.get(name, version) {
            Some(r) if older => match r.spec_for(&spec) {
                Ok(pinned) => pinned,
                Err(why) => {
                    log::warn!(
                        "pool {name}: version {version}'s release cannot be run as it was ({why}); running its command as written"
                    );
                    spec
                }
            },
            _ => spec,
        }
    }

    /// Fork up to `budget` queued workers.
    pub(super) fn run_spawns(&mut self, budget: usize) {
        for _ in 0..budget {
            let Some(PendingSpawn {
                pool: name,
                worker,
                index,
                version,
                spec,
            }) = self.spawn_queue.pop_front()
            else {
                return;
            };
            let wanted = self
                .pools
                .get_mut(&name)
                .is_some_and(|e| e.pool.wants_spawn(worker));
            if !wanted {
                if let Some(e) = self.pools.get_mut(&name) {
                    let actions = e.pool.spawn_dropped(Instant::now());
                    self.execute(&name, actions);
                }
                continue;
            }
            let spec = self.pinned(&name, version, spec);
            let result = self.spawn(&name, index, &spec);
            if let Ok(pid) = result {
                self.pid_pool.insert(pid, name.clone());
                self.releases.note(&name, version, &spec);
            }
            if let Some(e) = self.pools.get_mut(&name) {
                let actions = e.pool.spawned(worker, result, Instant::now());
                self.execute(&name, actions);
            }
        }
    }

    fn spawn(&mut self, name: &str, index: u32, spec: &PoolConfig) -> Result<Pid, SpawnError> {
        let fds: Vec<RawFd> = self
            .pools
            .get(name)
            .map(|e| e.sockets.iter().map(AsRawFd::as_raw_fd).collect())
            .unwrap_or_default();
        // -g: a socketpair whose master end is a control connection.
        let mut pair = None;
        if spec.command_socket_as_fd {
            match std::os::unix::net::UnixStream::pair() {
                Ok((ours, theirs)) => pair = Some((ours, theirs)),
                Err(e) => {
                    return Err(SpawnError::Resources(format!(
                        "could not create the -g socketpair: {e}"
                    )))
                }
            }
        }
        let notify = if spec.ack == AckMode::Notify {
            self.worker_notify_address()
        } else {
            None
        };
        let identity = self
            .identities
            .get(&spec.identity)
            .map_err(|why| SpawnError::Program(format!("identity: {why}")))?;
        // Capture pipes (stdout/stderr = "log" or a file), made before the fork.
        let (stdout, stderr, planned) = super::output::Capture::plan(spec, index).map_err(|e| {
            SpawnError::Resources(format!("could not create the output pipes: {e}"))
        })?;
        let ctx = SpawnContext {
            sockets: &fds,
            control_path: self.control.path(),
            master_pid: self.pid,
            index,
            control_fd: pair.as_ref().map(|(_, t)| t.as_raw_fd()),
            notify_socket: notify.as_deref(),
            identity: identity.as_deref(),
            stdout,
            stderr,
        };
        let pid = spawn::spawn(spec, &ctx).map_err(|e| {
            if e.is_master_side() {
                SpawnError::Resources(e.to_string())
            } else {
                SpawnError::Program(e.to_string())
            }
        })?;
        self.adopt_output(name, index, pid, planned);
        if let Some((ours, _theirs)) = pair {
            if ours.set_nonblocking(true).is_ok() {
                let stream = mio::net::UnixStream::from_std(ours);
                match self.control.adopt(self.poll.registry(), stream) {
                    Ok(id) => self.control.set_persistent(id, pid),
                    Err(e) => log::warn!("pool {name}: could not register the -g connection: {e}"),
                }
            }
        }
        Ok(pid)
    }
}

/// `exited with status 1`, `killed by SIGKILL`, ...
pub(super) fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, core) => {
            format!(
                "killed by {}{}",
                sig.as_str(),
                if *core { " (core dumped)" } else { "" }
            )
        }
        other => format!("{other:?}"),
    }
}
