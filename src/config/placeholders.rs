//! Fd placeholders in a pool's `command`: `{fd:0}` or `{fd:NAME}` in an
//! argument becomes the fd number the worker gets for that socket, so servers
//! that take their socket on the command line (`gunicorn --bind fd://{fd:0}`,
//! `uvicorn --fd {fd:0}`) need no `/bin/sh -c "exec ... $EINHORN_FD_0"` wrapper.
//!
//! - `{fd:N}` (digits) is `binds[N]`; `{fd:NAME}` the bind with `name=NAME`.
//! - The number is the one the worker really gets: with the systemd socket
//!   protocol `3 + N`; with the einhorn protocol the master's own fd number of
//!   the socket (inherited as is, the value of `EINHORN_FD_N`), known only at
//!   spawn time. So a config is parsed and checked here ([`check`]), and
//!   substituted at spawn ([`resolve`]) from the fds the spawn hands down.
//! - `{{fd:` is a literal `{fd:` (the one escape). Every other brace is left as
//!   written, so `{}`, `{{.Name}}` or `${HOME}` in an argument mean what they
//!   meant before.
//! - `command[0]`, the program, is used as written: it is looked up in PATH and
//!   watched, so a placeholder there is an error.
//!
//! Pure: no I/O, unit-tested below.

use super::BindSpec;

/// The fd the systemd socket protocol gives `binds[0]` (SD_LISTEN_FDS_START).
pub const SYSTEMD_FIRST_FD: i32 = 3;

const OPEN: &str = "{fd:";
const ESCAPED: &str = "{{fd:";

/// A piece of one argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// The fd of `binds[i]`.
    Fd(usize),
}

/// A placeholder that names no socket, or is not closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceholderError {
    #[error("{{fd:{what}}}: the pool has no binds[{what}] ({count} bind(s): use {{fd:0}} to {{fd:{last}}}){ESCAPE_HINT}", last = count.saturating_sub(1))]
    NoSuchIndex { what: String, count: usize },
    #[error("{{fd:{name}}}: no bind has name={name} ({known}){ESCAPE_HINT}")]
    NoSuchName { name: String, known: String },
    #[error("{{fd:{name}}}: {n} binds have name={name}; name them apart or use the index")]
    AmbiguousName { name: String, n: usize },
    #[error("{{fd: without a closing }}: write {{fd:0}} or {{fd:NAME}}{ESCAPE_HINT}")]
    Unterminated,
    #[error("{{fd:}} names no socket: write {{fd:0}} or {{fd:NAME}}{ESCAPE_HINT}")]
    Empty,
    #[error("{{fd:{index}}}: no socket is handed down for binds[{index}]")]
    NoFd { index: usize },
    #[error("the program is used as written (looked up in PATH, watched): {{fd:...}} placeholders go in the arguments")]
    InProgram,
}

/// Said with every "unknown placeholder": how to write a literal `{fd:`.
const ESCAPE_HINT: &str = "; a literal {fd: is written {{fd:";

/// Split one argument into text and placeholders, resolving names against
/// `binds`.
pub fn parse(arg: &str, binds: &[BindSpec]) -> Result<Vec<Part>, PlaceholderError> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = arg;
    while let Some(at) = rest.find('{') {
        text.push_str(&rest[..at]);
        let here = &rest[at..];
        if let Some(after) = here.strip_prefix(ESCAPED) {
            text.push_str(OPEN);
            rest = after;
        } else if let Some(after) = here.strip_prefix(OPEN) {
            let close = after.find('}').ok_or(PlaceholderError::Unterminated)?;
            let what = &after[..close];
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Fd(socket_index(what.trim(), binds)?));
            rest = &after[close + 1..];
        } else {
            text.push('{');
            rest = &here[1..];
        }
    }
    text.push_str(rest);
    if !text.is_empty() || parts.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(parts)
}

fn socket_index(what: &str, binds: &[BindSpec]) -> Result<usize, PlaceholderError> {
    if what.is_empty() {
        return Err(PlaceholderError::Empty);
    }
    if what.bytes().all(|b| b.is_ascii_digit()) {
        return match what.parse::<usize>() {
            Ok(i) if i < binds.len() => Ok(i),
            _ => Err(PlaceholderError::NoSuchIndex {
                what: what.to_string(),
                count: binds.len(),
            }),
        };
    }
    let hits: Vec<usize> = binds
        .iter()
        .enumerate()
        .filter(|(_, b)| b.name.as_deref() == Some(what))
        .map(|(i, _)| i)
        .collect();
    match hits.as_slice() {
        [i] => Ok(*i),
        [] => {
            let names: Vec<String> = binds
                .iter()
                .filter_map(|b| b.name.as_ref().map(|n| format!("name={n}")))
                .collect();
            Err(PlaceholderError::NoSuchName {
                name: what.to_string(),
                known: if names.is_empty() {
                    "no bind of this pool has a name".to_string()
                } else {
                    format!("known: {}", names.join(", "))
                },
            })
        }
        many => Err(PlaceholderError::AmbiguousName {
            name: what.to_string(),
            n: many.len(),
        }),
    }
}

