//! File watching: tell the event loop which wanted files (pool executables, pool
//! `watch` paths, the config file) really changed, and debounce bursts.
//!
//! # Theory of operation
//!
//! **Why parent directories.** Deploy tools replace a file by writing a temporary
//! file and renaming it over the old one; editors rename the original away and
//! write a new file. A watch on the file itself follows the *old inode* and goes
//! quiet after the first such save (notify-rs/notify#531). So we never watch a
//! wanted file: we watch its parent directory (non-recursively) and filter the
//! directory's events by name. This also makes a file that does not exist yet
//! watchable: its creation is an event in the parent.
//!
//! **Why the symlink chain.** Deploys switch releases with `ln -sfn v2 current`, and
//! Kubernetes swaps a `..data` symlink. The path `current/bin/app` then names a
//! different file although nothing under the old release changed. So the path is
//! resolved component by component, the way the kernel does it, and every symlink
//! met on the way is a *dependency*: its parent directory is watched for its name.
//! The final, symlink-free target is a dependency too. When any dependency's
//! directory entry changes, the chain is resolved again and the set of watched
//! directories follows it (watches on the old release are dropped, the new
//! release's directory is watched). A directory in the path that does not exist
//! yet stops the resolution there, and its parent is watched for its creation: the
//! nearest existing ancestor is watched until the path appears.
//!
//! **Why a content check.** A watched directory reports events for every sibling,
//! and for every `open` of the file (the master itself opens the binary on each
//! spawn). Each wanted file keeps a fingerprint (target path, device, inode, mode,
//! size, mtime); an event counts only if the fingerprint changed or the event itself
//! says the file was written, created, removed or renamed. `touch` changes mtime, so
//! it counts; `cat` does not.
//!
//! **Why the thread only forwards.** notify runs its own thread. Its handler pushes
//! the raw event into a channel and wakes the mio loop through a [`mio::Waker`]; it
//! takes no decision and touches no shared state, so all policy (what changed, which
//! pool rolls, when) runs on the loop, in order with everything else.
//!
//! **Why debounce on the loop.** One deploy makes dozens of events within
//! milliseconds; one roll must follow, after the dust settles. [`Debouncer`] is a
//! pure trailing-edge debouncer with time injected: each event pushes the owner's
//! deadline to `now + debounce`, and the loop's timer queue wakes it at the earliest
//! deadline. No timer thread, and tests drive it with synthetic instants.
//!
//! Note for the master: the notify thread makes the process multi-threaded, so
//! between `fork` and `exec` only async-signal-safe calls are allowed. The inotify
//! and epoll descriptors notify opens are close-on-exec.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{Event, RecommendedWatcher, RecursiveMode, Watcher};

/// Symlinks followed before a path is declared a loop (Linux's MAXSYMLINKS).
const MAX_LINKS: usize = 40;

/// How often a burst of structural changes may force the chains to be resolved
/// again before a refresh gives up (the next event retries).
const MAX_SETTLE_ROUNDS: usize = 4;

/// Where execvp looks when PATH is unset (glibc's default).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// The watcher could not start at all.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "could not start the file watcher: too many inotify instances or open files \
         (see /proc/sys/fs/inotify/max_user_instances and `ulimit -n`): {0}"
    )]
    InstanceLimit(io::Error),
    #[error("could not start the file watcher: {0}")]
    Start(String),
}

/// Something about one wanted file or directory that the operator should hear
/// about. None of these stop the watcher: the other files are still watched, and
/// a failed directory is retried on the next change that concerns it.
#[derive(Debug, thiserror::Error)]
pub enum WatchProblem {
    #[error(
        "cannot watch {dir} (for {wanted}): the inotify watch limit is reached; \
         raise /proc/sys/fs/inotify/max_user_watches (e.g. sysctl fs.inotify.max_user_watches=524288)"
    )]
    WatchLimit { dir: PathBuf, wanted: PathBuf },
    #[error("cannot watch {dir} (for {wanted}): permission denied")]
    WatchDenied { dir: PathBuf, wanted: PathBuf },
    #[error("cannot watch {dir} (for {wanted}): {source}")]
    WatchFailed {
        dir: PathBuf,
        wanted: PathBuf,
        source: io::Error,
    },
    #[error("{wanted}: directory {missing} does not exist; watching its parent until it appears")]
    MissingParent { wanted: PathBuf, missing: PathBuf },
    #[error("{wanted}: cannot look at {at}: permission denied")]
    LookupDenied { wanted: PathBuf, at: PathBuf },
    #[error("{wanted}: too many levels of symbolic links at {at}")]
    SymlinkLoop { wanted: PathBuf, at: PathBuf },
    #[error("{wanted}: {at} is not a directory")]
    NotADirectory { wanted: PathBuf, at: PathBuf },
    #[error("{wanted}: cannot look at {at}: {message}")]
    Lookup {
        wanted: PathBuf,
        at: PathBuf,
        message: String,
    },
    /// notify reported an error on its event stream; everything is rechecked.
    #[error("file watcher: {0}")]
    Stream(String),
}

