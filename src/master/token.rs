//! The loop's mio tokens, typed: what became readable is matched as a
//! [`Source`], never as a bare number.

use mio::Token;

use crate::control::server::{ConnId, CONN_BASE};
use crate::metrics::http::MetricsServer;

/// Everything registered on the master's poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The signal pipe (signal-hook-mio).
    Signals,
    /// The control socket's listener.
    Control,
    /// The file watcher's thread woke the loop (mio Waker).
    Watch,
    /// The workers' NOTIFY_SOCKET (`ack = "notify"`).
    WorkerNotify,
    /// The metrics listener (`[metrics] listen`).
    Metrics,
    /// A scrape connection (ids from [`crate::metrics::http::CONN_BASE`]).
    Scrape(usize),
    /// A control connection (ids are handed out by the control server, from
    /// [`CONN_BASE`] up, below [`OUTPUT_BASE`]).
    Conn(ConnId),
    /// A worker's captured stdout or stderr (src/master/output.rs).
    Output(usize),
}

/// Output pipes' tokens start here, far above any connection id.
pub const OUTPUT_BASE: usize = usize::MAX / 2;

impl Source {
    pub fn token(self) -> Token {
        Token(match self {
            Source::Signals => 0,
            Source::Control => 1,
            Source::Watch => 2,
            Source::WorkerNotify => 3,
            Source::Metrics => 4,
            Source::Scrape(id) => id,
            Source::Conn(id) => id,
            Source::Output(id) => OUTPUT_BASE.saturating_add(id),
        })
    }

    pub fn of(token: Token) -> Option<Source> {
        match token.0 {
            0 => Some(Source::Signals),
            1 => Some(Source::Control),
            2 => Some(Source::Watch),
            3 => Some(Source::WorkerNotify),
            4 => Some(Source::Metrics),
            t if MetricsServer::is_conn(t) => Some(Source::Scrape(t)),
            t if t >= OUTPUT_BASE => Some(Source::Output(t - OUTPUT_BASE)),
            t if t >= CONN_BASE => Some(Source::Conn(t)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_round_trips_and_strays_are_refused() {
        for s in [
            Source::Signals,
            Source::Control,
            Source::Watch,
            Source::WorkerNotify,
            Source::Metrics,
            Source::Scrape(crate::metrics::http::CONN_BASE),
            Source::Scrape(crate::metrics::http::CONN_BASE + crate::metrics::http::MAX_CONNS - 1),
            Source::Conn(CONN_BASE),
            Source::Conn(CONN_BASE + 12345),
            Source::Output(0),
            Source::Output(77),
        ] {
            assert_eq!(Source::of(s.token()), Some(s));
        }
        assert_eq!(Source::of(Token(5)), None);
        assert_eq!(
            Source::of(Token(
                crate::metrics::http::CONN_BASE + crate::metrics::http::MAX_CONNS
            )),
            None
        );
        assert_eq!(Source::of(Token(CONN_BASE - 1)), None);
    }
}
