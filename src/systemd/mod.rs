//! systemd's protocols, in the three directions the master speaks them:
//!
//! - `activation`: sockets passed *to the master* by a service manager (socket
//!   activation), and sockets passed *by the master to workers* that expect
//!   systemd's convention (fds 3.., LISTEN_FDS, through the LISTEN_PID trampoline);
//! - `service`: the master's own sd_notify *to its service manager*
//!   (READY/STATUS/RELOADING/STOPPING/WATCHDOG);
//! - `worker_notify`: the NOTIFY_SOCKET the master offers *to its workers*
//!   (`ack = "notify"`: READY=1, STATUS=, WATCHDOG=1, STOPPING=1 from workers).

pub(crate) mod activation;
pub(crate) mod service;
pub(crate) mod worker_notify;
