//! A pool's identity and limits as written in the file: `user`, `group`,
//! `umask`, `nice`, `rlimits`, `oom_score_adj`. Pure: names are kept as
//! written; whether they exist, and whether this master may grant what is
//! asked, is decided at start, by `check` and on reload (src/identity.rs),
//! which turn this into the ids and values a spawn applies.

use std::collections::BTreeMap;

/// A user or group: by name, or by numeric id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Principal {
    Name(String),
    Id(u32),
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Name(n) => write!(f, "{n}"),
            Principal::Id(i) => write!(f, "{i}"),
        }
    }
}

/// The resource limits a pool may set (setrlimit(2) names, lower case).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Resource {
    As,
    Core,
    Cpu,
    Data,
    Fsize,
    Memlock,
    Nofile,
    Nproc,
    Stack,
}

impl Resource {
    pub const ALL: [Resource; 9] = [
        Resource::As,
        Resource::Core,
        Resource::Cpu,
        Resource::Data,
        Resource::Fsize,
        Resource::Memlock,
        Resource::Nofile,
        Resource::Nproc,
        Resource::Stack,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Resource::As => "as",
            Resource::Core => "core",
            Resource::Cpu => "cpu",
            Resource::Data => "data",
            Resource::Fsize => "fsize",
            Resource::Memlock => "memlock",
            Resource::Nofile => "nofile",
            Resource::Nproc => "nproc",
            Resource::Stack => "stack",
        }
    }

    pub fn from_name(s: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.name() == s)
    }

    /// Counted in bytes (sizes like "64MiB" are accepted).
    pub fn is_bytes(self) -> bool {
        matches!(
            self,
            Resource::As
                | Resource::Core
                | Resource::Data
                | Resource::Fsize
                | Resource::Memlock
                | Resource::Stack
        )
    }

    /// The names, for messages.
    pub fn names() -> String {
        Resource::ALL.map(Resource::name).join(", ")
    }
}

/// A soft and a hard limit; `None` is unlimited (RLIM_INFINITY).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Limit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = |x: Option<u64>| x.map_or("unlimited".to_string(), |n| n.to_string());
        if self.soft == self.hard {
            write!(f, "{}", v(self.soft))
        } else {
            write!(f, "{}:{}", v(self.soft), v(self.hard))
        }
    }
}

/// One limit value: a number (or, for byte limits, a size such as "64MiB"),
/// `"unlimited"`/`"infinity"`, or `"SOFT:HARD"` with either of those on each
/// side. A single value sets both, as systemd's `LimitNOFILE=` does.
pub fn parse_limit(resource: Resource, text: &str) -> Result<Limit, String> {
    let one = |s: &str| -> Result<Option<u64>, String> {
        let s = s.trim();
        match s {
            "unlimited" | "infinity" => Ok(None),
            _ => {
                if let Ok(n) = s.parse::<u64>() {
                    return Ok(Some(n));
                }
                if resource.is_bytes() {
                    return super::parse_bytes(s).map(Some);
                }
                Err(format!(
                    "{s:?} is not a number or \"unlimited\" (rlimits.{})",
                    resource.name()
                ))
            }
        }
    };
    let limit = match text.split_once(':') {
        Some((s, h)) => Limit {
            soft: one(s)?,
            hard: one(h)?,
        },
        None => {
            let v = one(text)?;
            Limit { soft: v, hard: v }
        }
    };
    // Unlimited is the largest value.
    let above = match (limit.soft, limit.hard) {
        (None, Some(_)) => true,
        (Some(s), Some(h)) => s > h,
        _ => false,
    };
    if above {
        return Err(format!(
            "soft limit {} is above the hard limit {} (rlimits.{})",
            limit.soft.map_or("unlimited".into(), |n| n.to_string()),
            limit.hard.map_or("unlimited".into(), |n| n.to_string()),
            resource.name()
        ));
    }
    Ok(limit)
}