/// A wanted file whose change was seen, with the owners it was wanted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed<O> {
    pub path: PathBuf,
    pub owners: Vec<O>,
    /// A writer has the file open and has not closed it yet (written in place,
    /// no IN_CLOSE_WRITE seen): what is on disk may be a prefix. Act on the
    /// change only once a later report says the writer is done.
    pub writing: bool,
}

/// What the watcher thread may wake the loop for: events naming a dependency
/// of a wanted file, a watched directory itself, or an entry of a wanted
/// directory. Everything else in a watched directory (every program started
/// from /usr/bin, every sibling file) is dropped in the thread.
#[derive(Debug, Default)]
struct Interest {
    deps: HashSet<PathBuf>,
    dirs: HashSet<PathBuf>,
    contents: HashSet<PathBuf>,
}

impl Interest {
    fn wants(&self, p: &Path) -> bool {
        self.deps.contains(p)
            || self.dirs.contains(p)
            || p.parent().is_some_and(|d| self.contents.contains(d))
    }
}

/// Does the watcher thread forward this event to the loop?
fn forward(res: &notify::Result<Event>, interest: &Mutex<Interest>) -> bool {
    let Ok(ev) = res else {
        return true; // errors: the loop rechecks everything
    };
    if ev.need_rescan() {
        return true;
    }
    if harmless(&ev.kind) {
        return false;
    }
    match interest.lock() {
        Ok(i) => ev.paths.iter().any(|p| i.wants(p)),
        Err(_) => true,
    }
}

/// What [`FileWatcher::take_events`] found.
#[derive(Debug)]
pub struct WatchReport<O> {
    /// Wanted files that changed, in path order, each once.
    pub changed: Vec<Changed<O>>,
    /// Problems met while following the changes (log them; nothing to undo).
    pub problems: Vec<WatchProblem>,
}

/// Why a chain stopped before reaching an existing target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stop {
    /// A directory on the way does not exist (the last component missing is normal).
    MissingDir(PathBuf),
    Loop(PathBuf),
    NotDir(PathBuf),
    Denied(PathBuf),
    Other(PathBuf, String),
}

/// The wanted path resolved the way the kernel resolves it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Chain {
    /// Paths whose directory entry decides what the wanted path names: every
    /// symlink met, then the target (or the first component that is missing).
    deps: Vec<PathBuf>,
    /// The symlink-free path the wanted path names, when it exists.
    target: Option<PathBuf>,
    target_is_dir: bool,
    stop: Option<Stop>,
}

impl Chain {
    /// Directories to watch: the parent of every dependency, and a wanted
    /// directory itself (so that entries appearing in it are seen).
    fn dirs(&self) -> impl Iterator<Item = PathBuf> + '_ {
        let parents = self
            .deps
            .iter()
            .filter_map(|d| d.parent().map(Path::to_path_buf));
        let own = self.target.as_ref().filter(|_| self.target_is_dir).cloned();
        parents.chain(own)
    }
}

/// What identifies the content of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    target: PathBuf,
    dev: u64,
    ino: u64,
    mode: u32,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn fingerprint(chain: &Chain) -> Option<Fingerprint> {
    let target = chain.target.as_ref()?;
    let m = fs::metadata(target).ok()?;
    Some(Fingerprint {
        target: target.clone(),
        dev: m.dev(),
        ino: m.ino(),
        mode: m.mode(),
        size: m.size(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    })
}

#[derive(Debug)]
struct Wanted<O> {
    owners: Vec<O>,
    chain: Chain,
    print: Option<Fingerprint>,
}

enum Step {
    Root,
    Up,
    Name(OsString),
}

fn steps(path: &Path) -> impl DoubleEndedIterator<Item = Step> + '_ {
    path.components().filter_map(|c| match c {
        Component::RootDir => Some(Step::Root),
        Component::ParentDir => Some(Step::Up),
        Component::Normal(n) => Some(Step::Name(n.to_os_string())),
        Component::CurDir | Component::Prefix(_) => None,
    })
}

