//! The file watcher alone: real files in a temp dir, a real mio Poll and Waker,
//! no master. Each test waits for a positive event with a deadline; absence of an
//! event is only asserted after a later event proved the watcher was live (inotify
//! delivers events in order, so an event for the earlier operation would have
//! come first).

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{resolve_executable, Debouncer, FileWatcher, WatchProblem};
use crate::testutil::TempDir;
use mio::{Events, Poll, Token, Waker};

const WAKE: Token = Token(42);
const PATIENCE: Duration = Duration::from_secs(5);

fn write(p: &Path, content: &str) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(p, content).unwrap();
}

/// Set mtime (and atime) by path with utimensat, without opening the file, so the
/// only inotify event is IN_ATTRIB: the change is seen through the fingerprint.
fn set_mtime(p: &Path, secs: i64) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(rc, 0, "utimensat {}", p.display());
}

/// `ln -sfn target link`: a new symlink renamed over the old one (atomic swap).
fn ln_sfn(target: &str, link: &Path) {
    let tmp = link.with_file_name(format!(
        ".{}.tmp",
        link.file_name().unwrap().to_string_lossy()
    ));
    let _ = fs::remove_file(&tmp);
    symlink(target, &tmp).unwrap();
    fs::rename(&tmp, link).unwrap();
}

struct Rig {
    poll: Poll,
    events: Events,
    fw: FileWatcher<String>,
}

impl Rig {
    fn new() -> Rig {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
        let fw = FileWatcher::new(waker).unwrap();
        Rig {
            poll,
            events: Events::with_capacity(16),
            fw,
        }
    }

    fn set(&mut self, files: &[(&Path, &str)]) -> Vec<WatchProblem> {
        let mut wanted: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        for (p, owner) in files {
            wanted
                .entry(p.to_path_buf())
                .or_default()
                .push(owner.to_string());
        }
        self.fw.set(wanted)
    }

    /// One poll round (up to `timeout`); the changed wanted files it brought.
    fn round(&mut self, timeout: Duration) -> Vec<(PathBuf, Vec<String>)> {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Vec::new(),
            Err(e) => panic!("poll: {e}"),
        }
        let woken = self.events.iter().any(|e| e.token() == WAKE);
        if !woken {
            return Vec::new();
        }
        let report = self.fw.take_events();
        for p in &report.problems {
            eprintln!("watch problem: {p}");
        }
        report
            .changed
            .into_iter()
            .map(|c| (c.path, c.owners))
            .collect()
    }

    /// Poll until `want` is reported changed; every change seen on the way,
    /// including `want`'s.
    fn wait_for(&mut self, want: &Path) -> Vec<PathBuf> {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        loop {
            let now = Instant::now();
            assert!(
                now < deadline,
                "no change reported for {} within {PATIENCE:?}; saw {seen:?}; watching {:?}",
                want.display(),
                self.fw.watched_dirs().collect::<Vec<_>>()
            );
            let got = self.round(deadline - now);
            let hit = got.iter().any(|(p, _)| p == want);
            seen.extend(got.into_iter().map(|(p, _)| p));
            if hit {
                return seen;
            }
        }
    }

    /// Prove that nothing of `quiet` was reported for what happened before now:
    /// change `marker` (a wanted file) and wait for it; inotify keeps order, so
    /// anything about `quiet` would have come first.
    fn assert_quiet(&mut self, quiet: &Path, marker: &Path, stamp: i64) {
        set_mtime(marker, stamp);
        let seen = self.wait_for(marker);
        assert!(
            !seen.iter().any(|p| p == quiet),
            "{} reported without a change: {seen:?}",
            quiet.display()
        );
    }
}

#[test]
fn touch_changes_mtime_only_and_is_seen() {
    let d = TempDir::new("touch");
    let app = d.join("app");
    write(&app, "v1");
    let mut rig = Rig::new();
    assert!(rig.set(&[(&app, "web")]).is_empty());
    set_mtime(&app, 1_000_000);
    rig.wait_for(&app);
}

