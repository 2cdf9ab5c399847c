//! Address specs as written in `-b` and `binds`: `127.0.0.1:8080,r,n`,
//! `[::1]:80`, `unix:/run/app.sock`, with einhorn's options. Parsing only; the
//! sockets themselves are made by `crate::bind`.

use std::path::PathBuf;

/// Which address families a host name may resolve to (`-4` / `-6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Family {
    #[default]
    Any,
    V4Only,
    V6Only,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BindAddr {
    /// Host name or literal address, and port.
    Inet { host: String, port: u16 },
    /// Unix-domain stream socket path.
    Unix(PathBuf),
}

/// One `-b` / `binds` entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BindSpec {
    /// The text as written, for messages.
    pub raw: String,
    pub addr: BindAddr,
    pub reuseaddr: bool,
    pub reuseport: bool,
    /// O_NONBLOCK on the listener, shared by every worker (the default, as
    /// einhorn on Ruby 3 hands out); `b`/`blocking` turns it off.
    pub nonblock: bool,
    /// `nodelay`: TCP_NODELAY on the listener, which Linux copies to every
    /// accepted connection (for servers that never set it themselves).
    /// (Optional in a re-exec state: format 1 predates it.)
    #[serde(default)]
    pub nodelay: bool,
    pub family: Family,
    pub backlog: Option<i32>,
    /// File mode for unix sockets.
    pub mode: Option<u32>,
    /// `name=NAME`: matched against systemd's LISTEN_FDNAMES when the socket is
    /// inherited, and passed in a systemd-protocol worker's LISTEN_FDNAMES.
    pub name: Option<String>,
}

/// A bind spec that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindSpecError {
    #[error("bind {spec:?}: expected HOST:PORT, [IPV6]:PORT or unix:PATH")]
    NoPort { spec: String },
    #[error("bind {spec:?}: {port:?} is not a port number (0-65535)")]
    BadPort { spec: String, port: String },
    #[error("bind {spec:?}: empty host")]
    EmptyHost { spec: String },
    #[error("bind {spec:?}: unknown option {option:?} (known: r/so_reuseaddr, n/o_nonblock, b/blocking, nodelay/tcp_nodelay, reuseport/so_reuseport, backlog=N, mode=OCTAL, name=NAME)")]
    UnknownOption { spec: String, option: String },
    #[error("bind {spec:?}: both `n` (non-blocking) and `b` (blocking) given")]
    BlockingConflict { spec: String },
    #[error("bind {spec:?}: `nodelay` is a TCP option; this is a unix socket")]
    NodelayOnUnix { spec: String },
    #[error("bind {spec:?}: bad value in {option:?}")]
    BadValue { spec: String, option: String },
}

impl BindSpec {
    /// Parse `ADDR[,OPT...]`.
    ///
    /// ADDR is `host:port`, `[v6addr]:port`, or `unix:/path` (a bare absolute
    /// path also means a unix socket). OPT is einhorn's `r`/`so_reuseaddr`,
    /// `n`/`o_nonblock`, `reuseport`/`so_reuseport`, plus `backlog=N` and
    /// `mode=OCTAL` (unix sockets).
    pub fn parse(spec: &str) -> Result<BindSpec, BindSpecError> {
        let spec_s = spec.trim();
        let mut parts = spec_s.split(',');
        let addr_s = parts.next().unwrap_or("").trim();
        let addr = parse_addr(spec_s, addr_s)?;
        let mut out = BindSpec {
            raw: spec_s.to_string(),
            addr,
            reuseaddr: false,
            reuseport: false,
            nonblock: true,
            nodelay: false,
            family: Family::Any,
            backlog: None,
            mode: None,
            name: None,
        };
        let (mut said_n, mut said_b) = (false, false);
        for opt in parts {
            let opt = opt.trim();
            let bad = || BindSpecError::BadValue {
                spec: spec_s.to_string(),
                option: opt.to_string(),
            };
            // einhorn lower-cases option names (`,R` and `,SO_REUSEADDR` work
            // there), so only a `name=` value keeps its case.
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v)),
                None => (opt.to_ascii_lowercase(), None),
            };
            match (key.as_str(), value) {
                ("", None) => {}
                ("r" | "so_reuseaddr", None) => out.reuseaddr = true,
                ("n" | "o_nonblock", None) => said_n = true,
                ("b" | "blocking", None) => said_b = true,
                ("nodelay" | "tcp_nodelay", None) => out.nodelay = true,
                ("reuseport" | "so_reuseport", None) => out.reuseport = true,
                ("backlog", Some(v)) => {
                    out.backlog = Some(v.trim().parse().ok().filter(|b| *b > 0).ok_or_else(bad)?)
                }
                ("mode", Some(v)) => {
                    out.mode = Some(u32::from_str_radix(v.trim(), 8).map_err(|_| bad())?)
                }
                // systemd's FileDescriptorName= rules: printable, no ':'.
                ("name", Some(v)) => {
                    let v = v.trim();
                    let ok = !v.is_empty()
                        && v.len() <= 255
                        && v.chars().all(|c| c.is_ascii_graphic() && c != ':');
                    out.name = Some(Some(v.to_string()).filter(|_| ok).ok_or_else(bad)?);
                }
                _ => {
                    return Err(BindSpecError::UnknownOption {
                        spec: spec_s.to_string(),
                        option: opt.to_string(),
                    })
                }
            }
        }
        if said_n && said_b {
            return Err(BindSpecError::BlockingConflict {
                spec: spec_s.to_string(),
            });
        }
        out.nonblock = !said_b;
        if out.nodelay && matches!(out.addr, BindAddr::Unix(_)) {
            return Err(BindSpecError::NodelayOnUnix {
                spec: spec_s.to_string(),
            });
        }
        Ok(out)
    }

    /// What a worker gets, for `check` and the docs: `non-blocking`,
    /// `blocking`, plus `TCP_NODELAY`.
    pub fn mode_text(&self) -> String {
        let mut s = String::from(if self.nonblock {
            "non-blocking"
        } else {
            "blocking"
        });
        if self.nodelay {
            s.push_str(", TCP_NODELAY");
        }
        s
    }

    /// The address part as written, for messages and for comparing binds.
    pub fn addr_text(&self) -> String {
        match &self.addr {
            BindAddr::Inet { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            BindAddr::Inet { host, port } => format!("{host}:{port}"),
            BindAddr::Unix(p) => format!("unix:{}", p.display()),
        }
    }
}

