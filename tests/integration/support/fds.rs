//! Placing inherited file descriptors for a child, between fork and exec.

use std::io;
use std::os::fd::RawFd;

/// A `pre_exec` hook that makes `fds` the child's fds 3, 4, ... in that order,
/// as a service manager passes sockets (LISTEN_FDS). First every source is
/// duplicated above both the target range and every source (dup3 with
/// O_CLOEXEC), so no source is overwritten before it is read; then each copy
/// is dup2'd onto its target, which leaves the target inheritable. Only
/// async-signal-safe calls, no allocation: the list is built before the fork.
pub fn place_from_3(fds: &[RawFd]) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
    let fds: Vec<RawFd> = fds.to_vec();
    let n = fds.len() as RawFd;
    let temp_base = fds.iter().copied().max().unwrap_or(0).max(3 + n) + 1;
    move || {
        for (i, &src) in fds.iter().enumerate() {
            // SAFETY: dup3 on fds we own; async-signal-safe.
            if unsafe { libc::dup3(src, temp_base + i as RawFd, libc::O_CLOEXEC) } == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        for i in 0..n {
            // SAFETY: as above; dup2 clears close-on-exec on the target.
            if unsafe { libc::dup2(temp_base + i, 3 + i) } == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}
