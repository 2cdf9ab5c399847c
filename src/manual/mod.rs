//! The generated files: einhyrningsins(1) from the clap definitions
//! (clap_mangen), einhyrningsins.toml(5) from src/config/schema.rs, and the
//! master's completion scripts for bash, zsh and fish (clap_complete). They are
//! committed under man/ and contrib/completions/, so a flag or key added in
//! the code reaches them with `cargo test regenerate_generated_files --
//! --ignored`, and a test fails while they are stale. einhyrningsinsctl(1) and
//! the ctl's scripts are made the same way in src/bin/einhyrningsinsctl/manual.rs.
//! Test-only: nothing here is in the binaries.

pub mod roff;

use clap_complete::Shell;

use crate::config::schema::{self, Section, DURATION, KEYS};

/// einhyrningsins(1).
pub fn master_page() -> String {
    let cmd = crate::cli::command();
    let man = clap_mangen::Man::new(cmd.clone())
        .title("EINHYRNINGSINS")
        .section("1")
        .manual("einhyrningsins manual");
    let mut page = roff::head(&man);
    let check = crate::cli::check_command();
    page.push_str(".SH \"CHECK\"\n");
    page.push_str(&format!(
        "\\fBeinhyrningsins check\\fR \\fIFILE\\fR\n.br\n{}\n",
        roff::escape(
            &check
                .get_long_about()
                .map(|s| s.to_string())
                .unwrap_or_default()
        )
    ));
    if let Some(after) = cmd.get_after_long_help() {
        page.push_str(&roff::sections(&after.to_string()));
    }
    page.push_str(SEE_ALSO_1);
    page
}

const SEE_ALSO_1: &str = ".SH \"FILES\"
.TP
\\fI/tmp/einhorn.sock\\fR
default control socket (\\fB\\-d\\fR, \\fB[control] socket\\fR)
.SH \"SEE ALSO\"
einhyrningsinsctl(1), einhyrningsins.toml(5), einhorn(1), socket(7)
.PP
docs/einhorn.md (differences from einhorn), docs/protocol.md, docs/deploy.md in
the source tree.
";

/// einhyrningsins.toml(5), from the schema.
pub fn config_page() -> String {
    let version = env!("CARGO_PKG_VERSION");
    let mut s = format!(
        ".TH EINHYRNINGSINS.TOML 5 \"\" \"einhyrningsins {version}\" \"einhyrningsins manual\"\n\
         .SH NAME\neinhyrningsins.toml \\- configuration file of einhyrningsins(1)\n\
         .SH SYNOPSIS\n\\fBeinhyrningsins \\-\\-config\\fR \\fIFILE\\fR\n.br\n\
         \\fBeinhyrningsins check\\fR \\fIFILE\\fR\n\
         .SH DESCRIPTION\n\
         A TOML file declares the control socket, logging, watching, the master \
         process and one or more pools of workers (\\fB[pools.NAME]\\fR). Unknown keys, \
         wrong types and bad values are refused with the file, line and key in the \
         message (exit status 2); \\fBeinhyrningsins check\\fR validates a file without \
         running anything. The file is re\\-read on \\fBreload\\fR, on SIGHUP and when \
         it changes on disk: an invalid file is refused and the running configuration \
         kept; otherwise each changed key takes effect as its \\fIOn reload\\fR says.\n\
         .PP\nDurations: {}. Relative paths are relative to the master's working directory.\n",
        roff::escape(DURATION)
    );
    for section in Section::ALL {
        s.push_str(&format!(".SH \"{}\"\n", roff::escape(section.header())));
        for k in schema::keys_of(section) {
            s.push_str(&format!(
                ".TP\n\\fB{}\\fR = \\fI{}\\fR\n{}\n.br\nDefault: {}. On reload: {}.\n",
                roff::escape(k.name),
                roff::escape(k.kind),
                roff::escape(k.help),
                roff::escape(k.default),
                roff::escape(k.reload.describe())
            ));
        }
    }
    s.push_str(&format!(
        ".SH EXAMPLE\n.nf\n{}\n.fi\n",
        roff::escape(EXAMPLE.trim_end())
    ));
    s.push_str(".SH \"SEE ALSO\"\neinhyrningsins(1), einhyrningsinsctl(1)\n");
    let _ = KEYS;
    s
}

const EXAMPLE: &str = r#"[control]
socket = "/run/app/einhorn.sock"

[log]
level = "info"

[pools.web]
command = ["./bin/web", "--workers-from-env"]
count = 4
binds = ["127.0.0.1:8080,r", "[::1]:8080,r"]
ack = "manual"
watch = ["/srv/web/REVISION"]

[pools.jobs]
command = ["./bin/jobs"]
count = 2
"#;

/// The master's completion script for `shell`.
pub fn completion(shell: Shell) -> String {
    let mut cmd = crate::cli::command().subcommand(crate::cli::check_command());
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "einhyrningsins", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Every generated file of the master and what it must hold.
pub fn generated() -> Vec<(&'static str, String)> {
    vec![
        ("man/einhyrningsins.1", master_page()),
        ("man/einhyrningsins.toml.5", config_page()),
        (
            "contrib/completions/einhyrningsins.bash",
            completion(Shell::Bash),
        ),
        (
            "contrib/completions/_einhyrningsins",
            completion(Shell::Zsh),
        ),
        (
            "contrib/completions/einhyrningsins.fish",
            completion(Shell::Fish),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_generated_files_are_current() {
        for (path, want) in generated() {
            roff::check_or_write(path, &want, false);
        }
    }

    #[test]
    #[ignore = "writes man/ and contrib/completions/; run it after changing flags or keys"]
    fn regenerate_generated_files() {
        for (path, want) in generated() {
            roff::check_or_write(path, &want, true);
        }
    }

    /// Every key of the schema is in the (5) page with its default (and in
    /// docs/configuration.md, checked by src/config/schema.rs).
    #[test]
    fn every_key_is_in_the_config_page_with_its_default() {
        let page = config_page();
        for k in KEYS {
            let entry = format!(
                "\\fB{}\\fR = \\fI{}\\fR",
                roff::escape(k.name),
                roff::escape(k.kind)
            );
            let at = page
                .find(&entry)
                .unwrap_or_else(|| panic!("{} missing from einhyrningsins.toml(5)", k.name));
            let rest = &page[at..];
            let end = rest[2..].find(".TP").map_or(rest.len(), |e| e + 2);
            assert!(
                rest[..end].contains(&format!("Default: {}.", roff::escape(k.default))),
                "{}: default missing",
                k.name
            );
        }
        let doc =
            std::fs::read_to_string(roff::root().join("docs/configuration.md")).unwrap_or_default();
        for k in KEYS {
            assert!(doc.contains(&format!("| `{}` |", k.name)), "{}", k.name);
        }
    }

    #[test]
    fn sections_keep_help_layout() {
        let s = roff::sections("SIGNALS\n    HUP   upgrade\n\nEXIT STATUS:\n    0   ok\n");
        assert!(
            s.contains(".SH \"SIGNALS\"\n.nf\nHUP   upgrade\n.sp\n.fi\n"),
            "{s}"
        );
        assert!(s.contains(".SH \"EXIT STATUS\""), "{s}");
        assert_eq!(roff::escape(".x\\y-z"), "\\&.x\\ey\\-z");
    }
}