/// Every problem in a command, as (index into `command`, error), for `check`.
pub fn check(command: &[String], binds: &[BindSpec]) -> Vec<(usize, PlaceholderError)> {
    let mut errs = Vec::new();
    if let Some(program) = command.first() {
        if program.contains(OPEN) && !program.contains(ESCAPED) {
            errs.push((0, PlaceholderError::InProgram));
        }
    }
    for (i, arg) in command.iter().enumerate().skip(1) {
        if let Err(e) = parse(arg, binds) {
            errs.push((i, e));
        }
    }
    errs
}

/// The arguments (`command[1..]`) with each `{fd:...}` replaced by
/// `fd_text(index)`: the worker's fd number at spawn, or a label for `check`.
/// An index `fd_text` has no fd for is an error, as in [`check`].
pub fn resolve(
    command: &[String],
    binds: &[BindSpec],
    fd_text: impl Fn(usize) -> Option<String>,
) -> Result<Vec<String>, PlaceholderError> {
    command
        .iter()
        .skip(1)
        .map(|arg| {
            // The common case: nothing to parse, nothing to copy twice.
            if !arg.contains(OPEN) {
                return Ok(arg.clone());
            }
            let mut out = String::new();
            for part in parse(arg, binds)? {
                match part {
                    Part::Text(t) => out.push_str(&t),
                    Part::Fd(i) => match fd_text(i) {
                        Some(fd) => out.push_str(&fd),
                        None => return Err(PlaceholderError::NoFd { index: i }),
                    },
                }
            }
            Ok(out)
        })
        .collect()
}

/// The argv a worker of `pool` runs, placeholders resolved, when the command
/// has any (`None` otherwise): for `check`, which knows no fd numbers of the
/// einhorn protocol yet and shows `<EINHORN_FD_n>`, and for `status`/`state`,
/// given the master's fds of the pool's sockets (what einhorn-protocol workers
/// inherit).
pub fn shown_argv(pool: &super::PoolConfig, master_fds: Option<&[i32]>) -> Option<Vec<String>> {
    if !uses_placeholders(&pool.command) {
        return None;
    }
    let systemd = pool.socket_protocol.systemd;
    let fd_text = |i: usize| {
        Some(if systemd {
            (SYSTEMD_FIRST_FD + i as i32).to_string()
        } else {
            match master_fds {
                Some(fds) => fds.get(i)?.to_string(),
                None => format!("<EINHORN_FD_{i}>"),
            }
        })
    };
    let args = resolve(&pool.command, &pool.binds, fd_text).ok()?;
    Some(pool.command.iter().take(1).cloned().chain(args).collect())
}

