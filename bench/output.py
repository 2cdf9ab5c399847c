#!/usr/bin/env python3
"""Worker output capture under a worker writing as fast as it can.

For each scenario a release master runs two pools:

  - `noisy`: one worker running `yes` with a 100-byte line (it writes as fast as
    the pipe takes it), its stdout = "log" (the master's log, here a file the
    master's stderr points to) or a file sink (rotated at 64 MiB, 1 backup);
    absent in the `idle` scenario;
  - `probe`: manual ack; each probe worker is a tiny python3 program that
    takes the time, sends `worker:ack` over the control socket and writes the
    time it sent to a file.

Measured over the window in which the probe acks are taken:

  - master CPU (utime + stime from /proc/PID/stat) per MB captured, and the
    MB/s captured (from `state`: pools.noisy.output.bytes);
  - master RSS (VmRSS at the end, VmHWM peak);
  - probe ack latency: from the probe worker sending `worker:ack` to this
    script receiving the `acked` event on an `events -f` connection (the
    ack's path through the master's loop, plus the event's way out);
  - `version` round trip on a persistent control connection.

Each scenario runs --runs times (interleaved, so a busy moment of the shared
machine hits all of them); the table shows the median over runs of each
figure. Medians and p90 are printed, and the ratio of the noisy scenarios' median ack
latency to the idle one's (target: within 2x).

On a small shared machine the noisy worker itself (`yes` takes a whole core)
competes with the master, the probe and this script for CPU; `--noisy-nice 19`
runs it at the lowest priority, which separates what the master's loop costs
from what the machine's scheduler costs.

Usage: bench/output.py [--acks 30] [--pings 300] [--warmup 1.0] [--noisy-nice N]
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
MASTER = os.path.join(ROOT, "target", "release", "einhyrningsins")
LINE = "x" * 99  # + newline: 100 bytes

PROBE = r"""
import json, os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(os.environ["EINHORN_SOCK_PATH"])
line = (json.dumps({"command": "worker:ack", "pid": os.getpid()}) + "\n").encode()
t = time.time()
s.sendall(line)
with open(os.path.join(sys.argv[1], "sent-%d" % os.getpid()), "w") as f:
    f.write(repr(t))
time.sleep(3600)
"""


class Conn:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(path)
        self.buf = b""

    def send(self, obj):
        self.sock.sendall((json.dumps(obj) + "\n").encode())

    def line(self):
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                out, self.buf = self.buf[:nl], self.buf[nl + 1:]
                return json.loads(out)
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("connection closed")
            self.buf += chunk

    def request(self, obj):
        self.send(obj)
        while True:
            r = self.line()
            if not r.get("wait"):
                return r


def cmd(sock, command, args=(), pool=None):
    c = Conn(sock)
    req = {"command": command, "args": list(args)}
    if pool:
        req["pool"] = pool
    r = c.request(req)
    c.sock.close()
    return r


def state(sock):
    return json.loads(cmd(sock, "state")["message"])


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mem_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for l in f:
            if l.startswith(key + ":"):
                return int(l.split()[1])
    return 0


def wait(what, f, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        v = f()
        if v:
            return v
        time.sleep(0.01)
    raise RuntimeError(f"timed out waiting for {what}")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def scenario(name, sink, acks, pings, warmup, nice):
    d = tempfile.mkdtemp(prefix=f"ehy-out-{name}-")
    sock = os.path.join(d, "ctl.sock")
    probe = os.path.join(d, "probe.py")
    with open(probe, "w") as f:
        f.write(PROBE)
    noisy = ""
    if sink:
        out = '"log"' if sink == "log" else json.dumps(os.path.join(d, "noisy.log"))
        noisy = f"""
