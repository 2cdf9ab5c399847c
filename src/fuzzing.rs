//! Entry points for the fuzz targets in fuzz/ (cargo-fuzz, nightly), built
//! only with `--features fuzzing` or in tests: the crate's modules are
//! private, so the targets reach them through these three functions, and
//! `cargo test` replays the seed corpus of each one (fuzz/corpus/) through
//! the same functions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, UpgradeStrategy};
use crate::control::protocol::{decode, decode_reply, encode_request, Command};
use crate::pool::{Action, Pool, Shutdown};

/// One control-socket line: decoded, parsed as a command, and, when it
/// decodes, encoded again and decoded to the same request.
pub fn control_line(data: &[u8]) {
    let _ = decode_reply(data);
    let Ok(req) = decode(data) else { return };
    let _ = Command::parse(&req, |p| p == "web");
    let bytes = encode_request(&req);
    let again = match decode(&bytes[..bytes.len().saturating_sub(1)]) {
        Ok(r) => r,
        Err(e) => panic!("{req:?} encoded as {bytes:?} does not decode: {e}"),
    };
    assert_eq!(
        (&again.command, &again.args, again.pid, &again.pool),
        (&req.command, &req.args, req.pid, &req.pool),
        "a request changed through encode and decode"
    );
}

/// One configuration file: parsed; if accepted, every pool is started,
/// forked, timed out far into the future, upgraded and shut down.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml_str(text, None) else {
        return;
    };
    for spec in config.pools.into_values() {
        if spec.count > 10_000 {
            continue; // accepted up to 100,000; the walk would only be slow
        }
        drive(Pool::new(Arc::new(spec)));
    }
}

fn drive(mut pool: Pool) {
    let mut now = Instant::now();
    let mut pid = 1;
    let mut fork = |pool: &mut Pool, actions: Vec<Action>, now: Instant| {
        for a in actions {
            if let Action::Spawn { worker, .. } = a {
                if pool.wants_spawn(worker) {
                    pid += 1;
                    let _ = pool.spawned(worker, Ok(pid), now);
                }
            }
        }
    };
    let a = pool.start(now);
    fork(&mut pool, a, now);
    for step in [
        Duration::from_millis(1),
        Duration::from_secs(3600),
        Duration::MAX,
    ] {
        now = crate::pool::later(now, step);
        let a = pool.tick(now);
        fork(&mut pool, a, now);
    }
    if let Ok((_, a)) = pool.upgrade(Some(UpgradeStrategy::Smooth), None, now) {
        fork(&mut pool, a, now);
    }
    let _ = pool.shutdown(Shutdown::Graceful, now);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every seed of a target's corpus, through the target's function.
    fn replay(target: &str, f: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            f(&std::fs::read(&path).unwrap());
            n += 1;
        }
        assert!(n > 0, "no seed in {}", dir.display());
    }

    #[test]
    fn the_control_line_corpus_replays() {
        replay("control_line", super::control_line);
    }

    #[test]
    fn the_config_file_corpus_replays() {
        replay("config_file", super::config_file);
    }
}
