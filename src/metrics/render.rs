//! The Prometheus text exposition format (version 0.0.4), written from a
//! [`Scrape`] and the [`Counters`]: pure, so every line is unit-tested.
//!
//! Conventions: the `einhyrningsins_` prefix; `# HELP` and `# TYPE` once per
//! family, its samples together; counters end in `_total`; base units
//! (`_seconds`, `_bytes`); histograms as cumulative `_bucket{le=...}` with
//! `+Inf`, then `_sum` and `_count`; label values escaped (`\\`, `\"`, `\n`).

use std::fmt::Write as _;

use serde::Serialize;

use super::{ByLabel, Counters, Histogram, PoolCounters, ACK_BUCKETS, UPGRADE_BUCKETS};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The states a worker is counted in (`einhyrningsins_pool_workers{state}`).
pub const WORKER_STATES: [&str; 4] = ["spawning", "unacked", "acked", "draining"];
/// Exit causes, always all written (a counter that appears late breaks `rate`).
pub const EXIT_CAUSES: [&str; 4] = [
    "crash_before_ack",
    "crash_after_ack",
    "stopped",
    "killed_after_timeout",
];
const UPGRADE_OUTCOMES: [&str; 4] = ["started", "done", "abandoned", "superseded"];

/// What the master sees at scrape time (also the `stats` command's reply).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scrape {
    pub version: String,
    pub uptime_seconds: f64,
    pub master: ProcessView,
    pub pools: Vec<PoolView>,
}

/// A process as /proc shows it (`None`: could not be read).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessView {
    pub pid: i32,
    pub rss_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PoolView {
    pub name: String,
    pub desired: usize,
    pub version: u64,
    pub upgrading: bool,
    /// Removed by a reload, draining.
    pub removing: bool,
    pub failures: u32,
    /// A respawn waits for the backoff: this much longer.
    pub respawn_in_seconds: Option<f64>,
    /// Workers that died unasked (crashes before or after their ack).
    pub restarts: u64,
    pub workers: Vec<WorkerView>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerView {
    pub pid: Option<i32>,
    pub index: u32,
    pub version: u64,
    /// One of [`WORKER_STATES`].
    pub state: &'static str,
    pub age_seconds: f64,
    pub rss_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
}

/// Escape a label value.
pub fn escape(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A sample value: integers as integers, `+Inf`/`-Inf`/`NaN` spelled out.
fn value(v: f64, out: &mut String) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

/// The writer: a family header, then its samples.
struct Out {
    s: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.s, "# HELP {name} {help}");
        let _ = writeln!(self.s, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.s.push_str(name);
        if !labels.is_empty() {
            self.s.push('{');
            for (i, (k, lv)) in labels.iter().enumerate() {
                if i > 0 {
                    self.s.push(',');
                }
                self.s.push_str(k);
                self.s.push_str("=\"");
                escape(lv, &mut self.s);
                self.s.push('"');
            }
            self.s.push('}');
        }
        self.s.push(' ');
        value(v, &mut self.s);
        self.s.push('\n');
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], bounds: &[f64], h: &Histogram) {
        let bucket = format!("{name}_bucket");
        let les: Vec<String> = bounds
            .iter()
            .map(|b| {
                let mut s = String::new();
                value(*b, &mut s);
                s
            })
            .collect();
        let mut l: Vec<(&str, &str)> = labels.to_vec();
        for ((_, n), le) in h.cumulative(bounds).zip(&les) {
            l.push(("le", le));
            self.sample(&bucket, &l, n as f64);
            l.pop();
        }
        l.push(("le", "+Inf"));
        self.sample(&bucket, &l, h.count as f64);
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, h.count as f64);
    }

    /// A counter family by one label, with `always` values written even at 0.
    fn by_label(&mut self, name: &str, label: &str, m: &ByLabel, always: &[&str]) {
        for k in always {
            if !m.contains_key(*k) {
                self.sample(name, &[(label, k)], 0.0);
            }
        }
        for (k, n) in m {
            self.sample(name, &[(label, k)], *n as f64);
        }
    }
}

