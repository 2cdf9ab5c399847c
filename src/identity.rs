//! A pool's identity made real: user and group names resolved to ids (with
//! the user's supplementary groups and home), and every value checked against
//! what this master may grant, so that a spawn never discovers a problem
//! between fork and exec. Used at start, by `check` and on reload (refusals
//! name the key), and by spawns (src/spawn.rs applies a [`Resolved`] with
//! async-signal-safe calls only).
//!
//! What needs privileges, and is refused otherwise: `user`/`group` other than
//! the master's own (CAP_SETUID, CAP_SETGID: root); a hard limit above the
//! master's, or `oom_score_adj` below its own (CAP_SYS_RESOURCE); `nice` below
//! the master's (CAP_SYS_NICE). The capabilities are read from the kernel,
//! not assumed from uid 0: a container's root often lacks CAP_SYS_RESOURCE.
//! Even with it, `nofile` cannot exceed /proc/sys/fs/nr_open.

use std::ffi::CString;
use std::path::Path;

use nix::unistd::{Gid, Group, Uid, User};

use crate::config::identity::{Identity, Principal, Resource};

/// What a spawn applies, all computed before the fork.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Supplementary groups (set whenever `gid` is).
    pub groups: Vec<u32>,
    /// HOME, USER, LOGNAME of the user, when it has a passwd entry.
    pub env: Vec<(String, String)>,
    pub umask: Option<u32>,
    pub nice: Option<i32>,
    /// (resource, soft, hard), RLIM_INFINITY for unlimited.
    pub rlimits: Vec<(Resource, u64, u64)>,
    pub oom_score_adj: Option<i32>,
}

impl Resolved {
    pub fn is_empty(&self) -> bool {
        *self == Resolved::default()
    }
}

/// Why an identity cannot be granted. `key` is the pool key at fault
/// (`user`, `rlimits.nofile`, ...), for the caller to locate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct IdentityError {
    pub key: String,
    pub message: String,
}

fn err(key: impl Into<String>, message: impl Into<String>) -> IdentityError {
    IdentityError {
        key: key.into(),
        message: message.into(),
    }
}

/// What this process is and may do, read once per check.
struct Me {
    root: bool,
    uid: u32,
    gid: u32,
    nice: i32,
    oom: Option<i32>,
    /// Effective capabilities (CapEff of /proc/self/status).
    caps: u64,
}

const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SYS_NICE: u32 = 23;
const CAP_SYS_RESOURCE: u32 = 24;

impl Me {
    fn can(&self, cap: u32) -> bool {
        self.caps & (1 << cap) != 0
    }
}

fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

impl Me {
    fn now() -> Me {
        // SAFETY: getpriority only reads; errno is reset first since -1 is a
        // valid niceness.
        let nice = unsafe {
            *libc::__errno_location() = 0;
            libc::getpriority(libc::PRIO_PROCESS, 0)
        };
        Me {
            root: Uid::effective().is_root(),
            uid: Uid::effective().as_raw(),
            gid: Gid::effective().as_raw(),
            nice,
            oom: std::fs::read_to_string("/proc/self/oom_score_adj")
                .ok()
                .and_then(|s| s.trim().parse().ok()),
            caps: effective_caps(),
        }
    }
}

pub fn libc_resource(r: Resource) -> libc::__rlimit_resource_t {
    match r {
        Resource::As => libc::RLIMIT_AS,
        Resource::Core => libc::RLIMIT_CORE,
        Resource::Cpu => libc::RLIMIT_CPU,
        Resource::Data => libc::RLIMIT_DATA,
        Resource::Fsize => libc::RLIMIT_FSIZE,
        Resource::Memlock => libc::RLIMIT_MEMLOCK,
        Resource::Nofile => libc::RLIMIT_NOFILE,
        Resource::Nproc => libc::RLIMIT_NPROC,
        Resource::Stack => libc::RLIMIT_STACK,
    }
}

fn current_limit(r: Resource) -> (u64, u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    unsafe { libc::getrlimit(libc_resource(r), &mut l) };
    (l.rlim_cur, l.rlim_max)
}