/// What a pool's workers run as, and with which limits. Empty: as the master.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub user: Option<Principal>,
    /// Default: the user's primary group.
    pub group: Option<Principal>,
    pub umask: Option<u32>,
    /// -20 (most favoured) to 19.
    pub nice: Option<i32>,
    pub rlimits: BTreeMap<Resource, Limit>,
    /// -1000 (never OOM-killed) to 1000 (first to go).
    pub oom_score_adj: Option<i32>,
}

impl Identity {
    pub fn is_empty(&self) -> bool {
        *self == Identity::default()
    }

    /// One line for `check` and `status`: `user www-data, umask 0027, nofile 65536`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(u) = &self.user {
            parts.push(format!("user {u}"));
        }
        if let Some(g) = &self.group {
            parts.push(format!("group {g}"));
        }
        if let Some(m) = self.umask {
            parts.push(format!("umask {m:04o}"));
        }
        if let Some(n) = self.nice {
            parts.push(format!("nice {n}"));
        }
        for (r, l) in &self.rlimits {
            parts.push(format!("{} {l}", r.name()));
        }
        if let Some(o) = self.oom_score_adj {
            parts.push(format!("oom_score_adj {o}"));
        }
        parts.join(", ")
    }
}

/// A user or group name as written: a name, or all digits for an id.
pub fn parse_principal(text: &str) -> Result<Principal, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("is empty".into());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<u32>()
            .map(Principal::Id)
            .map_err(|_| format!("{t} is not a valid id"));
    }
    if t.contains(|c: char| c.is_whitespace() || c == ':' || c == '/') {
        return Err(format!("{t:?} is not a user or group name"));
    }
    Ok(Principal::Name(t.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_take_numbers_sizes_unlimited_and_soft_hard_pairs() {
        let l = |r, s| parse_limit(r, s);
        assert_eq!(
            l(Resource::Nofile, "65536"),
            Ok(Limit {
                soft: Some(65536),
                hard: Some(65536)
            })
        );
        assert_eq!(
            l(Resource::Nofile, "1024:4096"),
            Ok(Limit {
                soft: Some(1024),
                hard: Some(4096)
            })
        );
        assert_eq!(
            l(Resource::Core, "unlimited"),
            Ok(Limit {
                soft: None,
                hard: None
            })
        );
        assert_eq!(
            l(Resource::Memlock, "64MiB"),
            Ok(Limit {
                soft: Some(64 << 20),
                hard: Some(64 << 20)
            })
        );
        assert_eq!(
            l(Resource::Core, "0:infinity"),
            Ok(Limit {
                soft: Some(0),
                hard: None
            })
        );
        // Sizes only for byte limits; soft above hard refused.
        assert!(l(Resource::Nofile, "64MiB").is_err());
        assert!(l(Resource::Nofile, "4096:1024").is_err());
        assert!(l(Resource::Nofile, "unlimited:1024").is_err());
        assert!(l(Resource::Nproc, "lots").is_err());
    }

    #[test]
    fn principals_are_names_or_ids() {
        assert_eq!(
            parse_principal("www-data"),
            Ok(Principal::Name("www-data".into()))
        );
        assert_eq!(parse_principal("33"), Ok(Principal::Id(33)));
        assert!(parse_principal("").is_err());
        assert!(parse_principal("a b").is_err());
        assert!(parse_principal("99999999999").is_err());
    }

    #[test]
    fn describe_lists_what_is_set() {
        let mut id = Identity {
            user: Some(Principal::Name("www-data".into())),
            umask: Some(0o027),
            ..Identity::default()
        };
        id.rlimits.insert(
            Resource::Nofile,
            Limit {
                soft: Some(1024),
                hard: Some(4096),
            },
        );
        assert_eq!(id.describe(), "user www-data, umask 0027, nofile 1024:4096");
        assert!(Identity::default().is_empty());
    }
}