#[test]
fn owners_come_with_the_change() {
    let d = TempDir::new("owners");
    let cfg = d.join("einhyrningsins.toml");
    write(&cfg, "x");
    let mut rig = Rig::new();
    rig.set(&[(&cfg, "config"), (&cfg, "web"), (&cfg, "api")]);
    assert_eq!(
        rig.fw.owners(&cfg).unwrap(),
        &["api".to_string(), "config".into(), "web".into()]
    );
    set_mtime(&cfg, 1_000_000);
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "no change for the config");
        let got = rig.round(PATIENCE);
        if let Some((_, owners)) = got.into_iter().find(|(p, _)| p == &cfg) {
            assert_eq!(owners, vec!["api", "config", "web"]);
            break;
        }
    }
    // A new set replaces the owners; it does not add to them.
    rig.set(&[(&cfg, "config")]);
    assert_eq!(rig.fw.owners(&cfg).unwrap(), &["config".to_string()]);
}

#[test]
fn write_in_place_is_seen() {
    let d = TempDir::new("inplace");
    let app = d.join("app");
    write(&app, "v1");
    let mut rig = Rig::new();
    rig.set(&[(&app, "web")]);
    let mut f = fs::OpenOptions::new().append(true).open(&app).unwrap();
    f.write_all(b" and more").unwrap();
    drop(f);
    rig.wait_for(&app);
}

#[test]
fn replace_by_rename_is_seen_and_seen_again() {
    let d = TempDir::new("rename");
    let app = d.join("app");
    write(&app, "v1");
    let mut rig = Rig::new();
    rig.set(&[(&app, "web")]);
    for v in ["v2", "v3"] {
        let tmp = d.join(".app.tmp");
        write(&tmp, v);
        fs::rename(&tmp, &app).unwrap();
        rig.wait_for(&app);
    }
}

#[test]
fn editor_save_dance_is_seen() {
    let d = TempDir::new("editor");
    let file = d.join("file");
    write(&file, "old");
    let mut rig = Rig::new();
    rig.set(&[(&file, "web")]);
    for round in 0..2 {
        let swp = d.join(".file.swp");
        write(&swp, "swap");
        let _ = fs::remove_file(d.join("file~"));
        fs::rename(&file, d.join("file~")).unwrap();
        write(&file, &format!("new {round}"));
        fs::remove_file(&swp).unwrap();
        rig.wait_for(&file);
    }
}

#[test]
fn delete_then_recreate_is_seen_twice() {
    let d = TempDir::new("delete");
    let app = d.join("app");
    write(&app, "v1");
    let mut rig = Rig::new();
    rig.set(&[(&app, "web")]);
    fs::remove_file(&app).unwrap();
    rig.wait_for(&app);
    write(&app, "v2");
    rig.wait_for(&app);
}

#[test]
fn missing_file_is_seen_when_created() {
    let d = TempDir::new("later");
    let later = d.join("later");
    let mut rig = Rig::new();
    let problems = rig.set(&[(&later, "web")]);
    assert!(problems.is_empty(), "{problems:?}");
    write(&later, "here");
    rig.wait_for(&later);
}

#[test]
fn missing_parent_is_reported_and_watched_from_the_nearest_ancestor() {
    let d = TempDir::new("ancestor");
    let deep = d.join("sub/deeper/file");
    let mut rig = Rig::new();
    let problems = rig.set(&[(&deep, "web")]);
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, WatchProblem::MissingParent { missing, .. } if missing == &d.join("sub"))),
        "{problems:?}"
    );
    assert!(problems[0].to_string().contains("does not exist"));
    // Created in steps, with no pause: the watcher must keep up with each level.
    fs::create_dir(d.join("sub")).unwrap();
    fs::create_dir(d.join("sub/deeper")).unwrap();
    write(&deep, "at last");
    rig.wait_for(&deep);
}

