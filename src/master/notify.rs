//! The workers' notify socket on the loop (`ack = "notify"`): bound on first use,
//! its datagrams handed to the pools (src/systemd/worker_notify.rs reads them).

use std::time::Instant;

use super::token::Source;
use super::Master;
use crate::config::AckMode;
use crate::systemd::worker_notify::{Msg, WorkerNotify, PER_TURN};

impl Master {
    /// The notify socket's address, binding it on first use.
    pub(super) fn worker_notify_address(&mut self) -> Option<String> {
        if self.notify_ack.is_none() {
            match WorkerNotify::bind(self.control.path(), self.config.control.mode) {
                Ok(mut n) => match n.register(self.poll.registry(), Source::WorkerNotify.token()) {
                    Ok(()) => {
                        self.notify_ack = Some(n);
                        self.grant_notify();
                    }
                    Err(e) => log::error!("worker notify socket: cannot register: {e}"),
                },
                Err(e) => log::error!("worker notify socket: cannot bind: {e}"),
            }
        }
        self.notify_ack.as_ref().map(|n| n.address().to_string())
    }

    /// Datagrams from workers: acks, status, watchdog pings, stopping.
    pub(super) fn on_worker_notify(&mut self) {
        let batch = match self.notify_ack.as_mut() {
            Some(n) => n.recv_all(self.poll.registry(), PER_TURN),
            None => Vec::new(),
        };
        for (pid, msgs) in batch {
            let Some(name) = self.pool_of_pid(pid) else {
                log::debug!("worker notify socket: ignoring pid {pid}, not a worker");
                continue;
            };
            let Some(e) = self.pools.get_mut(&name) else {
                continue;
            };
            // The worker's own spec: during a roll from notify to another ack
            // mode, old workers still ping their watchdog here.
            let ack = e.pool.worker_by_pid(pid).map(|w| w.spec.ack);
            if ack != Some(AckMode::Notify) {
                log::debug!("worker notify socket: pool {name} does not use ack = \"notify\"; ignoring pid {pid}");
                continue;
            }
            for m in msgs {
                let now = Instant::now();
                let Some(e) = self.pools.get_mut(&name) else {
                    break;
                };
                let actions = match m {
                    Msg::Ready => e.pool.ack(pid, now),
                    Msg::Stopping => e.pool.worker_stopping(pid, now),
                    Msg::Watchdog => e.pool.watchdog_ping(pid, now).map(|()| Vec::new()),
                    Msg::Status(s) => e.pool.notify_status(pid, s).map(|()| Vec::new()),
                };
                match actions {
                    Ok(a) => self.execute(&name, a),
                    Err(err) => log::debug!("worker notify socket: {err}"),
                }
            }
        }
    }
}
