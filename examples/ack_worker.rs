//! The smallest well-behaved worker, for the benchmark suite (`bench/run`): it acks
//! at once over `EINHORN_SOCK_PATH`, then sleeps in `sigwait` until its stop signal
//! and exits 0. It does no I/O besides the ack, so what the suite measures is the
//! master, not the worker.
//!
//! Usage: `ack_worker [--crash]`. With `--crash` (or `ACK_WORKER_CRASH=1`) it exits
//! with status 1 at once, before acking: the crash-loop figure's worker.
//!
//! Signals: USR2, TERM, INT and QUIT end it with status 0 (USR2 is einhorn's
//! graceful stop). They are blocked before anything else, so a stop signal that
//! arrives during the ack is not lost: `sigwait` picks it up afterwards.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn main() {
    let crash = std::env::args().skip(1).any(|a| a == "--crash")
        || std::env::var_os("ACK_WORKER_CRASH").is_some_and(|v| v == "1");
    if crash {
        std::process::exit(1);
    }
    // SAFETY: plain libc signal-set calls on a local, initialised sigset_t.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGUSR2, libc::SIGTERM, libc::SIGINT, libc::SIGQUIT] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    if let Ok(path) = std::env::var("EINHORN_SOCK_PATH") {
        let line = format!(
            "{{\"command\":\"worker:ack\",\"pid\":{}}}\n",
            std::process::id()
        );
        let sent = UnixStream::connect(&path).and_then(|mut s| {
            s.set_write_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(line.as_bytes())
        });
        if let Err(e) = sent {
            eprintln!("ack_worker: ack to EINHORN_SOCK_PATH={path} failed: {e}");
        }
    }
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is initialised above; `sig` is a valid out pointer.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        if rc == 0 {
            std::process::exit(0);
        }
    }
}