#[test]
fn directories_appearing_on_the_way_are_not_a_change() {
    let d = TempDir::new("dirs");
    let deep = d.join("sub/deeper/file");
    let marker = d.join("marker");
    write(&marker, "m");
    let mut rig = Rig::new();
    rig.set(&[(&deep, "web"), (&marker, "m")]);
    fs::create_dir(d.join("sub")).unwrap();
    rig.assert_quiet(&deep, &marker, 1_000_000);
    fs::create_dir(d.join("sub/deeper")).unwrap();
    rig.assert_quiet(&deep, &marker, 2_000_000);
    write(&deep, "at last");
    rig.wait_for(&deep);
}

#[test]
fn metadata_event_without_a_change_does_not_count() {
    let d = TempDir::new("same");
    let app = d.join("app");
    let marker = d.join("marker");
    write(&app, "v1");
    write(&marker, "m");
    let mut rig = Rig::new();
    rig.set(&[(&app, "web"), (&marker, "m")]);
    set_mtime(&app, 1_000_000);
    rig.wait_for(&app);
    // Same times again, same mode again: inotify reports IN_ATTRIB twice, but
    // nothing about the file changed.
    set_mtime(&app, 1_000_000);
    let mode = fs::metadata(&app).unwrap().permissions();
    fs::set_permissions(&app, mode).unwrap();
    rig.assert_quiet(&app, &marker, 2_000_000);
    // A real chmod is a change.
    fs::set_permissions(&app, fs::Permissions::from_mode(0o700)).unwrap();
    rig.wait_for(&app);
}

#[test]
fn parent_directory_removed_and_recreated_is_followed() {
    let d = TempDir::new("rmdir");
    let app = d.join("sub/app");
    write(&app, "v1");
    let mut rig = Rig::new();
    rig.set(&[(&app, "web")]);
    fs::remove_dir_all(d.join("sub")).unwrap();
    rig.wait_for(&app);
    write(&app, "v2");
    rig.wait_for(&app);
    // The new directory is watched, not the dead inode.
    set_mtime(&app, 1_000_000);
    rig.wait_for(&app);
}

#[test]
fn parent_directory_swapped_by_rename_is_followed() {
    let d = TempDir::new("dirswap");
    let app = d.join("bin/app");
    write(&app, "v1");
    let mut rig = Rig::new();
    rig.set(&[(&app, "web")]);
    write(&d.join("bin.new/app"), "v2");
    fs::rename(d.join("bin"), d.join("bin.old")).unwrap();
    fs::rename(d.join("bin.new"), d.join("bin")).unwrap();
    rig.wait_for(&app);
    // Edits in the old directory (the inode the first watch was on) do not
    // count, edits in the new one do.
    let marker = d.join("marker");
    write(&marker, "m");
    rig.set(&[(&app, "web"), (&marker, "m")]);
    write(&d.join("bin.old/app"), "old, edited");
    rig.assert_quiet(&app, &marker, 1_000_000);
    set_mtime(&app, 2_000_000);
    rig.wait_for(&app);
}

#[test]
fn siblings_and_reads_do_not_count() {
    let d = TempDir::new("siblings");
    let app = d.join("app");
    let marker = d.join("marker");
    write(&app, "v1");
    write(&marker, "m");
    let mut rig = Rig::new();
    rig.set(&[(&app, "web"), (&marker, "marker")]);
    // Liveness first.
    set_mtime(&app, 1_000_000);
    rig.wait_for(&app);
    // A sibling written, created, renamed, removed; the wanted file read.
    write(&d.join("other"), "noise");
    fs::rename(d.join("other"), d.join("other2")).unwrap();
    fs::remove_file(d.join("other2")).unwrap();
    assert_eq!(fs::read_to_string(&app).unwrap(), "v1");
    rig.assert_quiet(&app, &marker, 2_000_000);
}

