//! The master's own notifications to systemd: once per loop turn the pools are
//! summarised into a [`Snapshot`] and handed to the pure
//! [`Supervisor`](crate::systemd::service::Supervisor), which says what to send
//! and when to be woken next.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Deadline, Master, PoolEntry};
use crate::systemd::service::Snapshot;

impl Master {
    /// systemd: READY/STATUS/WATCHDOG as due, woken by the queue.
    pub(super) fn sd_turn(&mut self) {
        // Not under systemd: nothing to summarise (this runs every loop turn).
        if !self.sd.active() {
            return;
        }
        let snap = self.sd_snapshot();
        if let Some(at) = self.sd.turn(Instant::now(), &snap) {
            self.timers.arm(Deadline::SdNotify, at);
        }
        self.sd_flush();
    }

    /// Before a reload (RELOADING=1); returns whether this call opened it.
    pub(super) fn sd_begin_reload(&mut self) -> bool {
        let opened = self.sd.begin_reload();
        self.sd_flush();
        opened
    }

    /// After a reload opened by [`Master::sd_begin_reload`] (READY=1).
    pub(super) fn sd_end_reload(&mut self, opened: bool) {
        self.sd.end_reload(opened);
        self.sd_flush();
    }

    /// On shutdown (STOPPING=1, once).
    pub(super) fn sd_stopping(&mut self) {
        self.sd.stopping();
        self.sd_flush();
    }

    /// Send what the supervisor decided. A failure is reported once at WARN
    /// (systemd gone, or a full socket) and then only at debug.
    fn sd_flush(&mut self) {
        let msgs = self.sd.take();
        let Some(link) = &self.sd_link else {
            return;
        };
        for msg in msgs {
            match link.send(&msg) {
                Ok(()) => log::debug!("systemd: sent {}", msg.replace('\n', " ")),
                Err(e) if !self.sd_warned => {
                    self.sd_warned = true;
                    log::warn!("systemd: could not notify {}: {e}", link.address());
                }
                Err(e) => log::debug!("systemd: could not notify {}: {e}", link.address()),
            }
        }
    }

    /// The pools summarised (also the `check` command's answer).
    pub(super) fn sd_snapshot(&self) -> Snapshot {
        snapshot(&self.pools, self.is_shutting_down())
    }
}

/// Summarise the pools for systemd (and the `check` command).
fn snapshot(pools: &BTreeMap<String, PoolEntry>, shutting_down: bool) -> Snapshot {
    let mut parts = Vec::new();
    let mut settled = true;
    let mut acked = 0;
    let mut window = Duration::from_secs(1);
    for (name, e) in pools {
        let p = &e.pool;
        acked += p.acked();
        settled &= p.is_settled() || e.removing;
        let spec = p.spec();
        let w = match spec.ack {
            crate::config::AckMode::Timer => spec.ack_timer,
            _ => spec.ack_timeout,
        } + spec.respawn_delay;
        window = window.max(w);
        let mut s = format!("{name} {}/{} acked", p.acked(), p.count());
        if p.draining() > 0 {
            s.push_str(&format!(", {} draining", p.draining()));
        }
        if p.upgrading().is_some() {
            s.push_str(", upgrading");
        }
        if p.gave_up() {
            s.push_str(", gave up respawning");
        }
        parts.push(s);
    }
    let mut status = if parts.is_empty() {
        "no pools".to_string()
    } else {
        parts.join("; ")
    };
    if shutting_down {
        status = format!("stopping: {status}");
    }
    Snapshot {
        settled,
        acked,
        status,
        shutting_down,
        ack_window: window,
    }
}
