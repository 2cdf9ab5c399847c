//! `[metrics]`: where the master serves its Prometheus metrics (off by default).

use std::fmt;
// The address as a value (core's type, which std re-exports): parsing, no I/O.
use core::net::SocketAddr;
use std::path::PathBuf;

/// The metrics section.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MetricsConfig {
    /// `listen`: where GET /metrics is served; `None`: no listener at all.
    pub listen: Option<MetricsListen>,
}

/// A TCP address or a unix socket path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MetricsListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// Longest unix socket path the kernel takes (sun_path holds 108 bytes).
const MAX_UNIX_PATH: usize = 107;

impl MetricsListen {
    /// `"127.0.0.1:9464"`, `"[::1]:9464"`, or a path with a `/` (unix socket).
    pub fn parse(s: &str) -> Result<MetricsListen, String> {
        if s.contains('/') {
            if s.len() > MAX_UNIX_PATH {
                return Err(format!(
                    "unix socket path {s:?} is {} bytes; at most {MAX_UNIX_PATH}",
                    s.len()
                ));
            }
            return Ok(MetricsListen::Unix(PathBuf::from(s)));
        }
        s.parse::<SocketAddr>()
            .map(MetricsListen::Tcp)
            .map_err(|_| {
                format!(
                "{s:?} is neither HOST:PORT (an IP address and a port, e.g. \"127.0.0.1:9464\") \
                 nor a unix socket path (with a `/`)"
            )
            })
    }
}

impl fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsListen::Tcp(a) => write!(f, "{a}"),
            MetricsListen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_paths_parse_and_nonsense_is_refused() {
        assert_eq!(
            MetricsListen::parse("127.0.0.1:9464"),
            Ok(MetricsListen::Tcp("127.0.0.1:9464".parse().unwrap()))
        );
        assert!(matches!(
            MetricsListen::parse("[::1]:0"),
            Ok(MetricsListen::Tcp(_))
        ));
        assert_eq!(
            MetricsListen::parse("./m.sock"),
            Ok(MetricsListen::Unix("./m.sock".into()))
        );
        for bad in ["", "localhost:9464", "9464", "1.2.3.4:99999", "127.0.0.1"] {
            let e = MetricsListen::parse(bad).unwrap_err();
            assert!(e.contains("HOST:PORT"), "{bad}: {e}");
        }
        let long = format!("/{}", "x".repeat(200));
        assert!(MetricsListen::parse(&long).unwrap_err().contains("at most"));
    }

    #[test]
    fn a_file_sets_it_and_a_bad_value_names_key_and_line() {
        let c = crate::config::Config::from_toml_str(
            "[metrics]\nlisten = \"127.0.0.1:0\"\n[pools.a]\ncommand = [\"x\"]\n",
            None,
        )
        .unwrap();
        assert!(matches!(c.metrics.listen, Some(MetricsListen::Tcp(_))));
        let e = crate::config::Config::from_toml_str(
            "[metrics]\nlisten = \"nope\"\n[pools.a]\ncommand = [\"x\"]\n",
            None,
        )
        .unwrap_err();
        let e = &e.0[0];
        assert_eq!(e.key, "metrics.listen");
        assert_eq!(e.line, Some(2));
        let e = crate::config::Config::from_toml_str("[metrics]\nport = 1\n", None).unwrap_err();
        assert!(e.0.iter().any(|e| e.key == "metrics.port"), "{e:?}");
    }
}
