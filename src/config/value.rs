//! Value parsers shared by the TOML file and the command line.

use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::{AckMode, SocketProtocol, UpgradeStrategy};

// ---------------------------------------------------------------------------
// Value parsers shared with the command line

/// The longest duration any setting takes: one week. Every timer the master
/// arms is `now + setting`, so an absurd value must be refused where it is
/// written, with its key, not overflow at the first deadline.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Parse a duration: `"500ms"`, `"2s"`, `"1m"`, `"1h"`, `"1.5s"`, `"1m30s"`, or a
/// bare number of seconds (`"2"`, `"0.5"`); at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return secs_to_duration(secs);
    }
    let d = humantime::parse_duration(t).map_err(|e| {
        format!("{s:?} is not a duration ({e}); write e.g. \"500ms\", \"2s\", \"1m\" or a number of seconds")
    })?;
    bounded(d, s)
}

pub(super) fn secs_to_duration(secs: f64) -> Result<Duration, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!(
            "{secs} is not a duration: expected a non-negative number of seconds"
        ));
    }
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(too_long(&secs.to_string()));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{secs} seconds: {e}"))
}

/// `d` if it is at most [`MAX_DURATION`].
pub(super) fn bounded(d: Duration, written: &str) -> Result<Duration, String> {
    if d > MAX_DURATION {
        return Err(too_long(written.trim()));
    }
    Ok(d)
}

fn too_long(written: &str) -> String {
    format!("{written:?} is longer than the maximum of 7 days (604800 seconds)")
}

/// Parse a size in bytes: `"512MiB"`, `"1G"` (powers of 1024 with or without
/// the `i`), `"64k"`, or a bare number of bytes; more than 0.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (write e.g. \"512MiB\", \"2G\" or bytes)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "{s:?}: unknown size unit {other:?} (use k, M, G or T)"
            ))
        }
    };
    let bytes = n * mult as f64;
    if !(1.0..1e18).contains(&bytes) {
        return Err(format!("{s:?} is not a size between 1 byte and 1 EiB"));
    }
    Ok(bytes as u64)
}

/// Parse a signal: `"USR2"`, `"SIGUSR2"`, `"usr2"` or a number (`"12"`); kill(1)'s
/// spelling with a leading dash (`"-USR1"`, `"-9"`) is accepted too, since that is
/// what an operator types after `signal`.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let t = s.trim();
    let t = t.strip_prefix('-').unwrap_or(t);
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("{n} is not a signal number"));
    }
    let up = t.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    Signal::from_str(&name)
        .map_err(|_| format!("unknown signal {s:?} (write e.g. \"USR2\", \"SIGTERM\" or a number)"))
}

/// Parse an ack mode: `"timer"` or `"manual"`.
pub fn parse_ack_mode(s: &str) -> Result<AckMode, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "timer" => Ok(AckMode::Timer),
        "manual" => Ok(AckMode::Manual),
        "notify" => Ok(AckMode::Notify),
        _ => Err(format!(
            "unknown ack mode {s:?} (expected \"timer\", \"manual\" or \"notify\")"
        )),
    }
}

/// Parse `socket_protocol`: a non-empty list of `"einhorn"` and `"systemd"`.
pub fn parse_socket_protocol(list: &[String]) -> Result<SocketProtocol, String> {
    let mut sp = SocketProtocol {
        einhorn: false,
        systemd: false,
    };
    for s in list {
        match s.trim().to_ascii_lowercase().as_str() {
            "einhorn" => sp.einhorn = true,
            "systemd" => sp.systemd = true,
            _ => {
                return Err(format!(
                    "unknown socket protocol {s:?} (expected \"einhorn\" and/or \"systemd\")"
                ))
            }
        }
    }
    if !sp.einhorn && !sp.systemd {
        return Err("must name at least one of \"einhorn\" and \"systemd\"".into());
    }
    Ok(sp)
}

/// Parse an upgrade strategy: `"smooth"` or `"fleet"`.
pub fn parse_upgrade(s: &str) -> Result<UpgradeStrategy, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "smooth" => Ok(UpgradeStrategy::Smooth),
        "fleet" => Ok(UpgradeStrategy::Fleet),
        _ => Err(format!(
            "unknown upgrade strategy {s:?} (expected \"smooth\" or \"fleet\")"
        )),
    }
}

/// Parse a log level: error|warn|info|debug|trace|off.
pub fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    log::LevelFilter::from_str(s.trim()).map_err(|_| {
        format!("unknown log level {s:?} (expected error, warn, info, debug, trace or off)")
    })
}

/// Parse a file mode written as octal text (`"0600"`, `"600"`, `"0o600"`).
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(m),
        _ => Err(format!(
            "{s:?} is not an octal file mode (write e.g. \"0600\")"
        )),
    }
}

/// Whether `name` is a valid pool name: `[A-Za-z0-9_.-]+`.
pub fn valid_pool_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The einhorn name of a signal without `SIG` (`USR2`), for summaries.
pub(super) fn signal_name(s: Signal) -> &'static str {
    let n = s.as_str();
    n.strip_prefix("SIG").unwrap_or(n)
}

pub(super) fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Signals as their names (`"SIGUSR2"`) in serialized state.
pub mod signal_serde {
    use nix::sys::signal::Signal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &Signal, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Signal, D::Error> {
        let name = String::deserialize(de)?;
        super::parse_signal(&name).map_err(serde::de::Error::custom)
    }
}

/// Log levels as their names (`"info"`) in serialized state.
pub mod level_serde {
    use log::LevelFilter;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(l: &LevelFilter, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(l.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<LevelFilter, D::Error> {
        let name = String::deserialize(de)?;
        super::parse_level(&name).map_err(serde::de::Error::custom)
    }
}
