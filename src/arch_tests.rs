//! The dependency rule of docs/architecture.md, checked on the source tree (so
//! `cargo test`, and with it CI, fails when it is broken):
//!
//! 1. Nothing outside `src/master/` names `Master`.
//! 2. The pure core — `src/pool/` and `src/config/` — does no I/O: no sockets,
//!    files, processes, threads, signals sent, or event loop. (Types such as
//!    `nix`'s `Signal` and `log`'s `LevelFilter` are values, not I/O; the one file
//!    read is `Config::load`'s, of the file it is given.)
//! 3. `pool` depends on `config` only, `config` on nothing in the crate.
//! 4. No import cycle among the crate's top-level modules.
//! 5. Every `file.rs:LINE` anchor in docs/architecture.md points at a line that
//!    still holds what the anchor names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `src/`, as (path relative to the repo, text without
/// comments and without `#[cfg(test)]` modules kept in their own files).
fn sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root().join("src")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p
                    .strip_prefix(root())
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                out.push((rel, strip_comments(&text)));
            }
        }
    }
    out.sort();
    out
}

/// Code without `//` comments (doc comments included) and without the test
/// module at the end of a file (tests may do anything).
fn strip_comments(text: &str) -> String {
    let mut out = String::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let next = lines.get(i + 1).map_or("", |l| l.trim_start());
        if t == "#[cfg(test)]" && next.starts_with("mod ") && next.ends_with('{') {
            // An inline test module: the crate keeps them last in each file.
            break;
        }
        let code = match line.find("//") {
            // Not inside a string literal: good enough for this tree, where
            // `//` in strings only occurs in URLs and is checked below.
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn is_test_file(rel: &str) -> bool {
    rel.ends_with("/tests.rs") || rel.ends_with("arch_tests.rs") || rel.ends_with("testutil.rs")
}

/// The top-level module a file belongs to (`src/master/mod.rs` -> `master`).
fn module_of(rel: &str) -> Option<String> {
    let rest = rel.strip_prefix("src/")?;
    if rest.starts_with("bin/") || rest == "lib.rs" || rest == "main.rs" {
        return None;
    }
    Some(rest.split('/').next()?.trim_end_matches(".rs").to_string())
}

fn words(code: &str) -> impl Iterator<Item = &str> {
    code.split(|c: char| !(c.is_alphanumeric() || c == '_'))
}

#[test]
fn nothing_outside_master_names_master() {
    for (rel, code) in sources() {
        if rel.starts_with("src/master/") || is_test_file(&rel) {
            continue;
        }
        assert!(
            !words(&code).any(|w| w == "Master"),
            "{rel} names `Master`: pass it what it needs instead (docs/architecture.md)"
        );
    }
}

#[test]
fn the_pure_core_does_no_io() {
    const FORBIDDEN: &[&str] = &[
        "std::fs",
        "std::net",
        "std::process",
        "std::os::",
        "std::io",
        "std::thread::spawn",
        "std::env",
        "mio::",
        "libc::",
        "socket2",
        "notify::",
        "nix::sys::socket",
        "nix::sys::wait",
        "nix::unistd",
        "nix::fcntl",
        "signal::kill",
        "log::info",
        "log::warn",
        "log::error",
        "log::debug",
        "log::trace",
        "log::log!",
        "println!",
        "eprintln!",
    ];
    // The one file the core reads: the config file it is asked to load.
    const ALLOWED: &[(&str, &str)] = &[("src/config/mod.rs", "std::fs::read_to_string")];
    for (rel, code) in sources() {
        let core = rel.starts_with("src/pool/") || rel.starts_with("src/config/");
        if !core || is_test_file(&rel) {
            continue;
        }
        for bad in FORBIDDEN {
            for (i, _) in code.match_indices(bad) {
                let rest = &code[i..];
                let allowed = ALLOWED
                    .iter()
                    .any(|(f, what)| *f == rel && rest.starts_with(what));
                assert!(allowed, "{rel} uses `{bad}`: the pure core does no I/O");
            }
        }
    }
}

/// Top-level module -> the top-level modules its (non-test) code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, code) in sources() {
        let Some(m) = module_of(&rel) else { continue };
        if is_test_file(&rel) {
            continue;
        }
        let deps = g.entry(m.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let name: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != m {
                deps.insert(name);
            }
        }
    }
    g
}

#[test]
fn the_core_depends_only_inward() {
    let g = graph();
    let deps = |m: &str| g.get(m).cloned().unwrap_or_default();
    assert!(
        deps("config").is_empty(),
        "config depends on {:?}",
        deps("config")
    );
    assert!(
        deps("pool").iter().all(|d| d == "config"),
        "pool depends on {:?}",
        deps("pool")
    );
}

#[test]
fn no_import_cycle_among_modules() {
    let g = graph();
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(pos) = path.iter().position(|p| p == m) {
            panic!("import cycle: {} -> {m}", path[pos..].join(" -> "));
        }
        path.push(m.to_string());
        for d in g.get(m).into_iter().flatten() {
            visit(d, g, path, done);
        }
        path.pop();
        done.insert(m.to_string());
    }
    let mut done = BTreeSet::new();
    for m in g.keys() {
        visit(m, &g, &mut Vec::new(), &mut done);
    }
}

#[test]
fn architecture_doc_anchors_point_at_what_they_name() {
    let doc_path = root().join("docs/architecture.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap_or_default();
    assert!(!doc.is_empty(), "docs/architecture.md is missing");
    let mut anchors = 0;
    // `src/master/mod.rs:245` (`fn run`)
    for (i, _) in doc.match_indices("`src/") {
        let rest = &doc[i + 1..];
        let Some(end) = rest.find('`') else { continue };
        let anchor = &rest[..end];
        let Some((file, line)) = anchor.rsplit_once(':') else {
            continue;
        };
        let Ok(line) = line.parse::<usize>() else {
            continue;
        };
        let after = &rest[end + 1..];
        let needle = after
            .strip_prefix(" (`")
            .and_then(|a| a.split_once("`)"))
            .map(|(n, _)| n);
        let Some(needle) = needle else {
            panic!("anchor `{anchor}` must be followed by (`the text on that line`)");
        };
        let text = std::fs::read_to_string(root().join(file))
            .unwrap_or_else(|e| panic!("anchor `{anchor}`: {file}: {e}"));
        let got = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
        assert!(
            got.contains(needle),
            "docs/architecture.md: `{anchor}` should hold `{needle}` but is `{}`; \
             update the anchor",
            got.trim()
        );
        anchors += 1;
    }
    assert!(
        anchors >= 20,
        "only {anchors} anchors in docs/architecture.md"
    );
    let _ = Path::new(&doc_path);
}
