//! How the master winds down, without I/O: which signal the workers get for
//! each stop request, and when the master may exit.
//!
//! einhorn's table (BRIEF §4): INT and USR2 drain gracefully; asking again
//! escalates (a second INT sends TERM, a third SIGKILL), so an operator pressing
//! Ctrl-C three times always gets out. TERM terms every worker; QUIT quits them
//! and exits at once, without waiting.

use nix::sys::signal::Signal;

use crate::pool::Shutdown;

/// A request to stop, as it reached the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// SIGINT or SIGUSR2.
    Graceful,
    /// SIGTERM.
    Term,
    /// SIGQUIT.
    Quit,
    /// The `die` command, with the signal it names if any.
    Die(Option<Signal>),
}

/// What to do about one stop request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopStep {
    /// What every pool is told.
    pub how: Shutdown,
    /// Exit without waiting for the workers.
    pub exit_now: bool,
}

/// The master's phase.
#[derive(Debug, Default)]
pub struct Phase {
    /// Graceful requests so far (each one escalates).
    graceful: u32,
    draining: bool,
    exit_now: bool,
}

impl Phase {
    pub fn is_running(&self) -> bool {
        !self.draining
    }

    /// A stop request arrived: the shutdown to carry out.
    pub fn stop(&mut self, req: StopRequest) -> StopStep {
        self.draining = true;
        let step = match req {
            StopRequest::Graceful => {
                self.graceful += 1;
                let how = match self.graceful {
                    1 => Shutdown::Graceful,
                    2 => Shutdown::With(Signal::SIGTERM),
                    _ => Shutdown::With(Signal::SIGKILL),
                };
                StopStep {
                    how,
                    exit_now: false,
                }
            }
            StopRequest::Term => StopStep {
                how: Shutdown::With(Signal::SIGTERM),
                exit_now: false,
            },
            StopRequest::Quit => StopStep {
                how: Shutdown::With(Signal::SIGQUIT),
                exit_now: true,
            },
            StopRequest::Die(None) => StopStep {
                how: Shutdown::Graceful,
                exit_now: false,
            },
            StopRequest::Die(Some(s)) => StopStep {
                how: Shutdown::With(s),
                exit_now: false,
            },
        };
        self.exit_now |= step.exit_now;
        step
    }

    /// May the loop end? `pools_left`: pools still running or draining.
    pub fn may_exit(&self, pools_left: usize) -> bool {
        self.exit_now || (self.draining && pools_left == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_interrupts_escalate_to_term_then_kill() {
        let mut p = Phase::default();
        assert!(p.is_running() && !p.may_exit(0));
        let hows: Vec<Shutdown> = (0..4).map(|_| p.stop(StopRequest::Graceful).how).collect();
        assert_eq!(
            hows,
            vec![
                Shutdown::Graceful,
                Shutdown::With(Signal::SIGTERM),
                Shutdown::With(Signal::SIGKILL),
                Shutdown::With(Signal::SIGKILL)
            ]
        );
        assert!(!p.is_running());
        assert!(!p.may_exit(1) && p.may_exit(0));
    }

    #[test]
    fn quit_exits_at_once_and_term_waits() {
        let mut p = Phase::default();
        assert_eq!(
            p.stop(StopRequest::Term),
            StopStep {
                how: Shutdown::With(Signal::SIGTERM),
                exit_now: false
            }
        );
        assert!(!p.may_exit(2));
        assert!(p.stop(StopRequest::Quit).exit_now);
        assert!(p.may_exit(2));
    }

    #[test]
    fn die_does_not_count_as_an_interrupt() {
        let mut p = Phase::default();
        assert_eq!(p.stop(StopRequest::Die(None)).how, Shutdown::Graceful);
        // The first Ctrl-C after `die` is still the graceful one.
        assert_eq!(p.stop(StopRequest::Graceful).how, Shutdown::Graceful);
        assert_eq!(
            p.stop(StopRequest::Die(Some(Signal::SIGINT))).how,
            Shutdown::With(Signal::SIGINT)
        );
    }
}