/// Resolve an absolute path component by component, recording every symlink.
fn resolve_chain(path: &Path) -> Chain {
    let mut chain = Chain::default();
    let mut todo: VecDeque<Step> = steps(path).collect();
    let mut cur = PathBuf::from("/");
    let mut links = 0usize;
    while let Some(step) = todo.pop_front() {
        let name = match step {
            Step::Root => {
                cur = PathBuf::from("/");
                continue;
            }
            Step::Up => {
                cur.pop();
                continue;
            }
            Step::Name(n) => n,
        };
        let cand = cur.join(&name);
        let last = todo.is_empty();
        match fs::symlink_metadata(&cand) {
            Ok(m) if m.file_type().is_symlink() => {
                chain.deps.push(cand.clone());
                links += 1;
                if links > MAX_LINKS {
                    chain.stop = Some(Stop::Loop(cand));
                    return chain;
                }
                match fs::read_link(&cand) {
                    Ok(to) => {
                        for s in steps(&to).rev() {
                            todo.push_front(s);
                        }
                    }
                    Err(e) => {
                        chain.stop = Some(lookup_stop(cand, &e));
                        return chain;
                    }
                }
            }
            Ok(m) => {
                if last {
                    chain.deps.push(cand.clone());
                    chain.target = Some(cand);
                    chain.target_is_dir = m.is_dir();
                    return chain;
                } else if m.is_dir() {
                    cur = cand;
                } else {
                    chain.deps.push(cand.clone());
                    chain.stop = Some(Stop::NotDir(cand));
                    return chain;
                }
            }
            Err(e) => {
                chain.deps.push(cand.clone());
                if e.kind() == io::ErrorKind::NotFound {
                    if !last {
                        chain.stop = Some(Stop::MissingDir(cand));
                    }
                } else {
                    chain.stop = Some(lookup_stop(cand, &e));
                }
                return chain;
            }
        }
    }
    // The path ended on `/` or `..`: it names the directory we stand in.
    if cur.parent().is_some() {
        chain.deps.push(cur.clone());
    }
    chain.target = Some(cur);
    chain.target_is_dir = true;
    chain
}

fn lookup_stop(at: PathBuf, e: &io::Error) -> Stop {
    match e.kind() {
        io::ErrorKind::PermissionDenied => Stop::Denied(at),
        _ if e.raw_os_error() == Some(libc::ELOOP) => Stop::Loop(at),
        _ => Stop::Other(at, e.to_string()),
    }
}

fn stop_problem(wanted: &Path, stop: &Stop) -> WatchProblem {
    let wanted = wanted.to_path_buf();
    match stop.clone() {
        Stop::MissingDir(missing) => WatchProblem::MissingParent { wanted, missing },
        Stop::Loop(at) => WatchProblem::SymlinkLoop { wanted, at },
        Stop::NotDir(at) => WatchProblem::NotADirectory { wanted, at },
        Stop::Denied(at) => WatchProblem::LookupDenied { wanted, at },
        Stop::Other(at, message) => WatchProblem::Lookup {
            wanted,
            at,
            message,
        },
    }
}

/// Outcome of asking notify for one directory watch.
enum WatchFailure {
    /// The directory went away between resolving and watching: resolve again.
    Vanished,
    Limit,
    Denied,
    Other(io::Error),
}

fn classify(e: notify::Error) -> WatchFailure {
    match e.kind {
        notify::ErrorKind::MaxFilesWatch => WatchFailure::Limit,
        notify::ErrorKind::PathNotFound => WatchFailure::Vanished,
        notify::ErrorKind::Io(io) => match io.raw_os_error() {
            Some(libc::ENOSPC) => WatchFailure::Limit,
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => WatchFailure::Vanished,
            Some(libc::EACCES) | Some(libc::EPERM) => WatchFailure::Denied,
            _ => WatchFailure::Other(io),
        },
        other => WatchFailure::Other(io::Error::other(format!("{other:?}"))),
    }
}

/// Is this event kind proof that the file it names was written or replaced?
fn writes(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Data(_))
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Modify(ModifyKind::Any)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

/// Can this event kind change what a directory entry points to?
fn structural(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
    )
}