const P: &str = "einhyrningsins_";

/// The whole exposition.
pub fn render(scrape: &Scrape, counters: &Counters) -> String {
    let workers: usize = scrape.pools.iter().map(|p| p.workers.len()).sum();
    let mut o = Out {
        s: String::with_capacity(4096 + workers * 400),
    };
    let n = |s: &str| format!("{P}{s}");

    o.family(
        &n("build_info"),
        "gauge",
        "The running einhyrningsins, by version (always 1).",
    );
    o.sample(&n("build_info"), &[("version", &scrape.version)], 1.0);
    o.family(
        &n("master_uptime_seconds"),
        "gauge",
        "Seconds since the master started (re-execs included).",
    );
    o.sample(&n("master_uptime_seconds"), &[], scrape.uptime_seconds);
    let m = &scrape.master;
    if let Some(b) = m.rss_bytes {
        o.family(
            &n("master_resident_memory_bytes"),
            "gauge",
            "The master's resident set size.",
        );
        o.sample(&n("master_resident_memory_bytes"), &[], b as f64);
    }
    if let Some(c) = m.cpu_seconds {
        o.family(
            &n("master_cpu_seconds_total"),
            "counter",
            "CPU time (user and system) the master used.",
        );
        o.sample(&n("master_cpu_seconds_total"), &[], c);
    }
    if let Some(f) = m.open_fds {
        o.family(
            &n("master_open_fds"),
            "gauge",
            "File descriptors the master has open.",
        );
        o.sample(&n("master_open_fds"), &[], f as f64);
    }

    // Gauges of the pools that exist now.
    o.family(
        &n("pool_desired_workers"),
        "gauge",
        "The count the pool is asked to keep.",
    );
    for p in &scrape.pools {
        o.sample(
            &n("pool_desired_workers"),
            &[("pool", &p.name)],
            p.desired as f64,
        );
    }
    o.family(&n("pool_workers"), "gauge", "Workers of the pool by state.");
    for p in &scrape.pools {
        let mut by = [0usize; 4];
        for w in &p.workers {
            if let Some(i) = WORKER_STATES.iter().position(|s| *s == w.state) {
                by[i] += 1;
            }
        }
        for (s, c) in WORKER_STATES.iter().zip(by) {
            o.sample(
                &n("pool_workers"),
                &[("pool", &p.name), ("state", s)],
                c as f64,
            );
        }
    }
    o.family(
        &n("pool_version"),
        "gauge",
        "The pool's current version (bumped by each upgrade).",
    );
    for p in &scrape.pools {
        o.sample(&n("pool_version"), &[("pool", &p.name)], p.version as f64);
    }
    o.family(
        &n("pool_upgrading"),
        "gauge",
        "1 while an upgrade of the pool runs.",
    );
    for p in &scrape.pools {
        o.sample(
            &n("pool_upgrading"),
            &[("pool", &p.name)],
            f64::from(u8::from(p.upgrading)),
        );
    }
    o.family(
        &n("pool_consecutive_failures"),
        "gauge",
        "Consecutive failed spawns (crashes before ack) of the pool.",
    );
    for p in &scrape.pools {
        o.sample(
            &n("pool_consecutive_failures"),
            &[("pool", &p.name)],
            f64::from(p.failures),
        );
    }
    o.family(
        &n("pool_respawn_backoff_seconds"),
        "gauge",
        "Time left before a respawn delayed by the backoff (0: none waits).",
    );
    for p in &scrape.pools {
        o.sample(
            &n("pool_respawn_backoff_seconds"),
            &[("pool", &p.name)],
            p.respawn_in_seconds.unwrap_or(0.0),
        );
    }

    // Counters of every pool counted since the start (removed ones too).
    let pools: Vec<(&String, &PoolCounters)> = counters.pools.iter().collect();
    let empty = PoolCounters::default();
    let mut all: Vec<(&str, &PoolCounters)> = pools.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    for p in &scrape.pools {
        if !counters.pools.contains_key(&p.name) {
            all.push((&p.name, &empty));
        }
    }
    all.sort_by(|a, b| a.0.cmp(b.0));

    o.family(&n("worker_spawns_total"), "counter", "Workers started.");
    for (name, c) in &all {
        o.sample(
            &n("worker_spawns_total"),
            &[("pool", name)],
            c.spawns as f64,
        );
    }
    o.family(&n("worker_spawn_failures_total"), "counter", "Workers that could not be started, by whose failure (worker: the program; master: fds, processes).");
    for (name, c) in &all {
        for side in ["worker", "master"] {
            let v = c.spawn_failures.get(side).copied().unwrap_or(0);
            o.sample(
                &n("worker_spawn_failures_total"),
                &[("pool", name), ("side", side)],
                v as f64,
            );
        }
    }
    o.family(&n("worker_exits_total"), "counter", "Worker exits by cause: crash_before_ack, crash_after_ack, stopped (after the master asked), killed_after_timeout (SIGKILL after stop_timeout).");
    for (name, c) in &all {
        for cause in EXIT_CAUSES {
            let v = c.exits.get(cause).copied().unwrap_or(0);
            o.sample(
                &n("worker_exits_total"),
                &[("pool", name), ("cause", cause)],
                v as f64,
            );
        }
    }
    o.family(
        &n("worker_stops_total"),
        "counter",
        "Stop signals the master sent, by reason.",
    );
    for (name, c) in &all {
        for (r, v) in &c.stops {
            o.sample(
                &n("worker_stops_total"),
                &[("pool", name), ("reason", r)],
                *v as f64,
            );
        }
    }
    o.family(
        &n("worker_kills_total"),
        "counter",
        "Workers killed with SIGKILL, by reason (stop_timeout, ack_timeout, watchdog, heartbeat).",
    );
    for (name, c) in &all {
        for (r, v) in &c.kills {
            o.sample(
                &n("worker_kills_total"),
                &[("pool", name), ("reason", r)],
                *v as f64,
            );
        }
    }
    o.family(
        &n("respawn_backoffs_total"),
        "counter",
        "Respawns delayed by the exponential backoff.",
    );
    for (name, c) in &all {
        o.sample(
            &n("respawn_backoffs_total"),
            &[("pool", name)],
            c.backoffs as f64,
        );
    }
    o.family(
        &n("respawn_backoff_last_seconds"),
        "gauge",
        "The last backoff delay chosen.",
    );
    for (name, c) in &all {
        o.sample(
            &n("respawn_backoff_last_seconds"),
            &[("pool", name)],
            c.backoff_seconds,
        );
    }
    o.family(
        &n("pool_gave_up_total"),
        "counter",
        "Times the pool stopped respawning after `retries` consecutive failures.",
    );
    for (name, c) in &all {
        o.sample(
            &n("pool_gave_up_total"),
            &[("pool", name)],
            c.gave_up as f64,
        );
    }
    o.family(
        &n("upgrades_total"),
        "counter",
        "Upgrades by outcome: started, done, abandoned, superseded.",
    );
    for (name, c) in &all {
        for out in UPGRADE_OUTCOMES {
            let v = c.upgrades.get(out).copied().unwrap_or(0);
            o.sample(
                &n("upgrades_total"),
                &[("pool", name), ("outcome", out)],
                v as f64,
            );
        }
    }
    o.family(
        &n("upgrade_duration_seconds"),
        "histogram",
        "How long upgrades took, by outcome (done, abandoned).",
    );
    for (name, c) in &all {
        for out in ["done", "abandoned"] {
            let h = c.upgrade_seconds.get(out).cloned().unwrap_or_default();
            o.histogram(
                &n("upgrade_duration_seconds"),
                &[("pool", name), ("outcome", out)],
                UPGRADE_BUCKETS,
                &h,
            );
        }
    }
    o.family(
        &n("worker_ack_duration_seconds"),
        "histogram",
        "Time from a worker's spawn to its ack.",
    );
    for (name, c) in &all {
        o.histogram(
            &n("worker_ack_duration_seconds"),
            &[("pool", name)],
            ACK_BUCKETS,
            &c.ack_seconds,
        );
    }

    o.family(
        &n("reloads_total"),
        "counter",
        "Configuration reloads by outcome (applied, refused).",
    );
    o.by_label(
        &n("reloads_total"),
        "outcome",
        &counters.reloads,
        &["applied", "refused"],
    );
    o.family(
        &n("watch_triggers_total"),
        "counter",
        "Watched file changes that triggered a roll or reload, by target (config or a pool).",
    );
    o.by_label(
        &n("watch_triggers_total"),
        "target",
        &counters.watch_triggers,
        &[],
    );
    o.family(
        &n("control_requests_total"),
        "counter",
        "Control socket requests by command (unknown: unparsable or unknown).",
    );
    o.by_label(
        &n("control_requests_total"),
        "command",
        &counters.control_requests,
        &[],
    );
    o.family(
        &n("reexecs_total"),
        "counter",
        "Re-execs of the master by outcome (done, refused).",
    );
    o.by_label(
        &n("reexecs_total"),
        "outcome",
        &counters.reexecs,
        &["done", "refused"],
    );
    o.family(
        &n("event_followers_dropped_total"),
        "counter",
        "`events -f` followers dropped because they did not read.",
    );
    o.sample(
        &n("event_followers_dropped_total"),
        &[],
        counters.followers_dropped as f64,
    );
    o.family(
        &n("metrics_scrapes_total"),
        "counter",
        "HTTP requests to the metrics listener, by status code (this one not yet counted).",
    );
    o.by_label(&n("metrics_scrapes_total"), "code", &counters.scrapes, &[]);

    // Per worker, from /proc at this scrape.
    let rss_name = n("worker_resident_memory_bytes");
    let cpu_name = n("worker_cpu_seconds_total");
    o.family(
        &n("worker_resident_memory_bytes"),
        "gauge",
        "A worker's resident set size (read from /proc at scrape time).",
    );
    let mut pid_s = String::new();
    let mut idx_s = String::new();
    let mut ver_s = String::new();
    for p in &scrape.pools {
        for w in &p.workers {
            let (Some(pid), Some(rss)) = (w.pid, w.rss_bytes) else {
                continue;
            };
            worker_labels(pid, w, &mut pid_s, &mut idx_s, &mut ver_s);
            o.sample(
                &rss_name,
                &[
                    ("pool", &p.name),
                    ("index", &idx_s),
                    ("pid", &pid_s),
                    ("version", &ver_s),
                ],
                rss as f64,
            );
        }
    }
    o.family(
        &n("worker_cpu_seconds_total"),
        "counter",
        "CPU time (user and system) a worker used (read from /proc at scrape time).",
    );
    for p in &scrape.pools {
        for w in &p.workers {
            let (Some(pid), Some(cpu)) = (w.pid, w.cpu_seconds) else {
                continue;
            };
            worker_labels(pid, w, &mut pid_s, &mut idx_s, &mut ver_s);
            o.sample(
                &cpu_name,
                &[
                    ("pool", &p.name),
                    ("index", &idx_s),
                    ("pid", &pid_s),
                    ("version", &ver_s),
                ],
                cpu,
            );
        }
    }
    o.s
}

