#!/usr/bin/env python3
"""Watch latency: time from `touch REVISION` to the first worker of the new version.

Runs the release master with one pool of the Rust example worker that watches a
REVISION file (default debounce, 200 ms), then N times: touch the file, and read the
master's log for the pool's "spawned worker ... version V" line of the new version.
The latency is that line's timestamp (the master stamps each log line with the wall
clock, millisecond resolution) minus the wall-clock time of the touch; the time this
script noticed the line (polling the log every 2 ms) is reported too. Between rounds
it waits for the roll to finish (only new-version workers, all acked), so each touch
starts from a quiet pool.

Target (issue 5): debounce + under 100 ms.

Usage: cargo build --release --bins --examples && python3 bench/watch_latency.py [-n 20]
Stdlib only.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
MASTER = os.path.join(REL, "einhyrningsins")
WORKER = os.path.join(REL, "examples", "http_worker")

SPAWNED = re.compile(
    r"^(\S+) .*pool web: spawned worker pid \d+ \(index \d+, version (\d+)\)"
)


def request(sock_path, command):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sock_path)
    s.sendall((json.dumps({"command": command}) + "\n").encode())
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return json.loads(buf)


def state(sock_path):
    return json.loads(request(sock_path, "state")["message"])


def wait(what, f, timeout=30.0, pause=0.002):
    deadline = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(pause)


def settled(sock_path, version, count):
    """The pool runs exactly `count` acked workers, all at `version`."""
    p = state(sock_path)["pools"]["web"]
    ws = p["workers"]
    return (
        p["version"] == version
        and len(ws) == count
        and all(w["state"] == "acked" and w["version"] == version for w in ws)
    )


def parse_ts(text):
    # humantime's RFC 3339 with millis, UTC: 2024-05-01T12:00:00.123Z
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc
    ).timestamp()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=20, help="touches (default 20)")
    ap.add_argument("--count", type=int, default=2, help="workers in the pool")
    args = ap.parse_args()
    for p in (MASTER, WORKER):
        if not os.path.exists(p):
            sys.exit(f"{p} missing: run `cargo build --release --bins --examples`")

    d = tempfile.mkdtemp(prefix="ehy-wbench-")
    sock = os.path.join(d, "ctl.sock")
    rev = os.path.join(d, "REVISION")
    log_path = os.path.join(d, "master.log")
    with open(rev, "w") as f:
        f.write("0\n")
    cfg = os.path.join(d, "app.toml")
    with open(cfg, "w") as f:
        f.write(
            f"""[control]
socket = "{sock}"
[pools.web]
command = ["{WORKER}"]
count = {args.count}
ack_timer = "100ms"
stop_timeout = "5s"
watch = ["{rev}"]
"""
        )
    log = open(log_path, "w")
    master = subprocess.Popen(
        [MASTER, "--config", cfg], stdin=subprocess.DEVNULL, stdout=log, stderr=log
    )
    lat_log, lat_seen = [], []
    try:
        wait("the control socket", lambda: os.path.exists(sock))
        version = wait(
            "the first workers",
            lambda: (lambda p: p["version"] if settled(sock, p["version"], args.count) else None)(
                state(sock)["pools"]["web"]
            ),
        )
        logf = open(log_path)
        logf.read()  # skip the start-up lines
        for i in range(args.n):
            target = version + 1
            t0 = time.time()
            os.utime(rev, None)
            found = None
            pending = ""
            deadline = time.monotonic() + 30
            while found is None:
                pending += logf.read()
                lines = pending.split("\n")
                pending = lines.pop()
                for line in lines:
                    m = SPAWNED.match(line)
                    if m and int(m.group(2)) == target:
                        found = (parse_ts(m.group(1)), time.time())
                        break
                if found is None:
                    if time.monotonic() > deadline:
                        sys.exit(f"round {i}: no worker of version {target} within 30 s")
                    time.sleep(0.002)
            lat_log.append((found[0] - t0) * 1000)
            lat_seen.append((found[1] - t0) * 1000)
            wait("the roll to finish", lambda: settled(sock, target, args.count))
            version = target
            print(
                f"round {i + 1:2}: {lat_log[-1]:6.1f} ms (log stamp), "
                f"{lat_seen[-1]:6.1f} ms (seen)",
                flush=True,
            )
    finally:
        master.send_signal(signal.SIGINT)
        try:
            master.wait(timeout=20)
        except subprocess.TimeoutExpired:
            master.kill()
        log.close()
        shutil.rmtree(d, ignore_errors=True)

    def p90(xs):
        return sorted(xs)[max(0, int(round(0.9 * len(xs))) - 1)]

    print(
        f"\n{args.n} touches, debounce 200 ms, nproc {os.cpu_count()}, "
        f"{datetime.date.today().isoformat()}"
    )
    print(
        f"touch -> first new worker spawned (log stamp, 1 ms resolution): "
        f"median {statistics.median(lat_log):.1f} ms, p90 {p90(lat_log):.1f} ms, "
        f"max {max(lat_log):.1f} ms"
    )
    print(
        f"touch -> line seen by this script (2 ms polling):        "
        f"median {statistics.median(lat_seen):.1f} ms, p90 {p90(lat_seen):.1f} ms"
    )
    over = statistics.median(lat_log) - 200
    print(f"median over the debounce: {over:.1f} ms (target < 100 ms)")


if __name__ == "__main__":
    main()