[pools.noisy]
command = ["yes", "{LINE}"]
count = 1
ack_timer = "100ms"
stop_signal = "TERM"
stdout = {out}
output_max_bytes = "64MiB"
output_backups = 1
nice = {nice}
"""
    cfg = os.path.join(d, "app.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[control]
socket = "{sock}"
[watch]
enabled = false
[pools.probe]
command = ["python3", "{probe}", "{d}"]
count = 0
ack = "manual"
stop_signal = "TERM"
{noisy}
""")
    errlog = open(os.path.join(d, "master.err"), "wb")
    m = subprocess.Popen([MASTER, "--config", cfg], stdin=subprocess.DEVNULL,
                         stdout=errlog, stderr=errlog)
    try:
        wait("the control socket", lambda: os.path.exists(sock))
        if sink:
            wait("noisy acked", lambda: state(sock)["pools"]["noisy"]["acked"] == 1)
        time.sleep(warmup)
        ev = Conn(sock)
        ev.send({"command": "events", "args": ["-f"]})
        version = Conn(sock)
        version.request({"command": "version"})

        def captured():
            if not sink:
                return 0
            return state(sock)["pools"]["noisy"]["output"]["bytes"]

        b0, c0, t0 = captured(), cpu_secs(m.pid), time.time()
        ack_ms, rtt_ms = [], []
        for i in range(acks):
            cmd(sock, "set_workers", [str(1)], "probe")
            pid = None
            while True:
                e = json.loads(ev.line()["message"])
                if e.get("pool") == "probe" and e["event"] == "spawned":
                    pid = e["pid"]
                if e.get("pool") == "probe" and e["event"] == "acked" and e["pid"] == pid:
                    got = time.time()
                    break
            sent_file = os.path.join(d, f"sent-{pid}")
            sent = float(wait("the probe's send time", lambda: open(sent_file).read()
                              if os.path.exists(sent_file) and os.path.getsize(sent_file) else None))
            ack_ms.append((got - sent) * 1000)
            for _ in range(pings // acks):
                a = time.perf_counter()
                version.request({"command": "version"})
                rtt_ms.append((time.perf_counter() - a) * 1000)
            cmd(sock, "set_workers", ["0"], "probe")
            while True:
                e = json.loads(ev.line()["message"])
                if e.get("pool") == "probe" and e["event"] in ("exited", "died") and e["pid"] == pid:
                    break
        b1, c1, t1 = captured(), cpu_secs(m.pid), time.time()
        rss, hwm = mem_kib(m.pid, "VmRSS"), mem_kib(m.pid, "VmHWM")
        mb = (b1 - b0) / 1e6
        res = {
            "scenario": name,
            "window_s": t1 - t0,
            "mb_per_s": mb / (t1 - t0),
            "cpu_s_per_mb": (c1 - c0) / mb if mb else None,
            "cpu_pct": (c1 - c0) / (t1 - t0) * 100,
            "rss_mib": rss / 1024,
            "hwm_mib": hwm / 1024,
            "ack_median_ms": statistics.median(ack_ms),
            "ack_p90_ms": pct(ack_ms, 90),
            "rtt_median_ms": statistics.median(rtt_ms) if rtt_ms else None,
            "rtt_p99_ms": pct(rtt_ms, 99) if rtt_ms else None,
        }
        if sink:
            st = state(sock)["pools"]["noisy"]["output"]
            res["dropped"] = st["dropped"] + sum(f["stats"]["dropped"] for f in st["files"])
        cmd(sock, "die")
        m.wait(timeout=60)
        return res
    finally:
        if m.poll() is None:
            m.kill()
            m.wait()
        errlog.close()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--acks", type=int, default=30)
    ap.add_argument("--pings", type=int, default=300)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3,
                    help="runs of each scenario, interleaved; the table shows medians over runs")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--noisy-nice", type=int, default=0,
                    help="niceness of the noisy worker (19: it yields the CPU to the rest)")
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT, check=True)
    if not shutil.which("yes") or not shutil.which("python3"):
        print("SKIPPED: needs yes and python3", file=sys.stderr)
        return 1
    runs = {"idle": [], "log": [], "file": []}
    for _ in range(a.runs):
        for name, sink in (("idle", None), ("log", "log"), ("file", "file")):
            runs[name].append(scenario(name, sink, a.acks, a.pings, a.warmup, a.noisy_nice))
    results = []
    for name, rs in runs.items():
        med = {"scenario": name}
        for k, v in rs[0].items():
            if k != "scenario":
                vals = [r[k] for r in rs if r.get(k) is not None]
                med[k] = statistics.median(vals) if vals else None
        med["ack_medians_ms"] = [round(r["ack_median_ms"], 3) for r in rs]
        results.append(med)
    base = results[0]["ack_median_ms"]
    print("| scenario | captured MB/s | master CPU | CPU s per MB | RSS (peak) MiB | probe ack median / p90 ms | ack ratio to idle | `version` RTT median / p99 ms | dropped |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    ok = True
    for r in results:
        ratio = r["ack_median_ms"] / base if base else float("nan")
        if r["scenario"] != "idle" and ratio > 2:
            ok = False
        print("| {scenario} | {mbs} | {cpu:.0f}% | {cpm} | {rss:.1f} ({hwm:.1f}) | {am:.2f} / {ap:.2f} | {ratio:.2f}x | {rm:.3f} / {rp:.3f} | {dr} |".format(
            scenario=r["scenario"],
            mbs="-" if r["scenario"] == "idle" else f"{r['mb_per_s']:.1f}",
            cpu=r["cpu_pct"],
            cpm="-" if r["cpu_s_per_mb"] is None else f"{r['cpu_s_per_mb'] * 1000:.2f} ms",
            rss=r["rss_mib"], hwm=r["hwm_mib"],
            am=r["ack_median_ms"], ap=r["ack_p90_ms"], ratio=ratio,
            rm=r["rtt_median_ms"] or 0, rp=r["rtt_p99_ms"] or 0,
            dr=r.get("dropped", "-"),
        ))
    print(json.dumps(results, indent=1), file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
