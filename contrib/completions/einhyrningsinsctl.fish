complete -c einhyrningsinsctl -s d -l socket-path -d 'Control socket of the master [default: $EINHORN_SOCK_PATH, else /tmp/einhorn.sock]' -r -F
complete -c einhyrningsinsctl -s p -l pool -d 'Pool the command applies to (needed by count-changing commands when the master runs several pools); in the shell, the initial default pool' -r -f -a "(__einhyrningsinsctl_pools)"
complete -c einhyrningsinsctl -l timeout -d 'Give up waiting for the final reply after DUR ("30s", "500ms", "10m", or seconds); 0 waits forever. Default: none for upgrade, upgrade_fleet and reload, 30s otherwise' -r
complete -c einhyrningsinsctl -l canary -d 'With `upgrade`: start a canary of N new workers and hold (then `promote` or `rollback`); 0 forces a full upgrade' -r
complete -c einhyrningsinsctl -s n -l lines -d 'With `logs`: how many recent lines (default 100)' -r
complete -c einhyrningsinsctl -s e -l execute -d 'Command to send; the remaining words are its arguments' -r
complete -c einhyrningsinsctl -l json -d 'Print each reply as the raw JSON line the master sent, instead of its message'
complete -c einhyrningsinsctl -l upgrade -d 'With `reexec`: once the new master runs, roll every pool (einhorn\'s `upgrade`)'
complete -c einhyrningsinsctl -s f -l follow -d 'With `logs` or `events`: follow new lines as they come'
complete -c einhyrningsinsctl -s h -l help -d 'Print help (see more with \'--help\')'
complete -c einhyrningsinsctl -s V -l version -d 'Print version'

# Added to clap_complete's script (src/bin/einhyrningsinsctl/manual.rs): pool
# names from the running master after --pool/-p, command names first.
function __einhyrningsinsctl_pools
    set -l tokens (commandline -opc)
    set -l sock
    set -l i (contains -i -- -d $tokens; or contains -i -- --socket-path $tokens)
    and set sock -d $tokens[(math $i + 1)]
    einhyrningsinsctl $sock --list-pools 2>/dev/null
end
complete -c einhyrningsinsctl -n "__fish_is_first_arg" -f -a "ehlo help check status state inc dec set_workers upgrade upgrade_fleet promote rollback signal die reload reexec events stats logs reopen_logs version louder quieter"
