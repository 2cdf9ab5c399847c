//! einhyrningsinsctl(1) and the ctl's completion scripts, generated from
//! [`crate::command`] like the master's (src/manual/): committed under man/
//! and contrib/completions/, checked for drift here, rewritten by `cargo test
//! regenerate_generated_files -- --ignored`. The scripts complete pool names
//! from the running master (`--list-pools`, pools.rs) after `--pool`/`-p`,
//! and the master's command names (from its table) as the first word.

#[path = "../../manual/roff.rs"]
mod roff;

use clap_complete::Shell;
use einhyrningsins::protocol;

pub fn page() -> String {
    let cmd = crate::command();
    let man = clap_mangen::Man::new(cmd.clone())
        .title("EINHYRNINGSINSCTL")
        .section("1")
        .manual("einhyrningsins manual");
    let mut page = roff::head(&man);
    if let Some(after) = cmd.get_after_long_help() {
        page.push_str(&roff::sections(&after.to_string()));
    }
    page.push_str(".SH \"SEE ALSO\"\neinhyrningsins(1), einhyrningsins.toml(5), einhornsh(1)\n.PP\ndocs/protocol.md in the source tree.\n");
    page
}

/// The master's command names, for the first word.
fn command_names() -> String {
    protocol::COMMANDS
        .iter()
        .filter(|c| c.scope != protocol::Scope::Worker)
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(" ")
}

const BASH_POOLS: &str = r#"
# Added to clap_complete's script (src/bin/einhyrningsinsctl/manual.rs): pool
# names from the running master after --pool/-p (the master at -d, else
# $EINHORN_SOCK_PATH, else /tmp/einhorn.sock), command names as the first word.
_einhyrningsinsctl_pools() {
    local i sock=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            -d|--socket-path) sock=(-d "${COMP_WORDS[i+1]}") ;;
        esac
    done
    einhyrningsinsctl "${sock[@]}" --list-pools 2>/dev/null
}
_einhyrningsinsctl_with_pools() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"
    if [[ "$prev" == "--pool" || "$prev" == "-p" ]]; then
        COMPREPLY=($(compgen -W "$(_einhyrningsinsctl_pools)" -- "$cur"))
        return 0
    fi
    if [[ "$cur" != -* ]]; then
        local i w words=0
        for ((i = 1; i < COMP_CWORD; i++)); do
            w="${COMP_WORDS[i]}"
            case "$w" in
                -d|--socket-path|-p|--pool|--timeout|--canary) ((i++)) ;;
                -e|--execute) ;;
                -*) ;;
                *) ((words++)) ;;
            esac
        done
        if ((words == 0)); then
            COMPREPLY=($(compgen -W "@COMMANDS@" -- "$cur"))
            return 0
        fi
    fi
    _einhyrningsinsctl "$@"
}
complete -F _einhyrningsinsctl_with_pools -o bashdefault -o default einhyrningsinsctl
"#;

const ZSH_POOLS: &str = r#"
# Added to clap_complete's script (src/bin/einhyrningsinsctl/manual.rs): pool
# names from the running master after --pool/-p.
_einhyrningsinsctl_pools() {
    local -a sock pools
    local i=${words[(I)-d]}
    (( i == 0 )) && i=${words[(I)--socket-path]}
    (( i > 0 )) && sock=(-d ${words[i+1]})
    pools=(${(f)"$(einhyrningsinsctl $sock --list-pools 2>/dev/null)"})
    _describe -t pools 'pool' pools
}
"#;

const FISH_POOLS: &str = r#"
# Added to clap_complete's script (src/bin/einhyrningsinsctl/manual.rs): pool
# names from the running master after --pool/-p, command names first.
function __einhyrningsinsctl_pools
    set -l tokens (commandline -opc)
    set -l sock
    set -l i (contains -i -- -d $tokens; or contains -i -- --socket-path $tokens)
    and set sock -d $tokens[(math $i + 1)]
    einhyrningsinsctl $sock --list-pools 2>/dev/null
end
complete -c einhyrningsinsctl -n "__fish_is_first_arg" -f -a "@COMMANDS@"
"#;

/// The ctl's completion script for `shell`, with pool names from the master.
pub fn completion(shell: Shell) -> String {
    let mut cmd = crate::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "einhyrningsinsctl", &mut out);
    // clap_complete offers hidden flags too; --list-pools is for the scripts.
    let script: String = String::from_utf8_lossy(&out)
        .replace(" --list-pools", "")
        .lines()
        .filter(|l| !l.contains("list-pools"))
        .map(|l| format!("{l}\n"))
        .collect();
    let commands = command_names();
    match shell {
        Shell::Bash => script + &BASH_POOLS.replace("@COMMANDS@", &commands),
        Shell::Zsh => {
            let pool = "[Pool the command applies to";
            let mut s = String::new();
            for line in script.lines() {
                if line.contains(pool) {
                    s.push_str(&line.replace(":NAME:_default'", ":NAME:_einhyrningsinsctl_pools'"));
                } else {
                    s.push_str(line);
                }
                s.push('\n');
                if line.starts_with("#compdef") {
                    s.push_str(ZSH_POOLS);
                }
            }
            s
        }
        Shell::Fish => {
            let mut s = String::new();
            for line in script.lines() {
                if line.contains("-l pool ") {
                    s.push_str(line);
                    s.push_str(" -f -a \"(__einhyrningsinsctl_pools)\"");
                } else {
                    s.push_str(line);
                }
                s.push('\n');
            }
            s + &FISH_POOLS.replace("@COMMANDS@", &commands)
        }
        _ => script,
    }
}

pub fn generated() -> Vec<(&'static str, String)> {
    vec![
        ("man/einhyrningsinsctl.1", page()),
        (
            "contrib/completions/einhyrningsinsctl.bash",
            completion(Shell::Bash),
        ),
        (
            "contrib/completions/_einhyrningsinsctl",
            completion(Shell::Zsh),
        ),
        (
            "contrib/completions/einhyrningsinsctl.fish",
            completion(Shell::Fish),
        ),
    ]
}

#[test]
fn the_committed_generated_files_are_current() {
    for (path, want) in generated() {
        roff::check_or_write(path, &want, false);
    }
}

#[test]
#[ignore = "writes man/ and contrib/completions/; run it after changing flags"]
fn regenerate_generated_files() {
    for (path, want) in generated() {
        roff::check_or_write(path, &want, true);
    }
}

#[test]
fn the_pool_completion_is_wired_in_every_shell() {
    let zsh = completion(Shell::Zsh);
    assert!(
        zsh.matches(":NAME:_einhyrningsinsctl_pools'").count() >= 2,
        "clap_complete's zsh output changed: -p and --pool no longer get the pool completer\n{zsh}"
    );
    let fish = completion(Shell::Fish);
    assert!(
        fish.contains("-l pool") && fish.contains("(__einhyrningsinsctl_pools)"),
        "{fish}"
    );
    let bash = completion(Shell::Bash);
    assert!(
        bash.contains("_einhyrningsinsctl \"$@\"")
            && bash.contains("complete -F _einhyrningsinsctl "),
        "{bash}"
    );
    assert!(
        bash.contains(" status ") || bash.contains("status "),
        "{bash}"
    );
}
