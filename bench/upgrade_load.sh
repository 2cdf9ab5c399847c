#!/usr/bin/env bash
# Rolling upgrades under HTTP load, against a naive "stop all, start all" restart.
#
# A master keeps 4 example workers (examples/http_worker.rs, manual ack) on one
# port. wrk hammers it for DURATION seconds while a loop, every INTERVAL seconds,
#   rolling:  asks for a smooth upgrade (`einhyrningsinsctl -e upgrade`);
#   stopall:  stops every worker, then starts new ones, on the same master
#             (`set_workers 0`, wait until none is left, `set_workers 4`, wait
#             until 4 acked): the listening socket survives, so connections
#             queue in its backlog instead of being refused;
#   remaster: stops the whole master gracefully (`die`, wait for it to exit) and
#             starts a new one: the socket is closed in between, which is what a
#             service without a socket master goes through;
#   canary:   `upgrade --canary 1` (one new worker, then the pool holds with
#             both versions), then `promote` (the rest rolls);
#   canary-rollback: `upgrade --canary 1`, then `rollback` (the canary is
#             retired, the old version back at full count).
# Each in two client modes: `Connection: close` (a new connection per request)
# and keep-alive. Prints one table row per run (and writes it to $OUT).
#
# Usage: bench/upgrade_load.sh [rolling|stopall|remaster|canary|canary-rollback ...]
# Environment: DURATION (30), INTERVAL (3), CONNS (64), THREADS (2),
#              OUT (target/upgrade-bench.md), MODES ("close keepalive"),
#              WORKER_FLAGS (extra http_worker flags, e.g. "--drain-idle-ms 0").
# Not part of `cargo test`: it takes minutes and wants an otherwise idle machine.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-30}
INTERVAL=${INTERVAL:-3}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
OUT=${OUT:-target/upgrade-bench.md}
MODES=${MODES:-close keepalive}
WORKER_FLAGS=${WORKER_FLAGS:-}
STRATEGIES=("$@")
[ ${#STRATEGIES[@]} -gt 0 ] || STRATEGIES=(rolling stopall remaster)

if ! command -v wrk >/dev/null; then
    echo "installing wrk" >&2
    apt-get update && apt-get install -y wrk
fi
cargo build --release --bins --examples >&2
MASTER=$PWD/target/release/einhyrningsins
CTL=$PWD/target/release/einhyrningsinsctl
WORKER=$PWD/target/release/examples/http_worker

WORK=$(mktemp -d /tmp/ehy-bench.XXXXXX)
MASTER_PID=
cleanup() {
    if [ -n "$MASTER_PID" ]; then kill -TERM "$MASTER_PID" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    if [ -s "$WORK/errors.log" ]; then
        echo "replacements that failed said:" >&2
        sort "$WORK/errors.log" | uniq -c | sort -rn | head -5 >&2
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

SOCK=$WORK/ctl.sock
# A port from the kernel, fixed for the whole run so a restarted master (remaster)
# binds the same one.
ARGV="\"$WORKER\""
for f in $WORKER_FLAGS; do ARGV="$ARGV, \"$f\""; done
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$WORK/app.toml" <<EOF
[control]
socket = "$SOCK"
[log]
level = "warn"
[pools.web]
command = [$ARGV]
count = 4
binds = ["127.0.0.1:$PORT,r"]
ack = "manual"
ack_timeout = "10s"
stop_timeout = "10s"
EOF

ctl() { "$CTL" -d "$SOCK" "$@"; }

# Acked and total worker counts of pool web: "ACKED TOTAL".
counts() {
    ctl -e state 2>/dev/null | python3 -c '
import json, sys
ws = json.load(sys.stdin)["pools"]["web"]["workers"]
print(sum(w["state"] == "acked" for w in ws), len(ws))' 2>/dev/null || echo "- -"
}

# Poll until `counts` prints $1 (e.g. "4 4"), for at most 30 s.
wait_counts() {
    local want=$1 i
    for i in $(seq 1 3000); do
        [ "$(counts)" = "$want" ] && return 0
        sleep 0.01
    done
    echo "timed out waiting for workers: want $want, have $(counts)" >&2
    return 1
}

start_master() {
    "$MASTER" --config "$WORK/app.toml" >>"$WORK/master.log" 2>&1 &
    MASTER_PID=$!
    local i
    for i in $(seq 1 1000); do
        [ -S "$SOCK" ] && ctl -e version >/dev/null 2>&1 && break
        sleep 0.01
    done
    wait_counts "4 4"
}

stop_master() {
    ctl -e die >/dev/null 2>&1 || true
    wait "$MASTER_PID" 2>/dev/null || true
    MASTER_PID=
}

# One replacement of every worker; exit status 0 if it completed.
replace_all() {
    case $1 in
    rolling) ctl -e upgrade >/dev/null 2>>"$WORK/errors.log" ;;
    stopall)
        ctl -e set_workers 0 >/dev/null && wait_counts "0 0" &&
            ctl -e set_workers 4 >/dev/null && wait_counts "4 4"
        ;;
    remaster) stop_master && start_master ;;
    canary)
        ctl --pool web upgrade --canary 1 >/dev/null 2>>"$WORK/errors.log" &&
            ctl --pool web promote >/dev/null 2>>"$WORK/errors.log"
        ;;
    canary-rollback)
        ctl --pool web upgrade --canary 1 >/dev/null 2>>"$WORK/errors.log" &&
            ctl --pool web rollback >/dev/null 2>>"$WORK/errors.log" &&
            wait_counts "4 4"
        ;;
    esac
}

