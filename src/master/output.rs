//! Worker output: the pipes of captured streams (`stdout`/`stderr = "log"`
//! or a file), read on the loop, their lines delivered to the sink, the
//! pool's ring (`logs`) and the clients following it (`logs -f`).
//!
//! Capture never hurts the master:
//! - a pipe's end is non-blocking and read only at the end of a turn
//!   ([`Master::serve_output`]), at most [`PIPE_BUDGET`] bytes per pipe,
//!   [`TURN_BUDGET`] in all and [`TURN_TIME`] of work per turn (read in
//!   [`READ_CHUNK`]s, the clock checked between them), so a worker writing as
//!   fast as it can
//!   delays the acks and clients of other pools by one bounded turn at most.
//!   mio is edge-triggered: a pipe left before `WouldBlock` stays in the
//!   ready queue and the loop polls without sleeping until it is drained;
//! - memory is bounded: a partial line is at most 16 KiB
//!   (src/output/lines.rs), the rings by lines and bytes
//!   (src/output/ring.rs), a follower's queue by [`LOG_FOLLOWER_QUEUE`];
//! - a sink that fails (full disk, unwritable file) drops lines and counts
//!   them; reading goes on, so a worker never blocks on a full pipe because
//!   of a sink.
//!
//! When a worker exits its pipe is drained and a partial last line flushed;
//! a pipe still held open by the worker's children is read until they close it.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use mio::unix::SourceFd;

use super::token::Source;
use super::{Master, ReplyTo};
use crate::config::output::{expand, Sink};
use crate::config::PoolConfig;
use crate::control::protocol::Reply;
use crate::control::server::ConnId;
use crate::output::file::{FileStats, RotatingFile};
use crate::output::ring::{Entry, Ring};
use crate::output::{LineAssembler, Stream};
use crate::pool::Pid;
use crate::spawn::ChildOut;

/// Bytes read from one pipe per loop turn.
pub(super) const PIPE_BUDGET: usize = 64 * 1024;
/// Bytes read from all pipes per loop turn.
pub(super) const TURN_BUDGET: usize = 256 * 1024;
/// Time spent on output per loop turn (checked between chunks): what a
/// control request or an ack may wait for behind a fast writer.
pub(super) const TURN_TIME: std::time::Duration = std::time::Duration::from_micros(200);
/// One read(2).
const READ_CHUNK: usize = 8 * 1024;
/// Bytes of lines queued for a `logs -f` follower beyond which it is
/// dropped (a turn reads at most TURN_BUDGET, rendered somewhat longer: a
/// follower that keeps up never comes near it).
pub(super) const LOG_FOLLOWER_QUEUE: usize = 1024 * 1024;
/// Bytes drained from an exited worker's pipe at once.
const EXIT_DRAIN: usize = 4 * 1024 * 1024;

/// Where a captured stream's lines go.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) enum PipeSink {
    Log,
    File {
        path: PathBuf,
        max_bytes: u64,
        backups: u32,
    },
}

/// One captured stream of one worker.
#[derive(Debug)]
struct Pipe {
    file: File,
    pool: String,
    index: u32,
    pid: Pid,
    stream: Stream,
    sink: PipeSink,
    lines: LineAssembler,
    queued: bool,
    /// The worker was reaped; its children may still write.
    exited: bool,
}

/// Per pool: what was captured.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct PoolCounts {
    pub lines: u64,
    pub bytes: u64,
    pub cut: u64,
    /// Lines the master's log did not take (its file failing, stderr closed).
    pub dropped: u64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Follower {
    to: ReplyTo,
    pool: Option<String>,
    #[serde(skip)]
    batch: String,
}

/// Everything but the pipes: what a line is delivered to.
#[derive(Debug, Default)]
struct Sinks {
    files: HashMap<PathBuf, RotatingFile>,
    rings: HashMap<String, Ring>,
    counts: HashMap<String, PoolCounts>,
    followers: Vec<Follower>,
    seq: u64,
    /// Which pools write each file (for `status`).
    file_pools: HashMap<PathBuf, std::collections::BTreeSet<String>>,
    /// "log" lines not written yet (at most [`crate::log::WORKER_BLOCK`]),
    /// and how many of them each pool has.
    log_block: String,
    log_pools: HashMap<String, u64>,
}

