//! Control connections on the loop: accepting (with the uid check), reading
//! lines, and writing replies. The transport itself (buffers, limits,
//! back-pressure) is `crate::control::server`; what a line means is
//! `commands`.

use std::time::{Duration, Instant};

use super::{Deadline, Master};
use crate::control::protocol::{self, Encoding, Reply};
use crate::control::server::{ConnId, Input};

impl Master {
    pub(super) fn accept_clients(&mut self) {
        let (ids, failed) = self.control.accept(self.poll.registry());
        for id in ids {
            self.on_new_conn(id);
        }
        if failed {
            self.timers.arm(
                Deadline::AcceptRetry,
                Instant::now() + Duration::from_millis(250),
            );
        }
    }

    /// Queue a reply on a connection.
    pub(super) fn reply(&mut self, conn: ConnId, reply: &Reply, encoding: Encoding) {
        self.control.write(
            self.poll.registry(),
            conn,
            &protocol::encode(reply, encoding),
        );
    }

    /// Close a connection once its queued replies are written.
    pub(super) fn hang_up(&mut self, conn: ConnId) {
        self.control.close_after_flush(self.poll.registry(), conn);
    }

    /// After a client disconnected, stop streaming to it.
    fn forget_conn(&mut self, conn: ConnId) {
        self.waiters.forget(|w| w.conn == conn);
    }

    fn on_new_conn(&mut self, id: ConnId) {
        let (uid, _) = self.control.peer(id);
        let me = nix::unistd::geteuid().as_raw();
        let allowed = match uid {
            Some(u) => u == me || u == 0 || self.config.control.allow_uids.contains(&u),
            None => false,
        };
        if !allowed {
            log::warn!(
                "control: refused a connection from uid {} (allowed: {me}, root{})",
                uid.map_or("unknown".into(), |u| u.to_string()),
                if self.config.control.allow_uids.is_empty() {
                    String::new()
                } else {
                    format!(", {:?}", self.config.control.allow_uids)
                }
            );
            let reply = Reply::failure(
                "permission denied: your uid may not control this master",
                None,
            );
            self.reply(id, &reply, Encoding::Json);
            self.hang_up(id);
        }
    }

    pub(super) fn on_conn_readable(&mut self, id: ConnId) {
        let Some((inputs, eof)) = self.control.read(self.poll.registry(), id) else {
            self.forget_conn(id);
            return;
        };
        for input in inputs {
            if !self.control.is_open(id) {
                break;
            }
            match input {
                Input::Line(line) => self.handle_line(id, &line),
                Input::TooLong => {
                    log::warn!(
                        "control: request line longer than {} bytes; closing the connection",
                        protocol::MAX_LINE
                    );
                    let reply = Reply::failure(
                        format!(
                            "request line longer than {} bytes; closing",
                            protocol::MAX_LINE
                        ),
                        None,
                    );
                    self.reply(id, &reply, Encoding::Json);
                    self.hang_up(id);
                }
            }
        }
        if eof && !self.waiters.any(|w| w.conn == id) {
            self.hang_up(id);
        }
        if !self.control.is_open(id) {
            self.forget_conn(id);
        }
    }
}
