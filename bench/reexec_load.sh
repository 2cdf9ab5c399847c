#!/usr/bin/env bash
# The master re-execs itself under HTTP load (issue 12): REEXECS re-execs, one
# every INTERVAL seconds, while wrk (keep-alive connections) and then ab (a new
# connection per request) hammer a pool of 4 example workers. Counts failed
# requests and refused or reset connections; prints one table row per client
# (also written to $OUT).
#
# Usage: bench/reexec_load.sh
# Environment: REEXECS (20), INTERVAL (1), CONNS (64), THREADS (2),
#              OUT (target/reexec-bench.md), CHECK (true: run the upgrade check).
# Not part of `cargo test`: it takes about a minute and wants an idle machine.
set -euo pipefail

cd "$(dirname "$0")/.."
REEXECS=${REEXECS:-20}
INTERVAL=${INTERVAL:-1}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
OUT=${OUT:-target/reexec-bench.md}
CHECK=${CHECK:-true}
DURATION=$((REEXECS * INTERVAL + 4))

for tool in wrk ab; do
    if ! command -v $tool >/dev/null; then
        echo "installing $tool" >&2
        apt-get update && apt-get install -y wrk apache2-utils
    fi
done
cargo build --release --bins --examples >&2
MASTER=$PWD/target/release/einhyrningsins
CTL=$PWD/target/release/einhyrningsinsctl
WORKER=$PWD/target/release/examples/http_worker

WORK=$(mktemp -d /tmp/ehy-reexec-bench.XXXXXX)
MASTER_PID=
cleanup() {
    if [ -n "$MASTER_PID" ]; then kill -INT "$MASTER_PID" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

SOCK=$WORK/ctl.sock
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$WORK/app.toml" <<TOML
[control]
socket = "$SOCK"
[log]
level = "warn"
[master]
upgrade_check = $CHECK
[pools.web]
command = ["$WORKER"]
count = 4
binds = ["127.0.0.1:$PORT,r"]
ack = "manual"
TOML
"$MASTER" --config "$WORK/app.toml" >>"$WORK/master.log" 2>&1 &
MASTER_PID=$!
for i in $(seq 1 1000); do
    "$CTL" -d "$SOCK" -e check >/dev/null 2>&1 && break
    sleep 0.01
done

# REEXECS re-execs, INTERVAL apart; prints "done/asked" and the median time.
reexec_loop() {
    python3 - "$CTL" "$SOCK" "$REEXECS" "$INTERVAL" <<'PY'
import statistics, subprocess, sys, time
ctl, sock, n, interval = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
took, ok = [], 0
time.sleep(1)
for _ in range(n):
    t0 = time.perf_counter()
    r = subprocess.run([ctl, "-d", sock, "-e", "reexec"], capture_output=True, text=True)
    took.append(time.perf_counter() - t0)
    ok += r.returncode == 0 and "Re-exec done" in r.stdout
    if r.returncode != 0:
        print(r.stderr.strip(), file=sys.stderr)
    time.sleep(max(0.0, interval - took[-1]))
print("%d/%d %.1f" % (ok, n, statistics.median(took) * 1000))
PY
}

PID_BEFORE=$MASTER_PID
WORKERS_BEFORE=$("$CTL" -d "$SOCK" -e state | python3 -c 'import json,sys; print(sorted(w["pid"] for w in json.load(sys.stdin)["pools"]["web"]["workers"]))')

row() { echo "$1" | tee -a "$OUT"; }
mkdir -p "$(dirname "$OUT")"
: >"$OUT"
row "| client | requests | failed | refused / reset / timeouts | re-execs done | median reexec round trip |"
row "|--------|----------|--------|-----------------------------|---------------|--------------------------|"

# wrk, keep-alive.
reexec_loop >"$WORK/loop-wrk" &
LOOP=$!
wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$PORT/" >"$WORK/wrk.out" 2>&1
wait $LOOP
python3 - "$WORK/wrk.out" "$(cat "$WORK/loop-wrk")" <<'PY' | tee -a "$OUT"
import re, sys
text = open(sys.argv[1]).read()
done, ms = sys.argv[2].split()
reqs = re.search(r"(\d+) requests in", text).group(1)
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errs = "/".join(m.groups()) if m else "0/0/0/0"
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print("| wrk keep-alive (-c%s) | %s | %s | connect/read/write/timeout %s | %s | %s ms |" % (
    re.search(r"(\d+) connections", text).group(1), reqs, non2xx.group(1) if non2xx else "0", errs, done, ms))
PY

# ab, a new connection per request (no -k); -r: count receive errors, go on.
reexec_loop >"$WORK/loop-ab" &
LOOP=$!
ab -r -q -c 16 -t "$DURATION" -n 50000000 "http://127.0.0.1:$PORT/" >"$WORK/ab.out" 2>&1 || true
wait $LOOP
python3 - "$WORK/ab.out" "$(cat "$WORK/loop-ab")" <<'PY' | tee -a "$OUT"
import re, sys
text = open(sys.argv[1]).read()
done, ms = sys.argv[2].split()
def num(label):
    m = re.search(label + r":\s+(\d+)", text)
    return m.group(1) if m else "?"
m = re.search(r"\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)\)", text)
detail = "connect %s, receive %s, length %s, exceptions %s" % m.groups() if m else "none (ab lists them only when some failed)"
non2xx = re.search(r"Non-2xx responses:\s+(\d+)", text)
print("| ab new connections (-c16) | %s | %s (non-2xx %s) | %s | %s | %s ms |" % (
    num("Complete requests"), num("Failed requests"), non2xx.group(1) if non2xx else "0", detail, done, ms))
PY

PID_AFTER=$(cat /proc/$MASTER_PID/stat 2>/dev/null | cut -d' ' -f1)
WORKERS_AFTER=$("$CTL" -d "$SOCK" -e state | python3 -c 'import json,sys; print(sorted(w["pid"] for w in json.load(sys.stdin)["pools"]["web"]["workers"]))')
row ""
row "master pid $PID_BEFORE -> ${PID_AFTER:-gone}; workers $WORKERS_BEFORE -> $WORKERS_AFTER"
