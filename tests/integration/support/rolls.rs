//! Configs and waits shared by the reload and file-watching tests: pools on
//! short timers, and "this pool rolled to a new version".

use std::time::Duration;

use super::master::Master;
use super::wait::wait_for;

/// A `[control]` section and a `[watch]` section with this debounce.
pub fn watch_head(debounce: &str) -> String {
    format!("[control]\nsocket = \"{{sock}}\"\n[watch]\ndebounce = \"{debounce}\"\n")
}

pub fn pool_toml(name: &str, command: &str, count: usize, extra: &str) -> String {
    format!(
        "[pools.{name}]\ncommand = [{command}]\ncount = {count}\nack_timer = \"50ms\"\n\
         stop_timeout = \"5s\"\n{extra}\n"
    )
}

impl Master {
    /// Wait until `pool` is at `version` with exactly `n` acked workers, none
    /// of them in `old`; the new pids.
    pub fn wait_rolled(&self, pool: &str, version: u64, n: usize, old: &[i32]) -> Vec<i32> {
        wait_for(
            format!(
                "pool {pool} at version {version} with {n} new acked workers (log {})",
                self.log.display()
            ),
            Duration::from_secs(30),
            || {
                let st = self.state();
                let p = &st["pools"][pool];
                if p["version"].as_u64()? != version {
                    return None;
                }
                let ws = p["workers"].as_array()?;
                let acked: Vec<i32> = ws
                    .iter()
                    .filter(|w| w["state"] == "acked" && w["version"].as_u64() == Some(version))
                    .filter_map(|w| w["pid"].as_i64().map(|p| p as i32))
                    .collect();
                (ws.len() == n && acked.len() == n && acked.iter().all(|p| !old.contains(p))).then(
                    || {
                        let mut v = acked;
                        v.sort_unstable();
                        v
                    },
                )
            },
        )
    }
}