fn worker_labels(
    pid: i32,
    w: &WorkerView,
    pid_s: &mut String,
    idx_s: &mut String,
    ver_s: &mut String,
) {
    pid_s.clear();
    idx_s.clear();
    ver_s.clear();
    let _ = write!(pid_s, "{pid}");
    let _ = write!(idx_s, "{}", w.index);
    let _ = write!(ver_s, "{}", w.version);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolEvent;
    use std::time::Duration;

    fn scrape() -> Scrape {
        Scrape {
            version: "0.1.0".into(),
            uptime_seconds: 12.5,
            master: ProcessView {
                pid: 1,
                rss_bytes: Some(4096),
                cpu_seconds: Some(0.25),
                open_fds: Some(9),
            },
            pools: vec![PoolView {
                name: "we\"b\\\n".into(),
                desired: 2,
                version: 3,
                workers: vec![
                    WorkerView {
                        pid: Some(100),
                        index: 0,
                        version: 3,
                        state: "acked",
                        age_seconds: 1.0,
                        rss_bytes: Some(1 << 20),
                        cpu_seconds: Some(0.5),
                    },
                    WorkerView {
                        pid: None,
                        index: 1,
                        version: 3,
                        state: "spawning",
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn every_family_has_help_and_type_once_and_its_samples_together() {
        let mut c = Counters::default();
        c.control_request("status");
        c.pool_event(
            "gone",
            &PoolEvent::Acked {
                pid: 5,
                index: 0,
                version: 1,
                after: Duration::from_millis(200),
            },
        );
        let text = render(&scrape(), &c);
        let mut seen = std::collections::BTreeSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(seen.insert(name.clone()), "{name} typed twice");
                current = name;
            } else if !line.starts_with('#') {
                let metric = line.split(['{', ' ']).next().unwrap();
                assert!(metric.starts_with("einhyrningsins_"), "{line}");
                assert!(
                    metric == current
                        || metric
                            .strip_prefix(current.as_str())
                            .is_some_and(|s| { ["_bucket", "_sum", "_count"].contains(&s) }),
                    "{line} outside its family {current}"
                );
            }
        }
        assert!(text.contains("# TYPE einhyrningsins_worker_exits_total counter"));
        assert!(text
            .contains("einhyrningsins_pool_workers{pool=\"we\\\"b\\\\\\n\",state=\"acked\"} 1\n"));
        assert!(text.contains(
            "einhyrningsins_pool_workers{pool=\"we\\\"b\\\\\\n\",state=\"spawning\"} 1\n"
        ));
        assert!(text.contains("einhyrningsins_worker_resident_memory_bytes{pool=\"we\\\"b\\\\\\n\",index=\"0\",pid=\"100\",version=\"3\"} 1048576\n"));
        assert!(text.contains("einhyrningsins_worker_cpu_seconds_total{pool=\"we\\\"b\\\\\\n\",index=\"0\",pid=\"100\",version=\"3\"} 0.5\n"));
        assert!(text.contains("einhyrningsins_control_requests_total{command=\"status\"} 1\n"));
        // Counters of a pool no longer running are still there.
        assert!(text.contains(
            "einhyrningsins_worker_ack_duration_seconds_bucket{pool=\"gone\",le=\"0.1\"} 0\n"
        ));
        assert!(text.contains(
            "einhyrningsins_worker_ack_duration_seconds_bucket{pool=\"gone\",le=\"0.25\"} 1\n"
        ));
        assert!(text.contains(
            "einhyrningsins_worker_ack_duration_seconds_bucket{pool=\"gone\",le=\"+Inf\"} 1\n"
        ));
        assert!(
            text.contains("einhyrningsins_worker_ack_duration_seconds_count{pool=\"gone\"} 1\n")
        );
        assert!(text.contains(
            "einhyrningsins_worker_exits_total{pool=\"gone\",cause=\"crash_before_ack\"} 0\n"
        ));
        assert!(text.contains("einhyrningsins_master_uptime_seconds 12.5\n"));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn values_are_written_as_prometheus_reads_them() {
        let mut s = String::new();
        for v in [
            0.0,
            3.0,
            0.25,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            1e20,
        ] {
            value(v, &mut s);
            s.push(' ');
        }
        assert_eq!(s, "0 3 0.25 +Inf -Inf NaN 100000000000000000000 ");
    }
}