#[test]
fn symlinked_directory_swap_is_followed() {
    let d = TempDir::new("lnsfn-dir");
    write(&d.join("releases/v1/bin/app"), "one");
    write(&d.join("releases/v2/bin/app"), "two");
    symlink("releases/v1", d.join("current")).unwrap();
    let app = d.join("current/bin/app");
    // The marker lives in its own directory, so that the directory holding the
    // `current` link is watched only because of the chain.
    let marker = d.join("markers/marker");
    write(&marker, "m");
    let mut rig = Rig::new();
    assert!(rig.set(&[(&app, "web"), (&marker, "m")]).is_empty());
    let v1bin = d.join("releases/v1/bin");
    let v2bin = d.join("releases/v2/bin");
    assert!(rig.fw.watched_dirs().any(|p| p == v1bin));

    ln_sfn("releases/v2", &d.join("current"));
    rig.wait_for(&app);
    // The watch followed the link: v2 is watched, v1 no longer.
    assert!(rig.fw.watched_dirs().any(|p| p == v2bin));
    assert!(!rig.fw.watched_dirs().any(|p| p == v1bin));
    // The old release changing is not a change of current/bin/app ...
    write(&d.join("releases/v1/bin/app"), "one, edited");
    rig.assert_quiet(&app, &marker, 1_000_000);
    // ... the new one is.
    write(&d.join("releases/v2/bin/app"), "two, edited");
    rig.wait_for(&app);
}

#[test]
fn symlinked_file_swap_is_followed() {
    let d = TempDir::new("lnsfn-file");
    write(&d.join("v1/app"), "one");
    write(&d.join("v2/app"), "two");
    let current = d.join("current");
    symlink("v1/app", &current).unwrap();
    let mut rig = Rig::new();
    rig.set(&[(&current, "web")]);
    ln_sfn("v2/app", &current);
    rig.wait_for(&current);
    set_mtime(&d.join("v2/app"), 1_000_000);
    rig.wait_for(&current);
}

#[test]
fn chain_of_two_symlinks_is_followed() {
    let d = TempDir::new("chain");
    write(&d.join("v1/app"), "one");
    write(&d.join("v2/app"), "two");
    write(&d.join("v3/app"), "three");
    let a = d.join("a");
    symlink("b", &a).unwrap();
    symlink("v1/app", d.join("b")).unwrap();
    let mut rig = Rig::new();
    assert!(rig.set(&[(&a, "web")]).is_empty());
    // The link in the middle of the chain swaps.
    ln_sfn("v2/app", &d.join("b"));
    rig.wait_for(&a);
    // The final target is edited.
    write(&d.join("v2/app"), "two, edited");
    rig.wait_for(&a);
    // The first link swaps to bypass b.
    ln_sfn("v3/app", &a);
    rig.wait_for(&a);
    write(&d.join("v3/app"), "three, edited");
    rig.wait_for(&a);
}

#[test]
fn symlink_loop_is_reported() {
    let d = TempDir::new("loop");
    let a = d.join("a");
    symlink("b", &a).unwrap();
    symlink("a", d.join("b")).unwrap();
    let mut rig = Rig::new();
    let problems = rig.set(&[(&a, "web")]);
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, WatchProblem::SymlinkLoop { .. })),
        "{problems:?}"
    );
    // Breaking the loop into a real file is seen.
    fs::remove_file(d.join("b")).unwrap();
    write(&d.join("b"), "real");
    rig.wait_for(&a);
}