/// When lines were read: unix milliseconds and the log's time stamp.
struct Stamp {
    ms: u64,
    text: String,
}

impl Stamp {
    fn now() -> Stamp {
        Stamp {
            ms: unix_ms(),
            text: crate::log::timestamp(),
        }
    }
}

/// The master's capture of worker output.
#[derive(Debug, Default)]
pub(super) struct Capture {
    pipes: HashMap<usize, Pipe>,
    next: usize,
    ready: VecDeque<usize>,
    sinks: Sinks,
    buf: Vec<u8>,
}

/// A pipe made before a fork, adopted once the worker runs.
pub(super) struct Planned {
    read: OwnedFd,
    write: OwnedFd,
    stream: Stream,
    sink: PipeSink,
}

/// A pipe in a re-exec's state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct PipeParts {
    fd: RawFd,
    pool: String,
    index: u32,
    pid: Pid,
    stream: Stream,
    sink: PipeSink,
    #[serde(default)]
    pending: Vec<u8>,
    #[serde(default)]
    exited: bool,
}

/// The capture in a re-exec's state (absent from a format-1 state of an
/// older image: nothing was captured then).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct CaptureParts {
    #[serde(default)]
    pipes: Vec<PipeParts>,
    #[serde(default)]
    rings: Vec<(String, Ring)>,
    #[serde(default)]
    counts: Vec<(String, PoolCounts)>,
    #[serde(default)]
    followers: Vec<Follower>,
    #[serde(default)]
    seq: u64,
}

impl Sinks {
    fn line(&mut self, p: &Pipe, line: &[u8], cut: bool, now: Instant, at: &Stamp) {
        let at_ms = at.ms;
        let text = String::from_utf8_lossy(line);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        let counts = self.counts.entry(p.pool.clone()).or_default();
        counts.lines += 1;
        counts.bytes += line.len() as u64;
        if cut {
            counts.cut += 1;
        }
        match &p.sink {
            PipeSink::Log => {
                // Whole lines, batched up to PIPE_BUF per write (src/log.rs).
                let before = self.log_block.len();
                if before > 0 && before + line.len() + 64 + p.pool.len() > crate::log::WORKER_BLOCK
                {
                    self.flush_log();
                }
                crate::log::format_worker_line(
                    &mut self.log_block,
                    &at.text,
                    &p.pool,
                    p.index,
                    p.pid,
                    p.stream.as_str(),
                    text,
                    cut,
                );
                *self.log_pools.entry(p.pool.clone()).or_default() += 1;
                if self.log_block.len() >= crate::log::WORKER_BLOCK {
                    self.flush_log();
                }
            }
            PipeSink::File {
                path,
                max_bytes,
                backups,
            } => {
                let f = self
                    .files
                    .entry(path.clone())
                    .or_insert_with(|| RotatingFile::new(path.clone(), *max_bytes, *backups));
                f.push_line(line, cut, now);
            }
        }
        self.seq += 1;
        let entry = Entry {
            seq: self.seq,
            at_ms,
            index: p.index,
            pid: p.pid,
            stream: p.stream,
            text: text.to_string(),
            cut,
        };
        let mut rendered = None;
        for f in &mut self.followers {
            if f.pool.as_deref().is_none_or(|x| x == p.pool) {
                let r = rendered.get_or_insert_with(|| entry.render(&p.pool));
                // Past the follower's queue limit the batch is not grown: the
                // follower is dropped when it is sent (see `send_batches`).
                if f.batch.len() <= LOG_FOLLOWER_QUEUE {
                    f.batch.push_str(r);
                    f.batch.push('\n');
                }
            }
        }
        self.rings.entry(p.pool.clone()).or_default().push(entry);
    }

    /// Write the pending block of "log" lines; if it is dropped, each
    /// pool's lines in it count as dropped.
    fn flush_log(&mut self) {
        if self.log_block.is_empty() {
            return;
        }
        let n = self.log_pools.values().sum();
        if !crate::log::write_worker_block(&self.log_block, n) {
            for (pool, k) in &self.log_pools {
                self.counts.entry(pool.clone()).or_default().dropped += k;
            }
        }
        self.log_block.clear();
        self.log_pools.clear();
    }

