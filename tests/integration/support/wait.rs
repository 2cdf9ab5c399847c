//! The one way tests wait: poll a condition until a deadline. No fixed sleeps
//! for synchronisation anywhere in the suite; the pause between polls only
//! bounds how often the condition is asked.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// Poll `f` until it returns `Some`, or give up after `timeout` with `None`.
/// Never panics (the process reaper runs it from `Drop`).
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Poll `f` until it returns `Some`, or panic naming `what` after `timeout`.
pub fn wait_for<T>(what: impl Display, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_until(timeout, f)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// The negative of [`wait_for`]: `check` must hold at every poll during the
/// whole `window` (the last poll is at its end); panics with the first failure.
/// For "nothing happens" assertions, which can only be made over some time.
pub fn holds_for(
    what: impl Display,
    window: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) {
    if let Some(why) = poll_until(window, || check().err()) {
        panic!("{what} stopped holding: {why}");
    }
}