#[test]
fn twenty_rapid_touches_debounce_to_one_roll() {
    let d = TempDir::new("burst");
    let app = d.join("app");
    write(&app, "v1");
    let mut rig = Rig::new();
    rig.set(&[(&app, "web")]);
    let mut deb: Debouncer<String> = Debouncer::new(Duration::from_millis(200));
    for i in 0..20 {
        set_mtime(&app, 1_000_000 + i);
    }
    let deadline = Instant::now() + PATIENCE;
    let mut events = 0;
    let mut due = Vec::new();
    // Run like the master loop: poll until the next debounce deadline.
    while Instant::now() < deadline && (events == 0 || !deb.is_empty()) {
        let timeout = deb
            .next_deadline()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(deadline - Instant::now());
        for (_, owners) in rig.round(timeout) {
            events += 1;
            for o in owners {
                deb.event(o, Instant::now());
            }
        }
        due.extend(deb.due(Instant::now()));
    }
    assert!(events >= 1, "no event at all");
    assert_eq!(
        due,
        vec!["web".to_string()],
        "after {events} change reports"
    );
}

#[test]
fn shared_directory_is_watched_once_and_released() {
    let d = TempDir::new("refcount");
    let a = d.join("a");
    let b = d.join("b");
    write(&a, "a");
    write(&b, "b");
    let mut rig = Rig::new();
    rig.set(&[(&a, "x"), (&b, "y")]);
    assert_eq!(rig.fw.watched_dirs().collect::<Vec<_>>(), vec![d.path()]);
    rig.set(&[(&b, "y")]);
    assert_eq!(rig.fw.watched_dirs().collect::<Vec<_>>(), vec![d.path()]);
    set_mtime(&b, 1_000_000);
    rig.wait_for(&b);
    rig.set(&[]);
    assert_eq!(rig.fw.watched_dirs().count(), 0);
}

#[test]
fn reload_keeps_a_pending_change() {
    // A file that stays wanted across set() keeps its fingerprint: a change that
    // happened before the new set is still reported.
    let d = TempDir::new("reload");
    let app = d.join("app");
    write(&app, "v1");
    let mut rig = Rig::new();
    rig.set(&[(&app, "web")]);
    set_mtime(&app, 1_000_000);
    rig.set(&[(&app, "web"), (&d.join("other"), "cfg")]);
    rig.wait_for(&app);
}

#[test]
fn inotify_descriptor_is_close_on_exec() {
    let poll = Poll::new().unwrap();
    let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
    let _fw: FileWatcher<String> = FileWatcher::new(waker).unwrap();
    let mut inotify_fds = 0;
    for entry in fs::read_dir("/proc/self/fd").unwrap() {
        let entry = entry.unwrap();
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        if target.as_os_str() != OsStr::new("anon_inode:inotify") {
            continue;
        }
        let fd: i32 = entry.file_name().to_string_lossy().parse().unwrap();
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags == -1 {
            continue; // closed meanwhile by another test
        }
        assert!(
            flags & libc::FD_CLOEXEC != 0,
            "inotify fd {fd} lacks CLOEXEC"
        );
        inotify_fds += 1;
    }
    assert!(inotify_fds >= 1);
}