field() { sed -n "$1" "$2" | head -1; }

run() {
    local strategy=$1 mode=$2 header=() done=0 failed=0
    [ "$mode" = close ] && header=(-H "Connection: close")
    start_master
    wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" "${header[@]}" \
        "http://127.0.0.1:$PORT/" >"$WORK/wrk.out" 2>&1 &
    local wrk_pid=$!
    local end=$((SECONDS + DURATION - INTERVAL))
    while sleep "$INTERVAL" && [ $SECONDS -le $end ] && kill -0 $wrk_pid 2>/dev/null; do
        if replace_all "$strategy"; then done=$((done + 1)); else failed=$((failed + 1)); fi
    done
    wait $wrk_pid
    stop_master
    local f=$WORK/wrk.out
    local reqs rps errs non2xx maxlat
    reqs=$(field 's/^ *\([0-9]*\) requests in.*/\1/p' "$f")
    rps=$(field 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' "$f")
    errs=$(field 's/.*Socket errors: connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\).*/\1\/\2\/\3\/\4/p' "$f")
    non2xx=$(field 's/.*Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' "$f")
    maxlat=$(field 's/^ *Latency *[0-9.]*[a-z]* *[0-9.]*[a-z]* *\([0-9.]*[a-z]*\).*/\1/p' "$f")
    local repl=$done
    [ "$failed" -eq 0 ] || repl="$done ($failed failed)"
    printf '| %-8s | %-9s | %8s | %8s | %-21s | %7s | %8s | %-12s |\n' \
        "$strategy" "$mode" "$reqs" "$rps" "${errs:-0/0/0/0}" "${non2xx:-0}" \
        "$maxlat" "$repl" | tee -a "$OUT"
    cp "$f" "target/upgrade-bench-$strategy-$mode.wrk"
}

mkdir -p "$(dirname "$OUT")"
{
    echo "wrk -t$THREADS -c$CONNS -d${DURATION}s, replacement every ${INTERVAL}s, 4 workers${WORKER_FLAGS:+ (http_worker $WORKER_FLAGS)}, $(nproc) CPU(s), $(date -u +%F)"
    echo
    echo "| strategy | client    | requests |    req/s | socket errors c/r/w/t | non-2xx | max lat. | replacements |"
    echo "|----------|-----------|----------|----------|-----------------------|---------|----------|--------------|"
} | tee "$OUT"
for s in "${STRATEGIES[@]}"; do
    for m in $MODES; do
        run "$s" "$m"
    done
done
