# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_einhyrningsins_global_optspecs
    string join \n n/number= b/bind= 4/ipv4-only 6/ipv6-only v/verbose q/quiet syslog m/manual ack-mode= drop-env-var= d/socket-path= r/retries= l/backlog= s/seconds= t/signal-timeout= g/command-socket-as-fd k/kill-children-on-exit e/pidfile= f/lockfile= c/command-name= subreaper metrics= max-unacked= max-upgrade-additional= stop-signal= upgrade= config= watch no-watch nice= reexec-as= no-upgrade-check p/preload= gc-before-fork h/help V/version
end

function __fish_einhyrningsins_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_einhyrningsins_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_einhyrningsins_using_subcommand
    set -l cmd (__fish_einhyrningsins_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -s n -l number -d 'How many worker processes to run [default: 1]' -r
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -s b -l bind -d 'Socket to bind and pass to workers; repeatable. OPT: r (SO_REUSEADDR), b (blocking; listeners are O_NONBLOCK otherwise, as einhorn\'s; n is accepted), nodelay (TCP_NODELAY), reuseport, backlog=N, mode=OCTAL (unix sockets), name=NAME. Also [IPV6]:PORT and unix:/PATH' -r
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -l ack-mode -d 'Ack mode: manual, timer, or SECONDS (timer ack after that long alive)' -r
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -l drop-env-var -d 'Remove VAR from the workers\' environment; repeatable' -r
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -s d -l socket-path -d 'Path of the control socket [default: /tmp/einhorn.sock]' -r -F
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -s r -l retries -d 'Give up after COUNT consecutive failed spawns (upgrades: abandon after COUNT failures, default 3)' -r
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -s l -l backlog -d 'listen(2) backlog for every -b without its own backlog=N' -r
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -s s -l seconds -d 'Delay before respawning a dead worker (grows x1.5 per crash, capped at 30 s) [default: 1]' -r
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -s t -l signal-timeout -d 'How long a stopping worker may take before SIGKILL [default: 30]' -r
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -s e -l pidfile -d 'Write the master\'s pid to PATH' -r -F
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -s f -l lockfile -d 'Hold an exclusive lock on PATH while running' -r -F
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -s c -l command-name -d 'Name of the master in logs and the process list; also the pool name [default pool name: main]' -r
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -l metrics -d 'Serve Prometheus metrics at GET /metrics on ADDR (HOST:PORT, or a unix socket path with a `/`); off by default' -r
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -l max-unacked -d 'At most N unacked workers at a time while upgrading [default: number of CPUs]' -r
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -l max-upgrade-additional -d 'At most N workers beyond COUNT during a smooth upgrade [default: COUNT]' -r
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -l stop-signal -d 'Signal that asks a worker to stop gracefully [default: USR2]' -r
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -l upgrade -d 'Upgrade strategy: smooth (one by one) or fleet (all at once) [default: smooth]' -r
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -l config -d 'Read pools from a TOML file instead of PROGRAM and pool flags' -r -F
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -l nice -d 'einhorn\'s MASTER[:WORKER[:RENICE_CMD]]: the workers\' niceness (pool `nice`): WORKER if given, else MASTER. The master keeps its own (start it under nice(1)); RENICE_CMD is not needed (setpriority(2))' -r
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -l reexec-as -d 'What `reexec` runs in place of this binary, split on whitespace ([master] reexec_as)' -r
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -s p -l preload -d 'einhorn (Ruby only): load PATH into the master and fork without exec. Accepted and ignored with a warning: workers are always exec\'d' -r -F
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -s 4 -l ipv4-only -d 'Resolve bind host names to IPv4 addresses only'
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -s 6 -l ipv6-only -d 'Resolve bind host names to IPv6 addresses only'
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -s v -l verbose -d 'More verbose logging: -v debug, -vv trace'
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -s q -l quiet -d 'Less logging: -q warnings and errors only, -qq errors only'
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -l syslog -d 'Also log WARN and above to syslog'
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -s m -l manual -d 'Manual ack: each worker must send worker:ack to the control socket in time. einhorn\'s `-m manual`, `-m timer` and `-m SECONDS` work too'
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -s g -l command-socket-as-fd -d 'Give each worker an fd already connected to the control socket (EINHORN_SOCK_FD)'
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -s k -l kill-children-on-exit -d 'Workers get their stop signal if the master dies'
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -l subreaper -d 'Become a child subreaper (PR_SET_CHILD_SUBREAPER): orphans of workers are re-parented to the master and reaped quietly, as by PID 1 in a container'
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -l watch -d 'Roll a pool when its binary or watched files change (the default)'
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -l no-watch -d 'Do not watch files'
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -l no-upgrade-check -d '`reexec` execs the new binary without running its check mode first ([master] upgrade_check = false)'
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -l gc-before-fork -d 'einhorn (Ruby only): run Ruby\'s GC before forking. Accepted and ignored with a warning'
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -s V -l version -d 'Print version'
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -a "check" -d 'Validate a TOML configuration file without running anything'
complete -c einhyrningsins -n "__fish_einhyrningsins_needs_command" -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c einhyrningsins -n "__fish_einhyrningsins_using_subcommand check" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c einhyrningsins -n "__fish_einhyrningsins_using_subcommand help; and not __fish_seen_subcommand_from check help" -f -a "check" -d 'Validate a TOML configuration file without running anything'
complete -c einhyrningsins -n "__fish_einhyrningsins_using_subcommand help; and not __fish_seen_subcommand_from check help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
