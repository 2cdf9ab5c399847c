//! What `einhyrningsins check` prints about a valid configuration.

use super::*;

impl Config {
    /// Human summary for `einhyrningsins check`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "control socket: {} (mode {:04o}{})",
            self.control.socket.display(),
            self.control.mode,
            if self.control.allow_uids.is_empty() {
                String::new()
            } else {
                format!(", also uids {:?}", self.control.allow_uids)
            }
        );
        let _ = writeln!(
            s,
            "log: {}{}; watch: {}",
            self.log.level.as_str().to_ascii_lowercase(),
            if self.log.syslog { " + syslog" } else { "" },
            if self.watch.enabled {
                format!("on (debounce {})", fmt_duration(self.watch.debounce))
            } else {
                "off".to_string()
            }
        );
        if let Some(l) = &self.metrics.listen {
            let _ = writeln!(s, "metrics: GET /metrics on {l}");
        }
        if let Some(f) = &self.log.file {
            let _ = writeln!(
                s,
                "log file: {} ({})",
                f.display(),
                output::describe_rotation(self.log.max_bytes, self.log.backups)
            );
        }
        if self.pools.is_empty() {
            let _ = writeln!(s, "no pools");
        }
        for (name, p) in &self.pools {
            let _ = writeln!(s, "\npool {name}:");
            let _ = writeln!(s, "  command:  {}", shell_words(&p.command));
            // What the worker really runs, once {fd:N} is its fd number
            // (known now for the systemd protocol, at spawn for einhorn's).
            if let Some(argv) = placeholders::shown_argv(p, None) {
                let _ = writeln!(s, "  argv:     {}", shell_words(&argv));
            }
            let _ = writeln!(s, "  count:    {}", p.count);
            if let Some(cwd) = &p.cwd {
                let _ = writeln!(s, "  cwd:      {}", cwd.display());
            }
            if !p.env.is_empty() {
                let env: Vec<String> = p
                    .env
                    .iter()
                    .map(|(k, v)| shell_words(&[format!("{k}={v}")]))
                    .collect();
                let _ = writeln!(s, "  env:      {}", env.join(" "));
            }
            if !p.drop_env.is_empty() {
                let _ = writeln!(s, "  drop_env: {}", p.drop_env.join(" "));
            }
            if !p.watch.is_empty() {
                let w: Vec<String> = p.watch.iter().map(|w| w.display().to_string()).collect();
                let _ = writeln!(s, "  watch:    {}", w.join(" "));
            }
            if p.binds.is_empty() {
                let _ = writeln!(s, "  binds:    none");
            } else {
                let b: Vec<String> = p
                    .binds
                    .iter()
                    .map(|b| format!("{} ({})", b.raw, b.mode_text()))
                    .collect();
                let _ = writeln!(s, "  binds:    {}", b.join("  "));
            }
            let ack = match p.ack {
                AckMode::Timer => format!("timer ({})", fmt_duration(p.ack_timer)),
                AckMode::Manual => format!("manual (within {})", fmt_duration(p.ack_timeout)),
                AckMode::Notify => format!(
                    "notify (READY=1 within {}{})",
                    fmt_duration(p.ack_timeout),
                    p.watchdog
                        .map_or(String::new(), |w| format!(", watchdog {}", fmt_duration(w)))
                ),
            };
            let _ = writeln!(s, "  ack:      {ack}");
            let surge = match p.max_surge {
                Some(n) => n.to_string(),
                None => "count".to_string(),
            };
            let _ = writeln!(
                s,
                "  upgrade:  {} (max_unacked {}, max_surge {surge})",
                match p.upgrade {
                    UpgradeStrategy::Smooth => "smooth",
                    UpgradeStrategy::Fleet => "fleet",
                },
                p.max_unacked
            );
            let _ = writeln!(
                s,
                "  stop:     {} to the {} then SIGKILL to its process group after {}",
                signal_name(p.stop_signal),
                if p.stop_group {
                    "worker's process group"
                } else {
                    "worker"
                },
                fmt_duration(p.stop_timeout)
            );
            if !p.identity.is_empty() {
                let _ = writeln!(s, "  runs as:  {}", p.identity.describe());
            }
            if !p.output.is_default() {
                let _ = writeln!(s, "  output:   {}", p.output.describe());
            }
        }
        s
    }
}

/// An argv as one line, quoting the words a shell would split or mangle.
fn shell_words(argv: &[String]) -> String {
    let words: Vec<String> = argv
        .iter()
        .map(|a| {
            if a.is_empty() || a.chars().any(|c| c.is_whitespace() || c == '"') {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect();
    words.join(" ")
}
