//! Letting pools that run as other users reach the master's sockets without
//! opening them to everyone: a POSIX access ACL on the socket file grants
//! read-write to exactly those uids (the file's mode stays as configured, e.g.
//! 0600, for everyone else). Connections from those uids may only send worker
//! messages (src/master/commands.rs).
//!
//! The ACL is the kernel's `system.posix_acl_access` extended attribute, in
//! its documented binary form (version 2, then 8-byte entries sorted by tag
//! and id). A filesystem without ACLs (EOPNOTSUPP) is reported: the caller
//! refuses to start such a pool, and says to use `command_socket_as_fd` or
//! `ack = "timer"` instead.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const XATTR: &std::ffi::CStr = c"system.posix_acl_access";
const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;
const RW: u16 = 0o6;

/// The ACL for a file of `mode` that also grants `uids` read-write.
fn blob(mode: u32, uids: &[u32]) -> Vec<u8> {
    let mut uids = uids.to_vec();
    uids.sort_unstable();
    uids.dedup();
    let perm = |shift: u32| ((mode >> shift) & 0o7) as u16;
    let mut entries: Vec<(u16, u16, u32)> = vec![(USER_OBJ, perm(6), UNDEFINED_ID)];
    entries.extend(uids.iter().map(|u| (USER, RW, *u)));
    entries.push((GROUP_OBJ, perm(3), UNDEFINED_ID));
    // The mask caps named entries and the group class: the group's own bits
    // plus rw for the named users.
    entries.push((MASK, perm(3) | RW, UNDEFINED_ID));
    entries.push((OTHER, perm(0), UNDEFINED_ID));
    let mut out = VERSION.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        out.extend(tag.to_le_bytes());
        out.extend(perm.to_le_bytes());
        out.extend(id.to_le_bytes());
    }
    out
}

/// Grant `uids` read-write on the socket file at `path`, replacing earlier
/// grants; with no uids, remove the ACL (the mode alone applies).
pub fn grant(path: &Path, mode: u32, uids: &[u32]) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL"))?;
    if uids.is_empty() {
        // SAFETY: removexattr with valid NUL-terminated strings.
        let r = unsafe { libc::removexattr(c.as_ptr(), XATTR.as_ptr()) };
        let e = io::Error::last_os_error();
        if r != 0
            && !matches!(
                e.raw_os_error(),
                Some(libc::ENODATA) | Some(libc::EOPNOTSUPP)
            )
        {
            return Err(e);
        }
        // Setting an ACL may have changed the group bits (they show the
        // mask): put the mode back.
        return std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    }
    let b = blob(mode, uids);
    // SAFETY: setxattr with valid strings and a buffer of the given length.
    let r = unsafe { libc::setxattr(c.as_ptr(), XATTR.as_ptr(), b.as_ptr().cast(), b.len(), 0) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blob_is_sorted_and_keeps_the_mode_for_everyone_else() {
        let b = blob(0o600, &[65534, 33, 33]);
        // version + 6 entries (user_obj, 2 users, group_obj, mask, other).
        assert_eq!(b.len(), 4 + 6 * 8);
        let entry = |i: usize| {
            let o = 4 + i * 8;
            (
                u16::from_le_bytes([b[o], b[o + 1]]),
                u16::from_le_bytes([b[o + 2], b[o + 3]]),
                u32::from_le_bytes([b[o + 4], b[o + 5], b[o + 6], b[o + 7]]),
            )
        };
        assert_eq!(entry(0), (USER_OBJ, 6, UNDEFINED_ID));
        assert_eq!(entry(1), (USER, 6, 33));
        assert_eq!(entry(2), (USER, 6, 65534));
        assert_eq!(entry(3), (GROUP_OBJ, 0, UNDEFINED_ID));
        assert_eq!(entry(4), (MASK, 6, UNDEFINED_ID));
        assert_eq!(entry(5), (OTHER, 0, UNDEFINED_ID));
    }

    #[test]
    fn a_grant_lets_only_the_named_uid_in() -> io::Result<()> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED: a_grant_lets_only_the_named_uid_in needs root (setuid in a child)");
            return Ok(());
        }
        let dir = crate::testutil::TempDir::new("acl");
        let path = dir.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        match grant(&path, 0o600, &[65534]) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                eprintln!("SKIPPED: no ACLs on {}", dir.path().display());
                return Ok(());
            }
            other => other?,
        }
        let reach = |uid: u32| {
            let r = crate::identity::Resolved {
                uid: Some(uid),
                gid: Some(65534),
                groups: vec![65534],
                ..Default::default()
            };
            crate::identity::can_reach(&r, &path)
        };
        assert_eq!(reach(65534), Ok(()));
        assert!(reach(12345).is_err());
        grant(&path, 0o600, &[])?;
        assert!(reach(65534).is_err());
        Ok(())
    }
}