/// Events that cannot change anything: opening and reading.
fn harmless(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Access(a) if !matches!(a, AccessKind::Close(AccessMode::Write)))
}

/// Watches a set of wanted files through their parent directories and symlink
/// chains; see the module documentation. `O` is whatever the caller attaches to
/// a file (a pool name, a "config" marker), returned with each change.
pub struct FileWatcher<O> {
    watcher: RecommendedWatcher,
    rx: Receiver<notify::Result<Event>>,
    files: BTreeMap<PathBuf, Wanted<O>>,
    /// Directories notify is watching for us.
    watched: BTreeSet<PathBuf>,
    /// Directories whose watch failed with a reported problem (not re-reported).
    failed: BTreeSet<PathBuf>,
    /// Dependency path (dir/name) -> wanted files whose chain goes through it.
    by_dep: HashMap<PathBuf, BTreeSet<PathBuf>>,
    /// Watched directory -> wanted files that need it.
    by_dir: HashMap<PathBuf, BTreeSet<PathBuf>>,
    /// Wanted directory (resolved) -> wanted paths naming it.
    by_contents: HashMap<PathBuf, BTreeSet<PathBuf>>,
    /// What the thread forwards (kept in step with the indexes above).
    interest: Arc<Mutex<Interest>>,
    /// Wanted files a writer has open (written in place, not closed yet).
    writing: BTreeSet<PathBuf>,
}

impl<O> std::fmt::Debug for FileWatcher<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatcher")
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .field("watched", &self.watched)
            .finish_non_exhaustive()
    }
}

