#!/usr/bin/env python3
"""Control-socket latency and throughput of a release einhyrningsins master.

Starts a master with one pool of N example workers (manual ack), waits until every
worker has acked, then measures over the real unix control socket:

  - `status` round trip, sequential, on one persistent connection (median, p99);
  - `status` round trip with a new connection per request (median, p99);
  - sequential commands per second for `version` and `status` (persistent
    connection, one request in flight at a time).

Targets (control issue): median under 1 ms, over 5,000 sequential commands/s.
At the end the master is told to `die`; the script exits non-zero if it does not
exit 0 within the deadline or leaves a worker behind.

Usage: bench/control_latency.py [--workers 100] [--requests 2000] [--runs 3]
                                [--no-build]
Run from the repository root. python3 standard library only.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
MASTER = os.path.join(RELEASE, "einhyrningsins")
WORKER = os.path.join(RELEASE, "examples", "http_worker")


def build():
    subprocess.run(
        ["cargo", "build", "--release", "--examples", "--bins"], cwd=ROOT, check=True
    )


class Conn:
    """One control connection; one JSON request, one reply line at a time."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.buf = b""

    def request(self, line):
        self.sock.sendall(line)
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                reply, self.buf = self.buf[:nl], self.buf[nl + 1:]
                return reply
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("master closed the control connection")
            self.buf += chunk

    def close(self):
        self.sock.close()


def req(command):
    return (json.dumps({"command": command, "id": 1}) + "\n").encode()


def call(path, command):
    c = Conn(path)
    try:
        return json.loads(c.request(req(command)))
    finally:
        c.close()


def wait_for(what, timeout, pred, master=None):
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        if master is not None and master.poll() is not None:
            raise RuntimeError(f"master exited ({master.returncode}) while waiting for {what}")
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def state(path):
    return json.loads(call(path, "state")["message"])


def worker_pids(st):
    return [w["pid"] for p in st["pools"].values() for w in p["workers"] if w["pid"]]


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pct(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * p / 100.0))]


def measure(path, n):
    """One run of every measurement; returns a dict of figures (ms, or /s)."""
    out = {}
    status = req("status")

    c = Conn(path)
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        c.request(status)
        lat.append((time.perf_counter() - t) * 1000)
    c.close()
    out["status persistent median ms"] = statistics.median(lat)
    out["status persistent p99 ms"] = pct(lat, 99)

    lat = []
    for _ in range(n):
        t = time.perf_counter()
        c = Conn(path)
        c.request(status)
        c.close()
        lat.append((time.perf_counter() - t) * 1000)
    out["status new-conn median ms"] = statistics.median(lat)
    out["status new-conn p99 ms"] = pct(lat, 99)

    for command in ("version", "status"):
        line = req(command)
        c = Conn(path)
        t = time.perf_counter()
        for _ in range(n):
            c.request(line)
        out[f"{command} sequential cmds/s"] = n / (time.perf_counter() - t)
        c.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=100)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()

    if not args.no_build:
        build()
    for f in (MASTER, WORKER):
        if not os.path.exists(f):
            sys.exit(f"{f} is missing: run cargo build --release --examples --bins")

    tmp = tempfile.mkdtemp(prefix="ehy-bench-")
    sock = os.path.join(tmp, "ctl.sock")
    conf = os.path.join(tmp, "bench.toml")
    with open(conf, "w") as f:
        f.write(
            f"""
[control]
socket = "{sock}"
[log]
level = "warn"
[pools.bench]
command = ["{WORKER}"]
count = {args.workers}
binds = ["127.0.0.1:0"]
ack = "manual"
ack_timeout = "60s"
"""
        )
    log = open(os.path.join(tmp, "master.log"), "w")
    master = subprocess.Popen(
        [MASTER, "--config", conf], stdin=subprocess.DEVNULL, stdout=log, stderr=log
    )
    clean = False
    pids = []
    try:
        wait_for("the control socket", 10, lambda: os.path.exists(sock), master)

        def all_acked():
            try:
                st = state(sock)
            except OSError:
                return None
            ws = st["pools"]["bench"]["workers"]
            ok = len(ws) == args.workers and all(w["state"] == "acked" for w in ws)
            return st if ok else None

        t = time.monotonic()
        st = wait_for(f"{args.workers} acked workers", 60, all_acked, master)
        pids = worker_pids(st)
        print(f"{args.workers} workers acked in {time.monotonic() - t:.2f}s; "
              f"{args.requests} sequential requests per figure, {args.runs} run(s); "
              f"nproc {os.cpu_count()}")

        runs = [measure(sock, args.requests) for _ in range(args.runs)]
        keys = list(runs[0])
        width = max(len(k) for k in keys)
        head = " ".join(f"{'run ' + str(i + 1):>10}" for i in range(args.runs))
        print(f"{'':<{width}} {head} {'median':>10}")
        for k in keys:
            vals = [r[k] for r in runs]
            fmt = "{:>10.0f}" if k.endswith("/s") else "{:>10.3f}"
            cells = " ".join(fmt.format(v) for v in vals)
            print(f"{k:<{width}} {cells} {fmt.format(statistics.median(vals))}")

        med = lambda k: statistics.median(r[k] for r in runs)
        verdicts = [
            ("median status latency < 1 ms (persistent)", med("status persistent median ms") < 1.0),
            ("median status latency < 1 ms (new conn)", med("status new-conn median ms") < 1.0),
            ("> 5,000 sequential cmds/s (version)", med("version sequential cmds/s") > 5000),
            ("> 5,000 sequential cmds/s (status)", med("status sequential cmds/s") > 5000),
        ]
        for what, ok in verdicts:
            print(f"target {what}: {'met' if ok else 'MISSED'}")

        # The master must still be whole: every worker still the same, acked.
        st = state(sock)
        if sorted(worker_pids(st)) != sorted(pids):
            print("workers changed during the benchmark", file=sys.stderr)
        else:
            call(sock, "die")
            code = master.wait(timeout=30)
            left = [p for p in pids if alive(p)]
            clean = code == 0 and not left
            if code != 0:
                print(f"master exited {code}", file=sys.stderr)
            if left:
                print(f"workers left behind: {left}", file=sys.stderr)
    except Exception as e:  # report, then clean up below
        print(f"benchmark failed: {e}", file=sys.stderr)
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()
        for p in pids:
            if alive(p):
                try:
                    os.kill(p, 9)
                except OSError:
                    pass
        log.close()
        if clean:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"master log kept in {tmp}/master.log", file=sys.stderr)
    print("master clean at the end: " + ("yes" if clean else "NO"))
    sys.exit(0 if clean else 1)


if __name__ == "__main__":
    main()