fn show(v: u64) -> String {
    if v == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

/// Resolve and check one pool's identity; every problem, each with its key.
pub fn resolve(id: &Identity) -> Result<Resolved, Vec<IdentityError>> {
    let me = Me::now();
    let mut errors = Vec::new();
    let mut out = Resolved {
        umask: id.umask,
        ..Resolved::default()
    };
    // The user: its uid, primary group, name and home.
    let mut user_entry: Option<User> = None;
    if let Some(who) = &id.user {
        let found = match who {
            Principal::Name(n) => User::from_name(n),
            Principal::Id(u) => User::from_uid(Uid::from_raw(*u)),
        };
        match (found, who) {
            (Ok(Some(u)), _) => {
                out.uid = Some(u.uid.as_raw());
                user_entry = Some(u);
            }
            (Ok(None), Principal::Id(u)) => out.uid = Some(*u),
            (Ok(None), Principal::Name(n)) => {
                errors.push(err("user", format!("no such user {n:?}")))
            }
            (Err(e), _) => errors.push(err("user", format!("cannot look up user {who}: {e}"))),
        }
    }
    match &id.group {
        Some(who) => {
            let found = match who {
                Principal::Name(n) => Group::from_name(n),
                Principal::Id(g) => Group::from_gid(Gid::from_raw(*g)),
            };
            match (found, who) {
                (Ok(Some(g)), _) => out.gid = Some(g.gid.as_raw()),
                (Ok(None), Principal::Id(g)) => out.gid = Some(*g),
                (Ok(None), Principal::Name(n)) => {
                    errors.push(err("group", format!("no such group {n:?}")))
                }
                (Err(e), _) => {
                    errors.push(err("group", format!("cannot look up group {who}: {e}")))
                }
            }
        }
        None => match (&user_entry, out.uid) {
            (Some(u), _) => out.gid = Some(u.gid.as_raw()),
            (None, Some(uid)) => errors.push(err(
                "group",
                format!("uid {uid} has no passwd entry, so it has no primary group: set group"),
            )),
            (None, None) => {}
        },
    }
    if let Some(gid) = out.gid {
        out.groups = match &user_entry {
            Some(u) => match CString::new(u.name.as_bytes())
                .ok()
                .map(|name| nix::unistd::getgrouplist(&name, Gid::from_raw(gid)))
            {
                Some(Ok(gs)) => gs.into_iter().map(Gid::as_raw).collect(),
                Some(Err(e)) => {
                    errors.push(err(
                        "user",
                        format!("cannot list the groups of {}: {e}", u.name),
                    ));
                    vec![gid]
                }
                None => vec![gid],
            },
            None => vec![gid],
        };
    }
    if let Some(u) = &user_entry {
        out.env = vec![
            ("HOME".into(), u.dir.to_string_lossy().into_owned()),
            ("USER".into(), u.name.clone()),
            ("LOGNAME".into(), u.name.clone()),
        ];
    }
    if out.uid.is_some_and(|u| u != me.uid) && !me.can(CAP_SETUID) {
        errors.push(err(
            "user",
            format!(
                "workers can run as another user only when the master runs as root (it runs as uid {})",
                me.uid
            ),
        ));
    }
    if out.gid.is_some_and(|g| g != me.gid) && !me.can(CAP_SETGID) {
        errors.push(err(
            "group",
            format!(
                "workers can run with another group only when the master runs as root (it runs as gid {})",
                me.gid
            ),
        ));
    }
    if let Some(n) = id.nice {
        if n < me.nice && !me.can(CAP_SYS_NICE) {
            errors.push(err(
                "nice",
                format!(
                    "nice {n} is below the master's {}: that needs root (CAP_SYS_NICE)",
                    me.nice
                ),
            ));
        }
        out.nice = Some(n);
    }
    if let Some(o) = id.oom_score_adj {
        if me.oom.is_some_and(|cur| o < cur) && !me.can(CAP_SYS_RESOURCE) {
            errors.push(err(
                "oom_score_adj",
                format!(
                    "oom_score_adj {o} is below the master's {}: that needs CAP_SYS_RESOURCE, which this master {}",
                    me.oom.unwrap_or(0),
                    if me.root { "lacks although it is root (a container?)" } else { "lacks" }
                ),
            ));
        }
        out.oom_score_adj = Some(o);
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    for (r, l) in &id.rlimits {
        let key = format!("rlimits.{}", r.name());
        let soft = l.soft.unwrap_or(libc::RLIM_INFINITY);
        let hard = l.hard.unwrap_or(libc::RLIM_INFINITY);
        let (_, my_hard) = current_limit(*r);
        if hard > my_hard && !me.can(CAP_SYS_RESOURCE) {
            errors.push(err(
                &key,
                format!(
                    "hard limit {} is above the master's {}: that needs CAP_SYS_RESOURCE, which this master {}",
                    show(hard),
                    show(my_hard),
                    if me.root { "lacks although it is root (a container?)" } else { "lacks (run it as root)" }
                ),
            ));
        }
        if *r == Resource::Nofile {
            if let Some(max) = nr_open.filter(|m| hard > *m) {
                errors.push(err(
                    &key,
                    format!(
                        "{} open files is above the system's maximum {max} (/proc/sys/fs/nr_open)",
                        show(hard)
                    ),
                ));
            }
        }
        out.rlimits.push((*r, soft, hard));
    }
    // Not a change: nothing to drop (and setgroups would need CAP_SETGID).
    if out.uid == Some(me.uid) && !me.can(CAP_SETUID) {
        out.uid = None;
    }
    if out.gid == Some(me.gid) && !me.can(CAP_SETGID) {
        out.gid = None;
        out.groups.clear();
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Every pool's identity of `config`, resolved; or every problem, as
/// `LOCATION: pools.NAME.KEY: message` lines.
pub fn resolve_config(
    config: &crate::config::Config,
) -> Result<Vec<(String, Resolved)>, Vec<String>> {
    let mut ok = Vec::new();
    let mut problems = Vec::new();
    for (name, spec) in &config.pools {
        match resolve(&spec.identity) {
            Ok(r) => ok.push((name.clone(), r)),
            Err(errs) => {
                for e in errs {
                    let key = format!("pools.{name}.{}", e.key);
                    let at = config.locate(&key);
                    if at == key {
                        problems.push(format!("{key}: {}", e.message));
                    } else {
                        problems.push(format!("{at}: {key}: {}", e.message));
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(ok)
    } else {
        Err(problems)
    }
}

/// Whether the workers of `res` can connect to the unix socket at `path`:
/// a child takes the identity (as a worker would) and tries, so directory
/// permissions and ACLs are judged by the kernel itself. `Err` says which
/// part of the path stopped it.
pub fn can_reach(res: &Resolved, path: &Path) -> Result<(), String> {
    if res.uid.is_none() && res.gid.is_none() {
        return Ok(());
    }
    use std::os::unix::ffi::OsStrExt;
    // Every directory from the root to the socket's, then the socket.
    let mut steps: Vec<CString> = path
        .ancestors()
        .skip(1)
        .filter(|p| !p.as_os_str().is_empty())
        .filter_map(|p| CString::new(p.as_os_str().as_bytes()).ok())
        .collect();
    steps.reverse();
    let target = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let groups: Vec<libc::gid_t> = res.groups.clone();
    let (uid, gid) = (res.uid, res.gid);
    // SAFETY: the child only makes async-signal-safe calls (setgroups,
    // setgid, setuid, access, _exit) on data prepared before the fork.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => unsafe {
            if let Some(g) = gid {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0 || libc::setgid(g) != 0 {
                    libc::_exit(250);
                }
            }
            if let Some(u) = uid {
                if libc::setuid(u) != 0 {
                    libc::_exit(251);
                }
            }
            for (i, dir) in steps.iter().enumerate() {
                if libc::access(dir.as_ptr(), libc::X_OK) != 0 {
                    libc::_exit(i.min(200) as libc::c_int + 1);
                }
            }
            if libc::access(target.as_ptr(), libc::W_OK) != 0 {
                libc::_exit(240);
            }
            libc::_exit(0);
        },
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            let status = nix::sys::wait::waitpid(child, None).map_err(|e| e.to_string())?;
            match status {
                nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
                nix::sys::wait::WaitStatus::Exited(_, 240) => {
                    Err(format!("{} is not writable for it", path.display()))
                }
                nix::sys::wait::WaitStatus::Exited(_, c @ 250..=251) => {
                    Err(format!("the probe could not take the identity (code {c})"))
                }
                nix::sys::wait::WaitStatus::Exited(_, c) => {
                    let dir = steps
                        .get(c as usize - 1)
                        .map(|d| d.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    Err(format!("it cannot enter the directory {dir}"))
                }
                other => Err(format!("the probe ended with {other:?}")),
            }
        }
        Err(e) => Err(format!("cannot fork the probe: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_identity_resolves_to_nothing() {
        assert_eq!(resolve(&Identity::default()), Ok(Resolved::default()));
    }

    #[test]
    fn unknown_names_are_refused_with_their_key() {
        let id = Identity {
            user: Some(Principal::Name("no-such-user-einhyrningsins".into())),
            group: Some(Principal::Name("no-such-group-einhyrningsins".into())),
            ..Identity::default()
        };
        let errs = resolve(&id).unwrap_err();
        assert!(errs
            .iter()
            .any(|e| e.key == "user" && e.message.contains("no such user")));
        assert!(errs
            .iter()
            .any(|e| e.key == "group" && e.message.contains("no such group")));
    }

    #[test]
    fn a_bare_uid_needs_a_group() {
        let id = Identity {
            user: Some(Principal::Id(4_000_000)),
            ..Identity::default()
        };
        let errs = resolve(&id).unwrap_err();
        assert!(errs.iter().any(|e| e.key == "group"), "{errs:?}");
    }

    #[test]
    fn nofile_above_nr_open_is_refused_even_for_root() {
        let mut id = Identity::default();
        id.rlimits.insert(
            Resource::Nofile,
            crate::config::identity::Limit {
                soft: Some(1 << 40),
                hard: Some(1 << 40),
            },
        );
        let errs = resolve(&id).unwrap_err();
        assert!(errs.iter().any(|e| e.key == "rlimits.nofile"), "{errs:?}");
    }

    #[test]
    fn the_masters_own_user_resolves_with_its_groups_and_home() {
        let me = Uid::effective();
        let Ok(Some(entry)) = User::from_uid(me) else {
            return; // no passwd entry for the test's uid: nothing to compare
        };
        let id = Identity {
            user: Some(Principal::Id(me.as_raw())),
            ..Identity::default()
        };
        let r = resolve(&id).expect("own user");
        assert_eq!(r.uid, Some(me.as_raw()));
        assert_eq!(r.gid, Some(entry.gid.as_raw()));
        assert!(r.groups.contains(&entry.gid.as_raw()));
        assert!(r.env.iter().any(|(k, v)| k == "USER" && *v == entry.name));
    }
}