impl<O: Clone + Ord> FileWatcher<O> {
    /// Start notify's thread. Its handler only forwards each event into a channel
    /// and wakes the loop through `waker`.
    pub fn new(waker: Arc<mio::Waker>) -> Result<FileWatcher<O>, WatchError> {
        let (tx, rx) = mpsc::channel();
        let interest = Arc::new(Mutex::new(Interest::default()));
        let filter = Arc::clone(&interest);
        let handler = move |res: notify::Result<Event>| {
            // Only what concerns a wanted file wakes the loop: an idle master
            // stays asleep while programs run from the directories it watches.
            if !forward(&res, &filter) {
                return;
            }
            // The receiver is gone only when the FileWatcher is being dropped.
            let _ = tx.send(res);
            let _ = waker.wake();
        };
        let watcher = RecommendedWatcher::new(handler, notify::Config::default()).map_err(|e| {
            match e.kind {
                notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::EMFILE) => {
                    WatchError::InstanceLimit(io)
                }
                notify::ErrorKind::Io(io) => WatchError::Start(io.to_string()),
                other => WatchError::Start(format!("{other:?}")),
            }
        })?;
        Ok(FileWatcher {
            watcher,
            rx,
            files: BTreeMap::new(),
            watched: BTreeSet::new(),
            failed: BTreeSet::new(),
            by_dep: HashMap::new(),
            by_dir: HashMap::new(),
            by_contents: HashMap::new(),
            interest,
            writing: BTreeSet::new(),
        })
    }

    /// Replace the whole set of wanted files (at start and after each reload).
    /// Relative paths are taken from the master's current directory. A file that
    /// stays wanted keeps its fingerprint, so a change that happened just before
    /// the call is still reported. Directories no longer needed are unwatched.
    pub fn set(&mut self, wanted: BTreeMap<PathBuf, Vec<O>>) -> Vec<WatchProblem> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let mut old = std::mem::take(&mut self.files);
        // Files new to the set get their first fingerprint once their watches
        // exist; the others keep theirs.
        let mut fresh = BTreeSet::new();
        for (path, mut owners) in wanted {
            let path = if path.is_absolute() {
                path
            } else {
                cwd.join(path)
            };
            let w = match (self.files.get_mut(&path), old.remove(&path)) {
                (Some(w), _) => w,
                (None, prev) => {
                    let prev = prev.unwrap_or_else(|| {
                        fresh.insert(path.clone());
                        Wanted {
                            owners: Vec::new(),
                            chain: Chain::default(),
                            print: None,
                        }
                    });
                    self.files.entry(path).or_insert(Wanted {
                        owners: Vec::new(),
                        ..prev
                    })
                }
            };
            w.owners.append(&mut owners);
            w.owners.sort();
            w.owners.dedup();
        }
        let all: BTreeSet<PathBuf> = self.files.keys().cloned().collect();
        let mut problems = Vec::new();
        self.refresh(&all, &mut problems, true);
        for p in &fresh {
            if let Some(w) = self.files.get_mut(p) {
                w.print = fingerprint(&w.chain);
            }
        }
        problems
    }

    #[cfg(test)]
    /// Owners of a wanted file, as given to [`set`](Self::set).
    pub fn owners(&self, path: &Path) -> Option<&[O]> {
        self.files.get(path).map(|w| w.owners.as_slice())
    }

    #[cfg(test)]
    /// Directories currently watched (for logs and tests).
    pub fn watched_dirs(&self) -> impl Iterator<Item = &Path> {
        self.watched.iter().map(PathBuf::as_path)
    }

    /// Drain what notify forwarded and say which wanted files changed. Call it
    /// whenever the waker's token is readable; it never blocks. Chains touched by
    /// an event are resolved again and the watches follow them.
    pub fn take_events(&mut self) -> WatchReport<O> {
        let mut problems = Vec::new();
        let mut candidates: BTreeSet<PathBuf> = BTreeSet::new();
        let mut written: BTreeSet<PathBuf> = BTreeSet::new();
        let mut stale: BTreeSet<PathBuf> = BTreeSet::new();
        let mut rescan = false;
        while let Ok(res) = self.rx.try_recv() {
            let ev = match res {
                Ok(ev) => ev,
                Err(e) => {
                    problems.push(WatchProblem::Stream(e.to_string()));
                    rescan = true;
                    continue;
                }
            };
            if ev.need_rescan() {
                rescan = true;
                continue;
            }
            if harmless(&ev.kind) {
                continue;
            }
            for p in &ev.paths {
                self.route(p, &ev.kind, &mut candidates, &mut written, &mut stale);
            }
        }
        if rescan {
            candidates = self.files.keys().cloned().collect();
            stale = self.watched.clone();
        }
        if candidates.is_empty() {
            return WatchReport {
                changed: Vec::new(),
                problems,
            };
        }
        for dir in stale {
            // A removed or renamed directory's watch is gone or follows the old
            // inode: drop it so the refresh watches whatever has the name now.
            if self.watched.remove(&dir) {
                let _ = self.watcher.unwatch(&dir);
            }
        }
        self.refresh(&candidates, &mut problems, false);
        let mut changed = Vec::new();
        for path in candidates {
            let Some(w) = self.files.get_mut(&path) else {
                continue;
            };
            let print = fingerprint(&w.chain);
            if print != w.print || written.contains(&path) {
                w.print = print;
                let writing = self.writing.contains(&path);
                changed.push(Changed {
                    path,
                    owners: w.owners.clone(),
                    writing,
                });
            }
        }
        WatchReport { changed, problems }
    }

    /// Follow whether a writer has `wanted` open: writing in place opens it
    /// (IN_CREATE, IN_MODIFY) and ends with IN_CLOSE_WRITE; a rename onto the
    /// name or a removal is complete at once.
    fn note_writer(writing: &mut BTreeSet<PathBuf>, wanted: &Path, kind: &EventKind) {
        match kind {
            EventKind::Create(_)
            | EventKind::Modify(ModifyKind::Data(_))
            | EventKind::Modify(ModifyKind::Any) => {
                writing.insert(wanted.to_path_buf());
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Remove(_) => {
                writing.remove(wanted);
            }
            _ => {}
        }
    }

    /// Which wanted files one event path concerns.
    fn route(
        &mut self,
        p: &Path,
        kind: &EventKind,
        candidates: &mut BTreeSet<PathBuf>,
        written: &mut BTreeSet<PathBuf>,
        stale: &mut BTreeSet<PathBuf>,
    ) {
        if let Some(ws) = self.by_dep.get(p) {
            for w in ws {
                candidates.insert(w.clone());
                let is_target = self
                    .files
                    .get(w)
                    .and_then(|f| f.chain.target.as_deref())
                    .is_some_and(|t| t == p);
                if is_target && writes(kind) {
                    written.insert(w.clone());
                }
                if is_target {
                    Self::note_writer(&mut self.writing, w, kind);
                }
            }
        }
        if let Some(ws) = self.by_dir.get(p) {
            // An event on a watched directory itself (moved, deleted, re-created).
            candidates.extend(ws.iter().cloned());
            if structural(kind) || matches!(kind, EventKind::Other | EventKind::Any) {
                stale.insert(p.to_path_buf());
            }
        }
        if let Some(ws) = p.parent().and_then(|d| self.by_contents.get(d)) {
            candidates.extend(ws.iter().cloned());
            if writes(kind) || matches!(kind, EventKind::Modify(ModifyKind::Metadata(_))) {
                written.extend(ws.iter().cloned());
            }
        }
    }

    /// Resolve the chains of `paths` again and make the watched directories
    /// match all chains. Repeats while new directories got watched: something
    /// may have changed in them before their watch existed.
    fn refresh(
        &mut self,
        paths: &BTreeSet<PathBuf>,
        problems: &mut Vec<WatchProblem>,
        report_stops: bool,
    ) {
        let before: BTreeMap<PathBuf, Option<Stop>> = paths
            .iter()
            .filter_map(|p| self.files.get(p).map(|w| (p.clone(), w.chain.stop.clone())))
            .collect();
        for _ in 0..MAX_SETTLE_ROUNDS {
            for path in paths {
                let chain = resolve_chain(path);
                if let Some(w) = self.files.get_mut(path) {
                    w.chain = chain;
                }
            }
            self.reindex();
            if !self.reconcile(problems) {
                break;
            }
        }
        for (path, old) in before {
            let Some(w) = self.files.get(&path) else {
                continue;
            };
            if let Some(stop) = &w.chain.stop {
                if report_stops || old.as_ref() != Some(stop) {
                    problems.push(stop_problem(&path, stop));
                }
            }
        }
    }

    fn reindex(&mut self) {
        self.by_dep.clear();
        self.by_dir.clear();
        self.by_contents.clear();
        for (path, w) in &self.files {
            for dep in &w.chain.deps {
                self.by_dep
                    .entry(dep.clone())
                    .or_default()
                    .insert(path.clone());
            }
            for dir in w.chain.dirs() {
                self.by_dir.entry(dir).or_default().insert(path.clone());
            }
            if let (Some(t), true) = (&w.chain.target, w.chain.target_is_dir) {
                self.by_contents
                    .entry(t.clone())
                    .or_default()
                    .insert(path.clone());
            }
        }
        self.writing.retain(|p| self.files.contains_key(p));
        if let Ok(mut i) = self.interest.lock() {
            i.deps = self.by_dep.keys().cloned().collect();
            i.dirs = self.by_dir.keys().cloned().collect();
            i.contents = self.by_contents.keys().cloned().collect();
        }
    }

    /// Watch what the chains need, unwatch the rest. True when a new directory
    /// got watched or one vanished on the way (the chains should be re-resolved).
    fn reconcile(&mut self, problems: &mut Vec<WatchProblem>) -> bool {
        let needed: BTreeSet<PathBuf> = self.by_dir.keys().cloned().collect();
        let gone: Vec<PathBuf> = self.watched.difference(&needed).cloned().collect();
        for dir in gone {
            self.watched.remove(&dir);
            let _ = self.watcher.unwatch(&dir);
        }
        self.failed.retain(|d| needed.contains(d));
        let mut unsettled = false;
        for dir in needed.difference(&self.watched.clone()) {
            match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir.clone());
                    self.failed.remove(dir);
                    unsettled = true;
                }
                Err(e) => {
                    let wanted = self
                        .by_dir
                        .get(dir)
                        .and_then(|ws| ws.iter().next())
                        .cloned()
                        .unwrap_or_default();
                    let dir = dir.clone();
                    let problem = match classify(e) {
                        WatchFailure::Vanished => {
                            unsettled = true;
                            continue;
                        }
                        WatchFailure::Limit => WatchProblem::WatchLimit {
                            dir: dir.clone(),
                            wanted,
                        },
                        WatchFailure::Denied => WatchProblem::WatchDenied {
                            dir: dir.clone(),
                            wanted,
                        },
                        WatchFailure::Other(source) => WatchProblem::WatchFailed {
                            dir: dir.clone(),
                            wanted,
                            source,
                        },
                    };
                    if self.failed.insert(dir) {
                        problems.push(problem);
                    }
                }
            }
        }
        unsettled
    }
}

