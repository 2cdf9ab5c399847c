_einhyrningsinsctl() {
    local i cur prev opts cmd
    COMPREPLY=()
    if [[ "${BASH_VERSINFO[0]}" -ge 4 ]]; then
        cur="$2"
    else
        cur="${COMP_WORDS[COMP_CWORD]}"
    fi
    prev="$3"
    cmd=""
    opts=""

    for i in "${COMP_WORDS[@]:0:COMP_CWORD}"
    do
        case "${cmd},${i}" in
            ",$1")
                cmd="einhyrningsinsctl"
                ;;
            *)
                ;;
        esac
    done

    case "${cmd}" in
        einhyrningsinsctl)
            opts="-d -p -f -n -e -h -V --socket-path --pool --json --timeout --canary --upgrade --follow --lines --execute --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 1 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --socket-path)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -d)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --pool)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -p)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --timeout)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --canary)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --lines)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -n)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --execute)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -e)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
    esac
}

if [[ "${BASH_VERSINFO[0]}" -eq 4 && "${BASH_VERSINFO[1]}" -ge 4 || "${BASH_VERSINFO[0]}" -gt 4 ]]; then
    complete -F _einhyrningsinsctl -o nosort -o bashdefault -o default einhyrningsinsctl
else
    complete -F _einhyrningsinsctl -o bashdefault -o default einhyrningsinsctl
fi

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
            COMPREPLY=($(compgen -W "ehlo help check status state inc dec set_workers upgrade upgrade_fleet promote rollback signal die reload reexec events stats logs reopen_logs version louder quieter" -- "$cur"))
            return 0
        fi
    fi
    _einhyrningsinsctl "$@"
}
complete -F _einhyrningsinsctl_with_pools -o bashdefault -o default einhyrningsinsctl
