//! Control connections on the loop: accepting (with the uid check), reading
//! lines, and writing replies. The transport itself (buffers, limits,
//! back-pressure) is `crate::control::server`; what a line means is
//! `commands`.

use std::time::{Duration, Instant};

use super::{Deadline, Master};
use crate::control::protocol::{self, Encoding, Reply};
use crate::control::server::{ConnId, Input, LINES_PER_TURN};

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
        self.events.forget(conn);
        self.forget_log_follower(conn);
    }

    fn on_new_conn(&mut self, id: ConnId) {
        let (uid, _) = self.control.peer(id);
        let me = nix::unistd::geteuid().as_raw();
        let allowed = uid.is_some_and(|u| self.uid_allowed(u));
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

    /// epoll says something about a connection.
    pub(super) fn on_conn_event(&mut self, id: ConnId, readable: bool, writable: bool) {
        if writable {
            self.control.flush(self.poll.registry(), id);
        }
        if readable && !self.control.read(self.poll.registry(), id) {
            self.forget_conn(id);
        }
        if !self.control.is_open(id) {
            self.forget_conn(id);
        }
    }

    /// Take requests from every connection that has some, up to
    /// [`LINES_PER_TURN`] each, so one pipelining client cannot starve the others.
    pub(super) fn serve_clients(&mut self) {
        for id in self.control.take_ready() {
            self.serve(id);
        }
    }

    fn serve(&mut self, id: ConnId) {
        for _ in 0..LINES_PER_TURN {
            if !self.control.may_take(id) {
                break;
            }
            match self.control.next_line(self.poll.registry(), id) {
                None => break,
                Some(Input::Line(line)) => self.handle_line(id, &line),
                Some(Input::TooLong) => {
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
            if !self.control.is_open(id) {
                break;
            }
        }
        self.control.still_ready(id);
        // A client that half-closed is answered, then closed, unless something
        // still streams to it (an upgrade it waits for).
        if self.control.finished(id) && !self.streams_to(id) {
            self.hang_up(id);
        }
        if !self.control.is_open(id) {
            self.forget_conn(id);
        }
    }
}