/// The PATH a pool's workers get: the pool's `env` PATH, else the master's
/// (none when `drop_env` drops it: execvp's default applies).
pub fn pool_path_env(pool: &crate::config::PoolConfig) -> Option<std::ffi::OsString> {
    match pool.env.get("PATH") {
        Some(p) => Some(std::ffi::OsString::from(p)),
        None if pool.drop_env.iter().any(|v| v == "PATH") => None,
        None => std::env::var_os("PATH"),
    }
}

/// What a change of rolls `pool`, and why each is watched: its resolved
/// executable, every argument of its command that names an existing regular
/// file (`python3 app.py` watches `app.py`, what users edit), and its `watch`
/// paths. Relative paths as the worker sees them (against `cwd` when set).
pub fn pool_files(pool: &crate::config::PoolConfig) -> Vec<(PathBuf, &'static str)> {
    let mut out: Vec<(PathBuf, &'static str)> = Vec::new();
    let cwd = pool.cwd.as_deref();
    if let Some(cmd0) = pool.command.first() {
        let path_env = pool_path_env(pool);
        if let Some(exe) = resolve_executable(cmd0, cwd, path_env.as_deref()) {
            out.push((exe, "executable"));
        }
    }
    for arg in pool.command.iter().skip(1) {
        if arg.is_empty() || arg.starts_with('-') || arg.contains("{fd:") {
            continue;
        }
        let p = match cwd {
            Some(c) if !Path::new(arg).is_absolute() => c.join(arg),
            _ => PathBuf::from(arg),
        };
        if fs::metadata(&p).is_ok_and(|m| m.is_file()) && !out.iter().any(|(q, _)| *q == p) {
            out.push((p, "argument"));
        }
    }
    for w in &pool.watch {
        out.push((w.clone(), "watch"));
    }
    out
}

/// Find the file `cmd0` names the way execvp would: a name containing `/` is a
/// path (relative to `cwd`, the worker's working directory, when given);
/// otherwise each PATH entry is tried in order (an empty entry is the working
/// directory) and the first regular file with an execute bit wins. The path is
/// returned as found, not canonicalized: [`FileWatcher::set`] follows symlinks
/// itself so that a swap of any link in the chain is seen. A name with `/` is
/// returned even if missing (watching it sees it appear).
pub fn resolve_executable(
    cmd0: &str,
    cwd: Option<&Path>,
    path_env: Option<&OsStr>,
) -> Option<PathBuf> {
    if cmd0.is_empty() {
        return None;
    }
    let base = |p: &Path| -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else if let Some(cwd) = cwd {
            cwd.join(p)
        } else {
            p.to_path_buf()
        }
    };
    if cmd0.contains('/') {
        return Some(base(Path::new(cmd0)));
    }
    let path_env = path_env.unwrap_or(OsStr::new(DEFAULT_PATH));
    for dir in std::env::split_paths(path_env) {
        let cand = if dir.as_os_str().is_empty() {
            base(Path::new(cmd0))
        } else {
            base(&dir).join(cmd0)
        };
        if let Ok(m) = fs::metadata(&cand) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Some(cand);
            }
        }
    }
    None
}