/// Whether any argument holds a placeholder or the escape (for `check` and
/// `status`, which then show the resolved argv too).
pub fn uses_placeholders(command: &[String]) -> bool {
    command.iter().skip(1).any(|a| a.contains(OPEN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binds(specs: &[&str]) -> Vec<BindSpec> {
        specs
            .iter()
            .map(|s| BindSpec::parse(s).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn fd_of(fds: &'static [i32]) -> impl Fn(usize) -> Option<String> {
        move |i| fds.get(i).map(|f| f.to_string())
    }

    #[test]
    fn by_index_and_by_name_inside_and_alone() -> Result<(), PlaceholderError> {
        let b = binds(&["127.0.0.1:0,name=web", "unix:/tmp/a.sock,name=admin"]);
        let cmd = argv(&[
            "gunicorn",
            "--bind",
            "fd://{fd:0}",
            "--bind=fd://{fd:admin}",
            "{fd:1}",
            "{fd:web}:{fd:admin}",
            "plain",
        ]);
        let out = resolve(&cmd, &b, fd_of(&[7, 12]))?;
        assert_eq!(
            out,
            argv(&["--bind", "fd://7", "--bind=fd://12", "12", "7:12", "plain"])
        );
        // The systemd protocol's numbers: 3 + index.
        let out = resolve(&cmd, &b, |i| {
            Some((SYSTEMD_FIRST_FD + i as i32).to_string())
        })?;
        assert_eq!(out[1], "fd://3");
        assert_eq!(out[2], "--bind=fd://4");
        assert!(check(&cmd, &b).is_empty());
        assert!(uses_placeholders(&cmd));
        assert!(!uses_placeholders(&argv(&["{fd:0}", "x"])));
        Ok(())
    }

    #[test]
    fn shown_argv_per_protocol_and_a_missing_fd_is_an_error() {
        let mut p = super::super::PoolConfig::new("web", argv(&["gunicorn", "fd://{fd:0}", "-w"]));
        p.binds = binds(&["127.0.0.1:0"]);
        assert_eq!(
            shown_argv(&p, None),
            Some(argv(&["gunicorn", "fd://<EINHORN_FD_0>", "-w"]))
        );
        assert_eq!(
            shown_argv(&p, Some(&[9])),
            Some(argv(&["gunicorn", "fd://9", "-w"]))
        );
        p.socket_protocol.systemd = true;
        assert_eq!(
            shown_argv(&p, Some(&[9])),
            Some(argv(&["gunicorn", "fd://3", "-w"]))
        );
        p.command = argv(&["gunicorn", "plain"]);
        assert_eq!(shown_argv(&p, None), None);
        // At spawn, a socket the master does not hand down is not made up.
        let cmd = argv(&["p", "{fd:0}"]);
        assert!(resolve(&cmd, &p.binds, |_| None).is_err());
    }

    #[test]
    fn other_braces_are_left_alone_and_the_escape_is_literal() -> Result<(), PlaceholderError> {
        let b = binds(&["127.0.0.1:0"]);
        let cmd = argv(&[
            "prog",
            "{}",
            "{{.Name}}",
            "${HOME}",
            "{fd}",
            "{FD:0}",
            "{{fd:0}",
            "{{fd:x}} and {fd:0}",
            "{",
            "}",
            "",
        ]);
        let out = resolve(&cmd, &b, fd_of(&[5]))?;
        assert_eq!(
            out,
            argv(&[
                "{}",
                "{{.Name}}",
                "${HOME}",
                "{fd}",
                "{FD:0}",
                "{fd:0}",
                "{fd:x}} and 5",
                "{",
                "}",
                "",
            ])
        );
        assert!(check(&cmd, &b).is_empty());
        assert_eq!(parse("", &b)?, vec![Part::Text(String::new())]);
        assert_eq!(
            parse("a{fd:0}b", &b)?,
            vec![Part::Text("a".into()), Part::Fd(0), Part::Text("b".into())]
        );
        Ok(())
    }

    #[test]
    fn unknown_placeholders_are_errors_naming_what_exists() {
        let b = binds(&["127.0.0.1:0,name=web", "127.0.0.1:0"]);
        let cases: &[(&str, &[&str])] = &[
            ("{fd:2}", &["binds[2]", "2 bind(s)", "{fd:1}", "{{fd:"]),
            (
                "x{fd:99999999999999999999999}",
                &["no binds[99999999999999999999999]"],
            ),
            ("{fd:api}", &["name=api", "known: name=web", "{{fd:"]),
            ("{fd:0", &["without a closing }"]),
            ("{fd:}", &["names no socket"]),
            ("${fd:-3}", &["name=-3", "{{fd:"]),
        ];
        for (arg, needles) in cases {
            let cmd = argv(&["prog", "ok", arg]);
            let errs = check(&cmd, &b);
            assert_eq!(errs.len(), 1, "{arg}: {errs:?}");
            assert_eq!(errs[0].0, 2, "{arg}");
            let msg = errs[0].1.to_string();
            for n in *needles {
                assert!(msg.contains(n), "{arg}: {msg:?} lacks {n:?}");
            }
            assert!(resolve(&cmd, &b, |_| Some("3".into())).is_err(), "{arg}");
        }
        // No binds at all, and no names.
        let e = check(&argv(&["p", "{fd:0}", "{fd:web}"]), &[]);
        assert_eq!(e.len(), 2);
        assert!(e[0].1.to_string().contains("0 bind(s)"), "{}", e[0].1);
        assert!(e[1]
            .1
            .to_string()
            .contains("no bind of this pool has a name"));
        // Two binds with one name.
        let b2 = binds(&["127.0.0.1:0,name=a", "127.0.0.1:0,name=a"]);
        let e = check(&argv(&["p", "{fd:a}"]), &b2);
        assert!(matches!(
            e[0].1,
            PlaceholderError::AmbiguousName { n: 2, .. }
        ));
        // The program is never substituted.
        let e = check(&argv(&["/srv/{fd:0}/bin", "x"]), &b);
        assert_eq!((e[0].0, e[0].1.clone()), (0, PlaceholderError::InProgram));
    }
}
