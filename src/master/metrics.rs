//! The master's side of observability: the metrics listener on the loop
//! (src/metrics/http.rs moves the bytes), the [`Scrape`] of what the master
//! sees now, with workers' RSS and CPU read from /proc at that moment only,
//! and the `stats` command (the same view as JSON, for `einhyrningsinsctl top`).
//!
//! The counters themselves are bumped where events are published
//! (src/master/events.rs) and by the command dispatch: a few integer
//! increments. With nobody scraping, nothing here runs: no timer is armed
//! unless a scrape connection is open.

use std::time::Instant;

use super::{Deadline, Master};
use crate::metrics::http::{self, MetricsServer, Request, ScrapeId};
use crate::metrics::render::{self, PoolView, ProcessView, Scrape, WorkerView};
use crate::pool::WorkerState;

impl Master {
    /// Bind the listener `[metrics] listen` asks for (none: nothing to do).
    pub(super) fn bind_metrics(
        config: &crate::config::Config,
        poll: &mio::Poll,
    ) -> Result<Option<MetricsServer>, http::MetricsError> {
        let Some(addr) = &config.metrics.listen else {
            return Ok(None);
        };
        let mut m = MetricsServer::bind(addr)?;
        m.register(poll.registry(), super::token::Source::Metrics.token())
            .map_err(|source| http::MetricsError::Listen {
                addr: addr.to_string(),
                source,
            })?;
        log::info!("metrics: serving http://{}/metrics", m.shown());
        Ok(Some(m))
    }

    pub(super) fn accept_scrapers(&mut self) {
        let now = Instant::now();
        if let Some(m) = &mut self.metrics {
            if !m.accept(self.poll.registry(), now) {
                // Out of fds, say: the listener stays readable; try again soon.
                self.timers.arm(
                    Deadline::MetricsIdle,
                    now + std::time::Duration::from_millis(100),
                );
            }
        }
        self.arm_metrics();
    }

    pub(super) fn on_scrape_event(&mut self, id: ScrapeId) {
        let now = Instant::now();
        let Some(m) = &mut self.metrics else {
            return;
        };
        let (req, answered) = m.on_event(self.poll.registry(), id, now);
        if let Some(code) = answered {
            self.counters.scrape(code);
        }
        if let Some(Request::Metrics { head }) = req {
            let body = render::render(&self.scrape_view(None), &self.counters);
            let Some(m) = &mut self.metrics else {
                return;
            };
            let (code, bytes) = if m.has_room(body.len()) {
                (
                    200,
                    http::response(200, "OK", render::CONTENT_TYPE, body.as_bytes(), head),
                )
            } else {
                let b = b"503 too much output queued for scrapers; try again\n";
                (
                    503,
                    http::response(503, "Service Unavailable", "text/plain", b, head),
                )
            };
            m.respond(self.poll.registry(), id, bytes, now);
            self.counters.scrape(code);
        }
        self.arm_metrics();
    }

    /// Close scrape connections that stopped making progress.
    pub(super) fn metrics_due(&mut self, now: Instant) {
        if let Some(m) = &mut self.metrics {
            let n = m.expire(self.poll.registry(), now);
            if n > 0 {
                log::debug!("metrics: closed {n} idle connection(s)");
            }
        }
        // Retry an accept that failed; harmless when there is nothing.
        self.accept_scrapers();
    }

    fn arm_metrics(&mut self) {
        if let Some(at) = self.metrics.as_ref().and_then(MetricsServer::next_deadline) {
            self.timers.arm(Deadline::MetricsIdle, at);
        }
    }

    /// What the master sees now; `pool`: only that one.
    pub(super) fn scrape_view(&self, pool: Option<&str>) -> Scrape {
        let now = Instant::now();
        let me = self.pid;
        let usage = crate::procfs::usage(me);
        Scrape {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: self.uptime().as_secs_f64(),
            master: ProcessView {
                pid: me,
                rss_bytes: usage.map(|u| u.rss_bytes),
                cpu_seconds: usage.map(|u| u.cpu_seconds),
                open_fds: crate::procfs::open_fds(me),
            },
            pools: self
                .pools
                .iter()
                .filter(|(name, _)| pool.is_none_or(|p| p == name.as_str()))
                .map(|(name, e)| {
                    let p = &e.pool;
                    let restarts = self.counters.pools.get(name).map_or(0, |c| {
                        c.exits.get("crash_before_ack").copied().unwrap_or(0)
                            + c.exits.get("crash_after_ack").copied().unwrap_or(0)
                    });
                    PoolView {
                        name: name.clone(),
                        desired: p.count(),
                        version: p.version(),
                        upgrading: p.upgrading().is_some(),
                        removing: e.removing,
                        failures: p.failures(),
                        respawn_in_seconds: p
                            .respawn_at()
                            .filter(|t| *t > now)
                            .map(|t| (t - now).as_secs_f64()),
                        restarts,
                        workers: p
                            .workers_sorted()
                            .into_iter()
                            .map(|w| {
                                let u = w.pid.and_then(crate::procfs::usage);
                                WorkerView {
                                    pid: w.pid,
                                    index: w.index,
                                    version: w.version,
                                    state: match w.state {
                                        WorkerState::Spawning => "spawning",
                                        WorkerState::Unacked { .. } => "unacked",
                                        WorkerState::Acked { .. } => "acked",
                                        WorkerState::Draining { .. } => "draining",
                                    },
                                    age_seconds: now
                                        .saturating_duration_since(w.spawned_at)
                                        .as_secs_f64(),
                                    rss_bytes: u.map(|u| u.rss_bytes),
                                    cpu_seconds: u.map(|u| u.cpu_seconds),
                                }
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }

    /// `stats [--pool P]`: the scrape view as one JSON document.
    pub(super) fn stats_json(&self, pool: Option<&str>) -> String {
        serde_json::to_string(&self.scrape_view(pool))
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}