/// A pure trailing-edge debouncer: a key is due once no event came for it during
/// `delay`. Time is passed in, so the loop's timer queue decides when to look.
#[derive(Debug, Clone)]
pub struct Debouncer<K> {
    delay: Duration,
    deadlines: BTreeMap<K, Instant>,
}

impl<K: Ord + Clone> Debouncer<K> {
    pub fn new(delay: Duration) -> Self {
        Debouncer {
            delay,
            deadlines: BTreeMap::new(),
        }
    }

    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Change the quiet time (after a reload); pending deadlines keep theirs.
    pub fn set_delay(&mut self, delay: Duration) {
        self.delay = delay;
    }

    /// An event for `key` at `now`: its deadline becomes `now + delay`.
    pub fn event(&mut self, key: K, now: Instant) {
        let at = now.checked_add(self.delay).unwrap_or(now);
        self.deadlines.insert(key, at);
    }

    /// The earliest pending deadline: arm the loop's timer for it.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.values().min().copied()
    }

    /// Keys whose quiet time is over at `now`, each returned once, in key order.
    pub fn due(&mut self, now: Instant) -> Vec<K> {
        let due: Vec<K> = self
            .deadlines
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &due {
            self.deadlines.remove(k);
        }
        due
    }

    /// Forget a key (its owner went away).
    pub fn cancel(&mut self, key: &K) {
        self.deadlines.remove(key);
    }

    pub fn is_pending(&self, key: &K) -> bool {
        self.deadlines.contains_key(key)
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }
}

#[cfg(test)]
mod tests;