fn parse_addr(spec: &str, addr: &str) -> Result<BindAddr, BindSpecError> {
    if let Some(path) = addr.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(BindSpecError::NoPort {
                spec: spec.to_string(),
            });
        }
        return Ok(BindAddr::Unix(PathBuf::from(path)));
    }
    if addr.starts_with('/') {
        return Ok(BindAddr::Unix(PathBuf::from(addr)));
    }
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(|| BindSpecError::NoPort {
            spec: spec.to_string(),
        })?;
        let p = after
            .strip_prefix(':')
            .ok_or_else(|| BindSpecError::NoPort {
                spec: spec.to_string(),
            })?;
        (h, p)
    } else {
        addr.rsplit_once(':').ok_or_else(|| BindSpecError::NoPort {
            spec: spec.to_string(),
        })?
    };
    if host.is_empty() {
        return Err(BindSpecError::EmptyHost {
            spec: spec.to_string(),
        });
    }
    let port = port.parse::<u16>().map_err(|_| BindSpecError::BadPort {
        spec: spec.to_string(),
        port: port.to_string(),
    })?;
    Ok(BindAddr::Inet {
        host: host.to_string(),
        port,
    })
}

#[cfg(test)]
mod spec_tests {
    use super::*;

    #[test]
    fn parses_einhorn_forms() -> Result<(), BindSpecError> {
        let s = BindSpec::parse("127.0.0.1:8080,r,n")?;
        assert_eq!(
            s.addr,
            BindAddr::Inet {
                host: "127.0.0.1".into(),
                port: 8080
            }
        );
        assert!(s.reuseaddr && s.nonblock && !s.reuseport);
        let s = BindSpec::parse("[::1]:80,so_reuseaddr,o_nonblock,so_reuseport")?;
        assert_eq!(
            s.addr,
            BindAddr::Inet {
                host: "::1".into(),
                port: 80
            }
        );
        assert!(s.reuseaddr && s.nonblock && s.reuseport);
        assert_eq!(s.addr_text(), "[::1]:80");
        let s = BindSpec::parse("unix:/tmp/x.sock,mode=660,backlog=64")?;
        assert_eq!(s.addr, BindAddr::Unix("/tmp/x.sock".into()));
        assert_eq!((s.mode, s.backlog), (Some(0o660), Some(64)));
        assert_eq!(BindSpec::parse("localhost:0")?.addr_text(), "localhost:0");
        // einhorn lower-cases option names before matching them.
        let s = BindSpec::parse("127.0.0.1:1,R,N")?;
        assert!(s.reuseaddr && s.nonblock);
        let s = BindSpec::parse("127.0.0.1:1,SO_REUSEADDR,O_NonBlock,Backlog=9,NAME=Web")?;
        assert!(s.reuseaddr && s.nonblock);
        assert_eq!((s.backlog, s.name.as_deref()), (Some(9), Some("Web")));
        Ok(())
    }

    #[test]
    fn listeners_are_non_blocking_unless_asked_and_nodelay_is_tcp_only() -> Result<(), BindSpecError>
    {
        // Without an option, as with einhorn's `n`: non-blocking.
        for (spec, nonblock, nodelay) in [
            ("127.0.0.1:1", true, false),
            ("127.0.0.1:1,r", true, false),
            ("127.0.0.1:1,r,n", true, false),
            ("127.0.0.1:1,b", false, false),
            ("127.0.0.1:1,r,BLOCKING", false, false),
            ("127.0.0.1:1,nodelay", true, true),
            ("[::1]:1,tcp_nodelay,b", false, true),
            ("unix:/tmp/x.sock,b", false, false),
        ] {
            let s = BindSpec::parse(spec)?;
            assert_eq!((s.nonblock, s.nodelay), (nonblock, nodelay), "{spec}");
        }
        assert_eq!(BindSpec::parse("h:1")?.mode_text(), "non-blocking");
        assert_eq!(
            BindSpec::parse("h:1,b,nodelay")?.mode_text(),
            "blocking, TCP_NODELAY"
        );
        assert!(matches!(
            BindSpec::parse("h:1,n,b"),
            Err(BindSpecError::BlockingConflict { .. })
        ));
        assert!(matches!(
            BindSpec::parse("unix:/tmp/x.sock,nodelay"),
            Err(BindSpecError::NodelayOnUnix { .. })
        ));
        Ok(())
    }

    #[test]
    fn rejects_bad_specs_naming_them() {
        for bad in [
            "8080",
            "127.0.0.1:http",
            ":80",
            "[::1]80",
            "1.2.3.4:70000",
            "h:1,x",
            "h:1,backlog=0",
            "h:1,n,b",
            "unix:/s,nodelay",
            "unix:",
        ] {
            let e = match BindSpec::parse(bad) {
                Err(e) => e.to_string(),
                Ok(s) => panic!("{bad} parsed as {s:?}"),
            };
            let addr = bad.split(',').next().unwrap_or(bad);
            assert!(e.contains(addr), "{bad}: {e}");
        }
    }
}
