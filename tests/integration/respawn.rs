//! Workers that die unasked are respawned with exponential backoff, and a pool
//! that keeps failing gives up (BRIEF §5).

use std::time::Duration;

use crate::support::*;

#[test]
fn crashing_workers_respawn_with_growing_backoff_then_the_pool_gives_up() {
    let m = MasterBuilder::config(
        r#"
[control]
socket = "{sock}"
[pools.crash]
command = ["{worker}", "--exit-after-ms", "20", "--exit-code", "3"]
ack_timer = "10s"
respawn_delay = "200ms"
retries = 4
"#,
    )
    .start();
    m.wait_state("pool crash to give up", Duration::from_secs(20), |st| {
        (st["pools"]["crash"]["gave_up"] == true).then_some(())
    });
    // The history of the backoff is only in the log, and so is the operator's
    // warning that the pool gave up.
    // `retries = 4`: four failed attempts, then the pool gives up.
    let log = m.log_text();
    assert!(
        log.contains("pool crash: giving up after 4 consecutive failed spawns (retries = 4)"),
        "{log}"
    );
    for (delay, n) in [("200.0ms", 1), ("300.0ms", 2), ("450.0ms", 3)] {
        assert!(
            log.contains(&format!(
                "pool crash: respawning in {delay} ({n} consecutive failure(s))"
            )),
            "{log}"
        );
    }
    let spawned = log_times(&log, "pool crash: spawned worker pid");
    let died = log_times(&log, "died unexpectedly: exit status 3, before it acked");
    assert_eq!((spawned.len(), died.len()), (4, 4), "{log}");
    // Each respawn waited at least its backoff after the death (timestamps are
    // whole milliseconds), and the waits grow.
    let gaps: Vec<u64> = (0..3).map(|i| spawned[i + 1] - died[i]).collect();
    for (gap, min) in gaps.iter().zip([200, 300, 450]) {
        assert!(
            *gap + 1 >= min,
            "respawn after {gap}ms, backoff {min}ms: {gaps:?}"
        );
    }
    assert!(gaps[2] > gaps[0], "{gaps:?}");
    let st = m.state();
    let pool = &st["pools"]["crash"];
    assert_eq!(pool["gave_up"], true);
    assert_eq!(pool["consecutive_failures"], 4);
    assert!(pool["workers"].as_array().expect("workers").is_empty());
    assert!(
        pool["state"].as_str().unwrap_or("").contains("GAVE UP"),
        "{pool}"
    );
}

/// Timestamps (ms since midnight UTC) of log lines containing `needle`, in order.
/// The master's log lines start with an RFC 3339 timestamp with milliseconds.
fn log_times(log: &str, needle: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            let ts = l.split_whitespace().next()?;
            let time = ts.split('T').nth(1)?.trim_end_matches('Z');
            let mut it = time.split(':');
            let h: u64 = it.next()?.parse().ok()?;
            let m: u64 = it.next()?.parse().ok()?;
            let s: f64 = it.next()?.parse().ok()?;
            Some((h * 3600 + m * 60) * 1000 + (s * 1000.0).round() as u64)
        })
        .collect()
}
