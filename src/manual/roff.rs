//! Small pieces shared by the generators of the manual pages and completion
//! scripts of both binaries (this file is also included, by path, into
//! einhyrningsinsctl's tests): roff escaping, `--help` epilogues turned into
//! man sections, and the check-or-write step of the drift tests.

use std::path::{Path, PathBuf};

/// Text made safe for roff: backslashes, and a `.` or `'` that starts a line.
pub fn escape(text: &str) -> String {
    let mut out = String::new();
    for line in text.split('\n') {
        let line = line.replace('\\', "\\e").replace('-', "\\-");
        if line.starts_with('.') || line.starts_with('\'') {
            out.push_str("\\&");
        }
        out.push_str(&line);
        out.push('\n');
    }
    out.pop();
    out
}

/// A `--help` epilogue as man sections: a line at the margin (`SIGNALS`,
/// `EXIT STATUS:`) starts a section; what follows is kept as
/// written (no fill), so the tables and examples of `--help` stay aligned.
pub fn sections(text: &str) -> String {
    let mut out = String::new();
    let mut open = false;
    for line in text.lines() {
        // --help indents every body line: a line at the margin is a heading.
        let head = line.trim_end_matches(':');
        let is_head = !line.starts_with(' ') && !head.trim().is_empty();
        if is_head {
            if open {
                out.push_str(".fi\n");
            }
            out.push_str(&format!(".SH \"{}\"\n.nf\n", escape(head)));
            open = true;
        } else {
            // Section bodies are indented by four in --help; the page indents.
            let body = line.strip_prefix("    ").unwrap_or(line);
            if body.is_empty() {
                out.push_str(".sp\n");
            } else {
                out.push_str(&escape(body));
                out.push('\n');
            }
        }
    }
    if open {
        out.push_str(".fi\n");
    }
    out
}

/// What clap_mangen renders of a page: title, NAME, SYNOPSIS, DESCRIPTION and
/// OPTIONS (the rest, from the `--help` epilogue, is [`sections`]).
pub fn head(man: &clap_mangen::Man) -> String {
    type Part = fn(&clap_mangen::Man, &mut dyn std::io::Write) -> std::io::Result<()>;
    let parts: [Part; 5] = [
        clap_mangen::Man::render_title,
        clap_mangen::Man::render_name_section,
        clap_mangen::Man::render_synopsis_section,
        clap_mangen::Man::render_description_section,
        clap_mangen::Man::render_options_section,
    ];
    let mut out = Vec::new();
    for part in parts {
        part(man, &mut out).unwrap_or_else(|e| panic!("render: {e}"));
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// How to bring the committed generated files up to date.
pub const REGENERATE: &str = "cargo test regenerate_generated_files -- --ignored";

/// Drift check: `path` (relative to the root) must hold `want`; with `write`,
/// make it so instead.
pub fn check_or_write(path: &str, want: &str, write: bool) {
    let p: PathBuf = root().join(path);
    if write {
        if let Some(dir) = Path::new(&p).parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        std::fs::write(&p, want).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        return;
    }
    let have = std::fs::read_to_string(&p).unwrap_or_default();
    assert!(
        have == want,
        "{path} is out of date with its source (clap definitions, src/config/schema.rs): \
         run `{REGENERATE}` and commit the result"
    );
}