#[test]
fn resolve_executable_searches_path_like_execvp() {
    let d = TempDir::new("path");
    let a = d.join("a");
    let b = d.join("b");
    // In a, the name exists but is not executable: execvp skips it.
    write(&a.join("tool"), "#!/bin/sh\n");
    write(&b.join("tool"), "#!/bin/sh\n");
    fs::set_permissions(b.join("tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir_all(d.join("c/tool")).unwrap(); // a directory is not a program
    let path = std::env::join_paths([d.join("c"), a.clone(), b.clone()]).unwrap();
    assert_eq!(
        resolve_executable("tool", None, Some(&path)),
        Some(b.join("tool"))
    );
    assert_eq!(resolve_executable("nope", None, Some(&path)), None);
    assert_eq!(resolve_executable("", None, Some(&path)), None);
    // A symlink on PATH is returned as found, not canonicalized.
    symlink(b.join("tool"), d.join("c/link")).unwrap();
    assert_eq!(
        resolve_executable("link", None, Some(&path)),
        Some(d.join("c/link"))
    );
    // An empty PATH entry and a relative entry are relative to the worker's cwd.
    let rel = OsStr::new(":b");
    fs::set_permissions(a.join("tool"), fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        resolve_executable("tool", Some(&a), Some(rel)),
        Some(a.join("tool"))
    );
    assert_eq!(
        resolve_executable("tool", Some(d.path()), Some(OsStr::new("b"))),
        Some(d.join("b").join("tool"))
    );
}

#[test]
fn resolve_executable_with_a_slash_is_a_path() {
    let d = TempDir::new("slash");
    assert_eq!(
        resolve_executable("./bin/app", Some(d.path()), None),
        Some(d.join("./bin/app"))
    );
    assert_eq!(
        resolve_executable("/usr/bin/env", Some(d.path()), None),
        Some(PathBuf::from("/usr/bin/env"))
    );
    // With no PATH at all, execvp's default (/bin:/usr/bin) applies.
    assert!(resolve_executable("sh", None, None).is_some());
}

// The pure debouncer, with synthetic instants.

fn t0() -> Instant {
    Instant::now()
}

const MS: Duration = Duration::from_millis(1);

#[test]
fn debounce_burst_is_one_due() {
    let t = t0();
    let mut d = Debouncer::new(200 * MS);
    for i in 0..20 {
        d.event("web", t + i * 5 * MS);
    }
    // The last event was at +95 ms: due at +295 ms.
    assert_eq!(d.next_deadline(), Some(t + 295 * MS));
    assert!(d.due(t + 294 * MS).is_empty());
    assert_eq!(d.due(t + 295 * MS), vec!["web"]);
    assert!(d.due(t + 10_000 * MS).is_empty(), "due once");
    assert_eq!(d.next_deadline(), None);
    assert!(d.is_empty());
}

#[test]
fn debounce_nothing_due_before_the_deadline() {
    let t = t0();
    let mut d = Debouncer::new(200 * MS);
    assert!(d.due(t).is_empty());
    assert_eq!(d.next_deadline(), None);
    d.event("web", t);
    for ms in [0, 1, 100, 199] {
        assert!(d.due(t + ms * MS).is_empty(), "due at +{ms} ms");
    }
    assert!(d.is_pending(&"web"));
    assert_eq!(d.due(t + 200 * MS), vec!["web"]);
}

#[test]
fn debounce_event_during_the_wait_extends_it() {
    let t = t0();
    let mut d = Debouncer::new(200 * MS);
    d.event("web", t);
    assert!(d.due(t + 150 * MS).is_empty());
    d.event("web", t + 150 * MS);
    assert_eq!(d.next_deadline(), Some(t + 350 * MS));
    assert!(
        d.due(t + 200 * MS).is_empty(),
        "the first deadline no longer holds"
    );
    assert!(d.due(t + 349 * MS).is_empty());
    assert_eq!(d.due(t + 350 * MS), vec!["web"]);
}

#[test]
fn debounce_two_keys_interleaved() {
    let t = t0();
    let mut d = Debouncer::new(200 * MS);
    d.event("api", t);
    d.event("web", t + 50 * MS);
    d.event("api", t + 100 * MS);
    d.event("web", t + 120 * MS);
    d.event("api", t + 130 * MS);
    // web: +320, api: +330.
    assert_eq!(d.next_deadline(), Some(t + 320 * MS));
    assert_eq!(d.due(t + 325 * MS), vec!["web"]);
    assert_eq!(d.next_deadline(), Some(t + 330 * MS));
    // A new event for web after it was due starts a new quiet period.
    d.event("web", t + 326 * MS);
    assert_eq!(d.due(t + 330 * MS), vec!["api"]);
    assert_eq!(d.due(t + 526 * MS), vec!["web"]);
    assert!(d.is_empty());
}

#[test]
fn debounce_late_look_returns_all_due_keys_in_order() {
    let t = t0();
    let mut d = Debouncer::new(200 * MS);
    d.event("web", t);
    d.event("api", t + 10 * MS);
    d.event("cfg", t + 500 * MS);
    assert_eq!(d.due(t + 1000 * MS), vec!["api", "cfg", "web"]);
}

#[test]
fn debounce_cancel_and_delay_change() {
    let t = t0();
    let mut d = Debouncer::new(200 * MS);
    d.event("gone", t);
    d.cancel(&"gone");
    assert_eq!(d.next_deadline(), None);
    assert!(d.due(t + 1000 * MS).is_empty());
    d.set_delay(50 * MS);
    assert_eq!(d.delay(), 50 * MS);
    d.event("web", t);
    assert_eq!(d.due(t + 50 * MS), vec!["web"]);
}

/// Programs started from a watched directory (the parent of a pool's binary,
/// e.g. /usr/bin) open their files there: none of that may wake the loop.
#[test]
fn opening_and_reading_siblings_never_wakes_the_loop() {
    let d = TempDir::new("opens");
    let app = d.join("app");
    let sibling = d.join("other-program");
    write(&app, "v1");
    write(&sibling, "x");
    let mut rig = Rig::new();
    assert!(rig.set(&[(&app, "web")]).is_empty());
    for _ in 0..200 {
        // open + read + close(nowrite) of a sibling, and of the wanted file.
        let _ = fs::read(&sibling).unwrap();
        let _ = fs::read(&app).unwrap();
    }
    // Writing a sibling is not about a wanted file either.
    write(&sibling, "y");
    match rig
        .poll
        .poll(&mut rig.events, Some(Duration::from_millis(300)))
    {
        Ok(()) => {}
        Err(e) => panic!("poll: {e}"),
    }
    assert!(
        !rig.events.iter().any(|e| e.token() == WAKE),
        "the loop was woken by opens, reads or a sibling's write"
    );
    // The watcher is live: a real change does wake it.
    set_mtime(&app, 2_000_000);
    rig.wait_for(&app);
}

/// A file written in place is reported as being written until its writer
/// closes it: what is on disk meanwhile may be a prefix.
#[test]
fn a_file_written_in_place_is_held_until_its_writer_closes_it() {
    let d = TempDir::new("inplace");
    let cfg = d.join("app.toml");
    write(&cfg, "[pools.web]\n");
    let mut rig = Rig::new();
    assert!(rig.set(&[(&cfg, "config")]).is_empty());
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&cfg)
        .unwrap();
    f.write_all(b"[pools.web]\ncommand = [").unwrap();
    f.flush().unwrap();
    // The change is seen, flagged as still being written.
    let deadline = Instant::now() + PATIENCE;
    let mut writing_seen = false;
    while !writing_seen {
        assert!(Instant::now() < deadline, "no report while writing");
        rig.poll.poll(&mut rig.events, Some(PATIENCE)).unwrap();
        if rig.events.iter().any(|e| e.token() == WAKE) {
            let r = rig.fw.take_events();
            for c in r.changed {
                assert!(c.writing, "reported complete before the close: {c:?}");
                writing_seen = true;
            }
        }
    }
    f.write_all(b"\"./w\"]\n").unwrap();
    drop(f);
    // After the close: reported complete.
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "no report after the close");
        rig.poll.poll(&mut rig.events, Some(PATIENCE)).unwrap();
        if rig.events.iter().any(|e| e.token() == WAKE) {
            let r = rig.fw.take_events();
            if r.changed.iter().any(|c| c.path == cfg && !c.writing) {
                break;
            }
        }
    }
    // A rename onto the name is complete at once.
    let tmp = d.join(".app.toml.tmp");
    write(&tmp, "[pools.api]\n");
    fs::rename(&tmp, &cfg).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "no report after the rename");
        rig.poll.poll(&mut rig.events, Some(PATIENCE)).unwrap();
        if rig.events.iter().any(|e| e.token() == WAKE) {
            let r = rig.fw.take_events();
            if let Some(c) = r.changed.iter().find(|c| c.path == cfg) {
                assert!(!c.writing, "{c:?}");
                break;
            }
        }
    }
}
