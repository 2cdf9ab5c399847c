//! The master's signals (BRIEF §4), read from signal-hook's pipe on the loop.

use nix::sys::signal::Signal;
use signal_hook::consts::signal as sigs;

use super::phase::StopRequest;
use super::Master;

impl Master {
    pub(super) fn on_signals(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for sig in pending {
            match sig {
                sigs::SIGCHLD => self.reap(),
                // logrotate's create mode (unused by einhorn's table).
                sigs::SIGUSR1 => {
                    self.reopen_logs();
                }
                sigs::SIGHUP => self.on_hup(),
                sigs::SIGINT | sigs::SIGUSR2 => {
                    self.stop(StopRequest::Graceful, signal_name(sig));
                }
                sigs::SIGTERM => self.stop(StopRequest::Term, "SIGTERM"),
                sigs::SIGQUIT => self.stop(StopRequest::Quit, "SIGQUIT"),
                sigs::SIGTTIN | sigs::SIGTTOU => {
                    let delta: isize = if sig == sigs::SIGTTIN { 1 } else { -1 };
                    if self.pools.len() == 1 {
                        if let Some(name) = self.pools.keys().next().cloned() {
                            if let Err(e) = self.change_count(&name, signal_name(sig), |c| {
                                c.saturating_add_signed(delta)
                            }) {
                                log::warn!("{}: {e}", signal_name(sig));
                            }
                        }
                    } else {
                        log::warn!(
                            "{} ignored: {} pools; use einhyrningsinsctl with --pool",
                            signal_name(sig),
                            self.pools.len()
                        );
                    }
                }
                _ => {}
            }
        }
    }
}

pub(super) fn signal_name(sig: i32) -> &'static str {
    Signal::try_from(sig).map_or("signal", |s| s.as_str())
}