    /// End of a turn (or a worker's exit): every buffered line is written.
    fn flush_all(&mut self, now: Instant) {
        self.flush_log();
        for f in self.files.values_mut() {
            f.flush(now);
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Capture {
    /// A pool is gone (removed, or the master stops): its ring and counters
    /// go too, so renaming pools over and over cannot grow the master.
    pub(super) fn forget_pool(&mut self, pool: &str) {
        self.sinks.rings.remove(pool);
        self.sinks.counts.remove(pool);
    }

    pub(super) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The pipes a worker of `spec` needs, made before the fork, and what the
    /// child gets as its stdout and stderr.
    pub(super) fn plan(
        spec: &PoolConfig,
        index: u32,
    ) -> io::Result<(ChildOut, ChildOut, Vec<Planned>)> {
        let mut planned = Vec::new();
        let mut outs = [ChildOut::Inherit, ChildOut::Inherit];
        for (i, (stream, sink)) in [
            (Stream::Stdout, &spec.output.stdout),
            (Stream::Stderr, &spec.output.stderr),
        ]
        .into_iter()
        .enumerate()
        {
            let sink = match sink {
                Sink::Inherit => continue,
                Sink::Null => {
                    outs[i] = ChildOut::Null;
                    continue;
                }
                Sink::Log => PipeSink::Log,
                Sink::File(t) => PipeSink::File {
                    path: expand(t, &spec.name, index),
                    max_bytes: spec.output.max_bytes,
                    backups: spec.output.backups,
                },
            };
            let (read, write) = crate::output::pipe::pipe()?;
            outs[i] = ChildOut::Pipe(write.as_raw_fd());
            planned.push(Planned {
                read,
                write,
                stream,
                sink,
            });
        }
        Ok((outs[0], outs[1], planned))
    }

    fn insert(&mut self, registry: &mio::Registry, p: Pipe) {
        let id = self.next;
        self.next += 1;
        if let PipeSink::File { path, .. } = &p.sink {
            self.sinks
                .file_pools
                .entry(path.clone())
                .or_default()
                .insert(p.pool.clone());
        }
        let fd = p.file.as_raw_fd();
        if let Err(e) = registry.register(
            &mut SourceFd(&fd),
            Source::Output(id).token(),
            mio::Interest::READABLE,
        ) {
            log::warn!(
                "pool {}: cannot watch the {} pipe of pid {}: {e}; its output is lost",
                p.pool,
                p.stream.as_str(),
                p.pid
            );
            return;
        }
        self.pipes.insert(id, p);
        // Anything written before the registration is read next turn.
        self.mark_ready(id);
    }

    fn mark_ready(&mut self, id: usize) {
        if let Some(p) = self.pipes.get_mut(&id) {
            if !p.queued {
                p.queued = true;
                self.ready.push_back(id);
            }
        }
    }

    /// Read up to `budget` bytes of pipe `id`, until `until` at the latest;
    /// (bytes read, whether it may have more). At EOF (or a read error) the
    /// pipe is closed.
    fn read_pipe(
        &mut self,
        registry: &mio::Registry,
        id: usize,
        budget: usize,
        until: Option<Instant>,
    ) -> (usize, bool) {
        let Capture {
            pipes, sinks, buf, ..
        } = self;
        let Some(p) = pipes.get_mut(&id) else {
            return (0, false);
        };
        if buf.len() < READ_CHUNK {
            buf.resize(READ_CHUNK, 0);
        }
        let now = Instant::now();
        let at = Stamp::now();
        let mut total = 0;
        let eof = loop {
            if total >= budget || (total > 0 && until.is_some_and(|t| Instant::now() >= t)) {
                return (total, true);
            }
            let want = (budget - total).min(buf.len());
            match p.file.read(&mut buf[..want]) {
                Ok(0) => break true,
                Ok(n) => {
                    total += n;
                    let mut lines = std::mem::take(&mut p.lines);
                    lines.feed(&buf[..n], &mut |l, cut| sinks.line(p, l, cut, now, &at));
                    p.lines = lines;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!(
                        "pool {}: reading the {} of pid {} failed: {e}",
                        p.pool,
                        p.stream.as_str(),
                        p.pid
                    );
                    break true;
                }
            }
        };
        if eof {
            let mut lines = std::mem::take(&mut p.lines);
            lines.flush(&mut |l, cut| sinks.line(p, l, cut, now, &at));
            let fd = p.file.as_raw_fd();
            let _ = registry.deregister(&mut SourceFd(&fd));
            pipes.remove(&id);
        }
        (total, false)
    }

    pub(super) fn parts(&self) -> CaptureParts {
        let mut pipes: Vec<PipeParts> = self
            .pipes
            .values()
            .map(|p| PipeParts {
                fd: p.file.as_raw_fd(),
                pool: p.pool.clone(),
                index: p.index,
                pid: p.pid,
                stream: p.stream,
                sink: p.sink.clone(),
                pending: p.lines.pending().to_vec(),
                exited: p.exited,
            })
            .collect();
        pipes.sort_by_key(|p| p.fd);
        CaptureParts {
            pipes,
            rings: self
                .sinks
                .rings
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            counts: self
                .sinks
                .counts
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            followers: self.sinks.followers.clone(),
            seq: self.sinks.seq,
        }
    }

    /// The fds a re-exec keeps.
    pub(super) fn raw_fds(&self) -> Vec<RawFd> {
        self.pipes.values().map(|p| p.file.as_raw_fd()).collect()
    }

    /// In a new image: take over the pipes the previous one kept open.
    ///
    /// # Safety
    /// Every fd of `parts` is open and owned by nothing else.
    pub(super) unsafe fn from_parts(parts: CaptureParts, registry: &mio::Registry) -> Capture {
        let mut c = Capture::default();
        for pp in parts.pipes {
            // SAFETY: the caller's promise.
            let fd = unsafe { OwnedFd::from_raw_fd(pp.fd) };
            // Close-on-exec again (it was cleared for the exec).
            // SAFETY: fcntl on an fd we own.
            unsafe { libc::fcntl(pp.fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            c.insert(
                registry,
                Pipe {
                    file: File::from(fd),
                    pool: pp.pool,
                    index: pp.index,
                    pid: pp.pid,
                    stream: pp.stream,
                    sink: pp.sink,
                    lines: LineAssembler::with_pending(pp.pending),
                    queued: false,
                    exited: pp.exited,
                },
            );
        }
        c.sinks.rings = parts.rings.into_iter().collect();
        c.sinks.counts = parts.counts.into_iter().collect();
        c.sinks.followers = parts.followers;
        c.sinks.seq = parts.seq;
        c
    }
}

impl Master {
    /// A worker was spawned with `planned` pipes: read them from now on. (The
    /// write ends are closed here: the worker holds its own copies.)
    pub(super) fn adopt_output(&mut self, pool: &str, index: u32, pid: Pid, planned: Vec<Planned>) {
        for pl in planned {
            let Planned {
                read,
                write,
                stream,
                sink,
            } = pl;
            drop(write);
            self.capture.insert(
                self.poll.registry(),
                Pipe {
                    file: File::from(read),
                    pool: pool.to_string(),
                    index,
                    pid,
                    stream,
                    sink,
                    lines: LineAssembler::default(),
                    queued: false,
                    exited: false,
                },
            );
        }
    }

    /// A pipe is readable (edge): it joins the ready queue.
    pub(super) fn on_output(&mut self, id: usize) {
        self.capture.mark_ready(id);
    }

    /// End of a loop turn: read the ready pipes within the budgets, write
    /// the files, send followers their lines.
    pub(super) fn serve_output(&mut self) {
        let mut total = 0;
        let until = Instant::now() + TURN_TIME;
        let registry = self.poll.registry();
        for _ in 0..self.capture.ready.len() {
            let Some(id) = self.capture.ready.pop_front() else {
                break;
            };
            let budget = PIPE_BUDGET.min(TURN_BUDGET.saturating_sub(total)).max(1);
            let (n, more) = self.capture.read_pipe(registry, id, budget, Some(until));
            total += n;
            match self.capture.pipes.get_mut(&id) {
                Some(p) if more => {
                    let _ = p;
                    self.capture.ready.push_back(id);
                }
                Some(p) => p.queued = false,
                None => {}
            }
            if total >= TURN_BUDGET || Instant::now() >= until {
                break;
            }
        }
        self.capture.sinks.flush_all(Instant::now());
        self.send_batches();
    }

    /// A worker was reaped: drain what is left in its pipes and flush a
    /// partial last line. Pipes its children still hold stay open to EOF.
    pub(super) fn output_exited(&mut self, pid: Pid) {
        let ids: Vec<usize> = self
            .capture
            .pipes
            .iter()
            .filter(|(_, p)| p.pid == pid)
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return;
        }
        let registry = self.poll.registry();
        for id in ids {
            let _ = self.capture.read_pipe(registry, id, EXIT_DRAIN, None);
            let Capture { pipes, sinks, .. } = &mut self.capture;
            if let Some(p) = pipes.get_mut(&id) {
                p.exited = true;
                let (now, at) = (Instant::now(), Stamp::now());
                let mut lines = std::mem::take(&mut p.lines);
                lines.flush(&mut |l, cut| sinks.line(p, l, cut, now, &at));
            }
        }
        self.capture.sinks.flush_all(Instant::now());
        self.send_batches();
    }

    fn send_batches(&mut self) {
        if self
            .capture
            .sinks
            .followers
            .iter()
            .all(|f| f.batch.is_empty())
        {
            return;
        }
        let followers = std::mem::take(&mut self.capture.sinks.followers);
        let mut kept = Vec::with_capacity(followers.len());
        for mut f in followers {
            if !self.control.is_open(f.to.conn) {
                continue;
            }
            if f.batch.is_empty() {
                kept.push(f);
                continue;
            }
            let queued = self.control.queued(f.to.conn);
            if queued > LOG_FOLLOWER_QUEUE || f.batch.len() > LOG_FOLLOWER_QUEUE {
                log::warn!("logs: dropping a follower that does not read ({queued} bytes queued)");
                let notice = Reply::failure(
                    "logs -f: dropped, this client did not keep up with the output".to_string(),
                    f.to.request_id.clone(),
                );
                self.reply(f.to.conn, &notice, f.to.encoding);
                self.control.set_busy(f.to.conn, false);
                self.hang_up(f.to.conn);
                continue;
            }
            let batch = std::mem::take(&mut f.batch);
            let reply = Reply::progress(batch, f.to.request_id.clone());
            self.reply(f.to.conn, &reply, f.to.encoding);
            kept.push(f);
        }
        self.capture.sinks.followers = kept;
    }

    /// `logs [-n N]`: the last lines of a pool (or of every pool, in order).
    pub(super) fn recent_logs(&self, pool: Option<&str>, n: usize) -> Result<String, String> {
        let names: Vec<String> = match pool {
            Some(p) if self.pools.contains_key(p) || self.capture.sinks.rings.contains_key(p) => {
                vec![p.to_string()]
            }
            Some(p) => return Err(self.unknown_pool(p).to_string()),
            None => self.pools.keys().cloned().collect(),
        };
        let mut entries: Vec<(&str, &Entry)> = Vec::new();
        for name in &names {
            if let Some(r) = self.capture.sinks.rings.get(name) {
                entries.extend(r.last(n).map(|e| (name.as_str(), e)));
            }
        }
        entries.sort_by_key(|(_, e)| e.seq);
        let skip = entries.len().saturating_sub(n);
        let mut out = String::new();
        for (name, e) in &entries[skip..] {
            out.push_str(&e.render(name));
            out.push('\n');
        }
        if entries.is_empty() {
            let uncaptured: Vec<&str> = names
                .iter()
                .filter(|n| {
                    self.pools
                        .get(*n)
                        .is_some_and(|e| !e.pool.spec().output.captures())
                })
                .map(String::as_str)
                .collect();
            if !uncaptured.is_empty() {
                return Ok(format!(
                    "No lines: pool(s) {} do not capture their output (stdout and stderr are \
                     \"inherit\" or \"null\"); set stdout/stderr to \"log\" or a file to keep \
                     lines for `logs`.\n",
                    uncaptured.join(", ")
                ));
            }
        }
        Ok(out)
    }

    /// `logs -f`: the last lines, then every new line of the pool(s).
    pub(super) fn follow_logs(
        &mut self,
        to: ReplyTo,
        pool: Option<&str>,
        n: usize,
    ) -> Result<(), String> {
        let recent = self.recent_logs(pool, n)?;
        self.control.set_busy(to.conn, true);
        if !recent.is_empty() {
            let reply = Reply::progress(recent, to.request_id.clone());
            self.reply(to.conn, &reply, to.encoding);
        }
        self.capture.sinks.followers.push(Follower {
            to,
            pool: pool.map(str::to_string),
            batch: String::new(),
        });
        Ok(())
    }

    pub(super) fn follows_logs(&self, conn: ConnId) -> bool {
        self.capture
            .sinks
            .followers
            .iter()
            .any(|f| f.to.conn == conn)
    }

    pub(super) fn forget_log_follower(&mut self, conn: ConnId) {
        self.capture.sinks.followers.retain(|f| f.to.conn != conn);
    }

    /// `reopen_logs`, SIGUSR1: every output file and the master's log file
    /// are opened again by path (after logrotate renamed them).
    pub(super) fn reopen_logs(&mut self) -> String {
        crate::log::reopen();
        let now = Instant::now();
        let mut failed = Vec::new();
        let n = self.capture.sinks.files.len();
        for f in self.capture.sinks.files.values_mut() {
            f.reopen(now);
            if let Err(e) = f.open_now() {
                failed.push(format!("{}: {e}", f.path().display()));
            }
        }
        let master = crate::log::file_stats().map_or(String::new(), |(p, _)| {
            format!(" and the log file {}", p.display())
        });
        if failed.is_empty() {
            log::info!("reopened {n} output file(s){master}");
            format!("Reopened {n} output file(s){master}")
        } else {
            log::warn!("reopen_logs: {}", failed.join("; "));
            format!(
                "Reopened {} output file(s){master}; failed: {}",
                n - failed.len(),
                failed.join("; ")
            )
        }
    }

    /// `status` lines about a pool's output.
    pub(super) fn output_status(&self, pool: &str) -> Option<String> {
        let spec = self.pools.get(pool)?.pool.spec();
        if spec.output.is_default() {
            return None;
        }
        let c = self
            .capture
            .sinks
            .counts
            .get(pool)
            .cloned()
            .unwrap_or_default();
        let mut s = format!(
            "  output: {}; {} line(s), {} byte(s) captured, {} cut, {} dropped by the log",
            spec.output.describe(),
            c.lines,
            c.bytes,
            c.cut,
            c.dropped
        );
        for (path, f) in self.output_files(pool) {
            s.push_str(&format!(
                "\n  file {}: {} line(s), {} rotation(s), {} dropped{}",
                path.display(),
                f.lines,
                f.rotations,
                f.dropped,
                f.last_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(" (last error: {e})"))
            ));
        }
        Some(s)
    }

    /// The files written for `pool` (by template), with their counters.
    fn output_files(&self, pool: &str) -> Vec<(PathBuf, FileStats)> {
        let Some(e) = self.pools.get(pool) else {
            return Vec::new();
        };
        let _ = e;
        let mut out: Vec<(PathBuf, FileStats)> = self
            .capture
            .sinks
            .files
            .iter()
            .filter(|(path, _)| {
                self.capture
                    .sinks
                    .file_pools
                    .get(*path)
                    .is_some_and(|pools| pools.contains(pool))
            })
            .map(|(p, f)| (p.clone(), f.stats.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The counters as JSON, for `state`.
    pub(super) fn output_json(&self, pool: &str) -> serde_json::Value {
        let c = self
            .capture
            .sinks
            .counts
            .get(pool)
            .cloned()
            .unwrap_or_default();
        let files: Vec<serde_json::Value> = self
            .output_files(pool)
            .into_iter()
            .map(|(p, f)| serde_json::json!({"path": p, "stats": f}))
            .collect();
        serde_json::json!({
            "lines": c.lines, "bytes": c.bytes, "cut": c.cut, "dropped": c.dropped,
            "files": files,
        })
    }
}
