#!/usr/bin/env python3
"""einhyrningsins benchmark suite (issue 6): the master's figures, measured from
outside through /proc and the control socket, with python3's stdlib only.

Each figure starts its own master from a generated TOML config in a temp dir, with
examples/ack_worker as the worker, and stops it. Every worker carries a unique
`--tag=` argument so the suite can check, at the end of each figure and of the
whole run, that no worker is left (and kill any that is, reporting it as a failure).

Usage: bench/run [--quick] [--only NAME[,NAME...]] [--runs N]
"""

import argparse
import calendar
import re
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MASTER = os.environ.get("BENCH_MASTER") or os.path.join(ROOT, "target/release/einhyrningsins")
WORKER = os.path.join(ROOT, "target/release/examples/ack_worker")
RESULTS = os.path.join(ROOT, "bench/results")
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
# "2026-11-25T07:46:13.761Z INFO  pool a: worker pid 20978 acked (index 0, ..."
ACK_LINE = re.compile(rb"^(\S+Z) INFO +pool (\S+): worker pid \d+ acked ")
RUN_TAG = "einhbench-%d-%d" % (os.getpid(), int(time.time()))


class BenchError(Exception):
    pass


# ---- /proc ---------------------------------------------------------------------


def cpu_secs(pid):
    """utime+stime of every thread of pid, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def runqueue_secs(pid):
    """Time the master's main thread spent runnable but waiting for a CPU."""
    with open("/proc/%d/schedstat" % pid) as f:
        return int(f.read().split()[1]) / 1e9


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def status_field(pid, name):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise BenchError("no %s in /proc/%d/status" % (name, pid))


def tagged_pids(tag):
    """Processes whose argv carries `tag` (workers of one run)."""
    needle = tag.encode()
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                if needle in f.read():
                    found.append(int(d))
        except OSError:
            pass
    return found


def wait_for(cond, timeout, what, step=0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise BenchError("timed out after %.0fs waiting for %s" % (timeout, what))
        time.sleep(step)


# ---- control client ------------------------------------------------------------


class Ctl:
    """A persistent JSON-lines connection to the control socket."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")

    def send(self, command, **kw):
        req = dict(command=command, **kw)
        self.sock.sendall(json.dumps(req).encode() + b"\n")

    def read(self):
        line = self.file.readline()
        if not line:
            raise BenchError("control connection closed")
        return json.loads(line)

    def call(self, command, **kw):
        self.send(command, **kw)
        return self.read()

    def state(self):
        return json.loads(self.call("state")["message"])

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---- a master under test -------------------------------------------------------


class Master:
    def __init__(self, pools, name, extra_pool=None, extra_master=None):
        """pools: {name: (count, crash)}."""
        self.dir = tempfile.mkdtemp(prefix="einhbench-%s-" % name)
        self.sock = os.path.join(self.dir, "control.sock")
        self.tag = "--tag=%s-%s" % (RUN_TAG, name)
        lines = ["[control]", 'socket = "%s"' % self.sock, ""]
        if extra_master:
            lines.append("[master]")
            lines += ["%s = %s" % kv for kv in extra_master.items()]
            lines.append("")
        for pname, (count, crash) in pools.items():
            argv = [WORKER, self.tag] + (["--crash"] if crash else [])
            lines += [
                "[pools.%s]" % pname,
                "command = %s" % json.dumps(argv),
                "count = %d" % count,
                'ack = "manual"',
                'ack_timeout = "60s"',
                'stop_timeout = "20s"',
                "max_unacked = 8",
            ]
            for k, v in (extra_pool or {}).items():
                lines.append("%s = %s" % (k, v))
            lines.append("")
        self.config = os.path.join(self.dir, "bench.toml")
        with open(self.config, "w") as f:
            f.write("\n".join(lines))
        # Not beside the config: the master watches that directory (reload on
        # change), and a log written there would wake its watcher on every line.
        os.mkdir(os.path.join(self.dir, "log"))
        self.log_path = os.path.join(self.dir, "log", "master.log")
        self.proc = None
        self._log_off = 0
        self._acks = {}
        self._last_ack = None
        self.t_start = None
        self.t_start_wall = None
        self.peak_rss = 0

    def start(self):
        log = open(self.log_path, "wb")
        self.t_start = time.monotonic()
        self.t_start_wall = time.time()
        self.proc = subprocess.Popen(
            [MASTER, "--config", self.config],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_for(lambda: os.path.exists(self.sock) or self.proc.poll() is not None, 10, "the control socket")
        if self.proc.poll() is not None:
            raise BenchError("master exited at start:\n" + self.log())
        return self

    @property
    def pid(self):
        return self.proc.pid

    def ctl(self):
        return Ctl(self.sock)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def log_lines(self):
        with open(self.log_path, "rb") as f:
            return f.read().count(b"\n")

    def acked_from_log(self, pools):
        """Wait-free completion check that costs the master nothing (polling
        `state` would add its CPU and its allocations to what is measured): count
        the "acked" log lines per pool. Returns the wall-clock time (time.time())
        of the last ack once every pool has `count` of them, else None."""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_off)
            data = f.read()
        cut = data.rfind(b"\n") + 1
        self._log_off += cut
        for line in data[:cut].split(b"\n"):
            m = ACK_LINE.match(line)
            if m:
                name = m.group(2).decode()
                self._acks[name] = self._acks.get(name, 0) + 1
                self._last_ack = m.group(1).decode()
        if all(self._acks.get(p, 0) >= n for p, n in pools.items()) and self._last_ack:
            return calendar.timegm(time.strptime(self._last_ack[:19], "%Y-%m-%dT%H:%M:%S")) + float(
                "0" + self._last_ack[19:23])
        return None

    def acked_all(self, ctl, pools):
        """Poll `state` until every pool has `count` acked workers; returns the
        monotonic time the last ack was recorded (from acked_secs_ago)."""
        st = ctl.state()
        t_now = time.monotonic()
        last_ago = None
        for name, want in pools.items():
            p = st["pools"].get(name)
            if p is None or p["acked"] < want or p.get("upgrading"):
                return None
            if len(p["workers"]) != want:
                return None
            for w in p["workers"]:
                ago = w.get("acked_secs_ago")
                if ago is None:
                    return None
                last_ago = ago if last_ago is None else min(last_ago, ago)
        return t_now - (last_ago or 0.0)

    def sample_rss(self):
        try:
            rss = status_field(self.pid, "VmRSS")
            self.peak_rss = max(self.peak_rss, rss)
            return rss
        except (OSError, BenchError):
            return 0

    def stop(self, timeout=60):
        """Graceful stop; escalate if needed. Returns (seconds, leftover workers)."""
        t0 = time.monotonic()
        if self.proc and self.proc.poll() is None:
            try:
                c = self.ctl()
                c.call("die")
                c.close()
            except (OSError, BenchError):
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        took = time.monotonic() - t0
        # Workers die with their master's stop signal; give stragglers a moment.
        left = []
        deadline = time.monotonic() + 5
        while True:
            left = tagged_pids(self.tag)
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return took, left


# ---- figures -------------------------------------------------------------------


def spawn_run(n):
    m = Master({"w": (n, False)}, "spawn%d" % n).start()
    ctl = None
    try:
        t_last = wait_for(lambda: m.acked_from_log({"w": n}), 120, "%d acks" % n, step=0.02)
        cpu = cpu_secs(m.pid)
        rq = runqueue_secs(m.pid)
        rss = m.sample_rss()
        return {
            "secs": t_last - m.t_start_wall,
            "cpu_ms_per_worker": cpu * 1000.0 / n,
            "runqueue_secs": rq,
            "rss_kib": rss,
            "load": loadavg(),
        }
    finally:
        if ctl:
            ctl.close()
        _stop_checked(m)


def _try_ctl(m):
    try:
        return m.ctl()
    except OSError:
        return None


LEFTOVERS = []


def _stop_checked(m, timeout=60):
    took, left = m.stop(timeout)
    if left:
        LEFTOVERS.append((m.tag, len(left)))
    return took


def upgrade_run(n=100):
    m = Master({"w": (n, False)}, "upgrade").start()
    ctl = None
    try:
        ctl = wait_for(lambda: _try_ctl(m), 10, "control connection")
        wait_for(lambda: m.acked_all(ctl, {"w": n}), 60, "%d acks" % n, step=0.05)
        t0 = time.monotonic()
        ctl.send("upgrade", pool="w")
        while True:
            r = ctl.read()
            if not r.get("wait"):
                break
        took = time.monotonic() - t0
        if r.get("error") or "Upgrade done" not in r.get("message", ""):
            raise BenchError("upgrade failed: %r" % r)
        return {"secs": took}
    finally:
        if ctl:
            ctl.close()
        _stop_checked(m)


def footprint_run(n):
    m = Master({"w": (n, False)}, "rss%d" % n).start()
    ctl = None
    try:
        t_last = wait_for(lambda: m.acked_from_log({"w": n}), 300, "%d acks" % n, step=0.05)
        time.sleep(0.2)
        return {
            "rss_kib": m.sample_rss(),
            "anon_kib": status_field(m.pid, "RssAnon"),
            "file_kib": status_field(m.pid, "RssFile"),
            "secs": t_last - m.t_start_wall,
        }
    finally:
        if ctl:
            ctl.close()
        _stop_checked(m, timeout=120)


def idle_run(secs, n=100):
    m = Master({"w": (n, False)}, "idle").start()
    try:
        ctl = wait_for(lambda: _try_ctl(m), 10, "control connection")
        wait_for(lambda: m.acked_all(ctl, {"w": n}), 60, "%d acks" % n, step=0.05)
        ctl.close()
        time.sleep(0.5)  # let the last connection close settle
        c0 = status_field(m.pid, "voluntary_ctxt_switches")
        i0 = status_field(m.pid, "nonvoluntary_ctxt_switches")
        time.sleep(secs)
        c1 = status_field(m.pid, "voluntary_ctxt_switches")
        i1 = status_field(m.pid, "nonvoluntary_ctxt_switches")
        return {"per_sec": (c1 - c0) / secs, "nonvol": i1 - i0}
    finally:
        _stop_checked(m)


def crash_run(secs, n=100):
    m = Master({"w": (n, True)}, "crash").start()
    try:
        c0 = cpu_secs(m.pid)
        t0 = time.monotonic()
        # The first burst is one spawn and one death line per worker; what must
        # stay bounded is the rate after it, under the backoff.
        burst = 5.0
        time.sleep(burst)
        lines0 = m.log_lines()
        time.sleep(secs - burst)
        c1 = cpu_secs(m.pid)
        t1 = time.monotonic()
        lines = m.log_lines()
        log = m.log()
        rss = m.sample_rss()
        backoff = [l for l in log.splitlines() if "backoff" in l.lower() or "respawn" in l.lower()]
        crashes = sum(1 for l in log.splitlines() if "died unexpectedly" in l)
        # Lines in the second half: the steady state once the backoff is long.
        return {
            "cpu_pct": 100.0 * (c1 - c0) / (t1 - t0),
            "lines_per_sec": lines / (t1 - m.t_start),
            "steady_lines_per_sec": (lines - lines0) / (t1 - t0 - burst),
            "lines": lines,
            "crashes": crashes,
            "backoff_lines": len(backoff),
            "backoff_sample": backoff[-1][:160] if backoff else "",
            "rss_kib": rss,
        }
    finally:
        _stop_checked(m)


def control_run(n=1000, requests=500):
    m = Master({"w": (n, False)}, "control").start()
    ctl = None
    try:
        ctl = wait_for(lambda: _try_ctl(m), 10, "control connection")
        wait_for(lambda: m.acked_all(ctl, {"w": n}), 120, "%d acks" % n, step=0.1)
        times = []
        for _ in range(requests):
            t0 = time.perf_counter()
            r = ctl.call("status")
            times.append(time.perf_counter() - t0)
            if r.get("error"):
                raise BenchError("status failed: %r" % r)
        times.sort()
        return {
            "median_ms": statistics.median(times) * 1000,
            "p99_ms": times[int(len(times) * 0.99) - 1] * 1000,
            "bytes": len(r.get("message", "")),
        }
    finally:
        if ctl:
            ctl.close()
        _stop_checked(m)


def reexec_call(ctl):
    """One `reexec` on a persistent connection; seconds to the final reply."""
    t0 = time.perf_counter()
    r = ctl.call("reexec")
    took = time.perf_counter() - t0
    if r.get("error") or "Re-exec done" not in r.get("message", ""):
        raise BenchError("reexec failed: %r" % r)
    return took


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def reexec_run(n, check=True, times=10):
    """Time from a `reexec` request to the new image's reply, n workers."""
    extra = None if check else {"upgrade_check": "false"}
    m = Master({"w": (n, False)}, "reexec%d%s" % (n, "" if check else "nc"), extra_master=extra).start()
    ctl = None
    try:
        ctl = wait_for(lambda: _try_ctl(m), 10, "control connection")
        wait_for(lambda: m.acked_all(ctl, {"w": n}), 120, "%d acks" % n, step=0.1)
        took = [reexec_call(ctl) for _ in range(times)]
        # The new image answers other commands at once, on the same connection.
        t0 = time.perf_counter()
        ctl.call("version")
        after = time.perf_counter() - t0
        st = ctl.state()
        if st["pools"]["w"]["acked"] != n:
            raise BenchError("workers lost across re-execs: %r" % st["pools"]["w"]["acked"])
        return {"median_ms": statistics.median(took) * 1000, "max_ms": max(took) * 1000, "next_ms": after * 1000}
    finally:
        if ctl:
            ctl.close()
        _stop_checked(m)


def reexec_leak_run(n=10, times=100):
    """fds and RSS of the master after `times` re-execs, against after the
    first (the first image may hold fds its parent leaked into it, which the
    master marks close-on-exec at start)."""
    m = Master({"w": (n, False)}, "reexecleak").start()
    ctl = None
    try:
        ctl = wait_for(lambda: _try_ctl(m), 10, "control connection")
        wait_for(lambda: m.acked_all(ctl, {"w": n}), 60, "%d acks" % n, step=0.05)
        start_fds, start_rss = fd_count(m.pid), m.sample_rss()
        reexec_call(ctl)
        time.sleep(0.2)
        fds1, rss1 = fd_count(m.pid), m.sample_rss()
        for _ in range(times - 1):
            reexec_call(ctl)
        time.sleep(0.2)
        fds2, rss2 = fd_count(m.pid), m.sample_rss()
        return {"start": (start_fds, start_rss), "first": (fds1, rss1), "last": (fds2, rss2)}
    finally:
        if ctl:
            ctl.close()
        _stop_checked(m)


def scale_run(pools=100, per=100):
    names = ["p%03d" % i for i in range(pools)]
    m = Master({p: (per, False) for p in names}, "scale").start()
    ctl = None
    try:
        ctl = wait_for(lambda: _try_ctl(m), 10, "control connection")
        want = {p: per for p in names}
        t_acked = wait_for(lambda: m.acked_from_log(want), 600, "%d acks" % (pools * per), step=0.1)
        start_secs = t_acked - m.t_start_wall
        m.sample_rss()
        t0 = time.monotonic()
        for p in names:
            ctl.send("upgrade", pool=p)
            while True:
                r = ctl.read()
                if not r.get("wait"):
                    break
            if r.get("error"):
                raise BenchError("upgrade of %s failed: %r" % (p, r))
            m.sample_rss()
        upgrade_secs = time.monotonic() - t0
        ctl.close()
        ctl = None
        m.sample_rss()
        peak = status_field(m.pid, "VmHWM")
        stop_secs = _stop_checked(m, timeout=300)
        return {
            "start_secs": start_secs,
            "upgrade_secs": upgrade_secs,
            "stop_secs": stop_secs,
            "peak_rss_kib": peak,
            "clean_exit": m.proc.returncode == 0,
        }
    finally:
        if ctl:
            ctl.close()
        if m.proc.poll() is None:
            _stop_checked(m)


# ---- driver --------------------------------------------------------------------


def med(runs, key):
    return statistics.median(r[key] for r in runs)


def raise_limits():
    notes = []
    for res in (resource.RLIMIT_NOFILE, resource.RLIMIT_NPROC):
        soft, hard = resource.getrlimit(res)
        try:
            resource.setrlimit(res, (hard, hard))
        except (ValueError, OSError) as e:
            notes.append("setrlimit: %s" % e)
    return notes


def max_workers_possible():
    """Largest worker count this machine allows (pid_max, threads-max, ulimit -u)."""
    lim = []
    for p in ("/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max"):
        try:
            with open(p) as f:
                lim.append(int(f.read()))
        except OSError:
            pass
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft != resource.RLIM_INFINITY:
        lim.append(soft)
    running = len([d for d in os.listdir("/proc") if d.isdigit()])
    return min(lim) - running - 500


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter pass (about two minutes)")
    ap.add_argument("--only", default="", help="comma-separated: spawn,upgrade,footprint,idle,crash,control,reexec,scale")
    ap.add_argument("--runs", type=int, default=0, help="repetitions of the short figures")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    quick = args.quick
    runs = args.runs or (1 if quick else 3)
    notes = raise_limits()
    for p in (MASTER, WORKER):
        if not os.access(p, os.X_OK):
            raise SystemExit("missing %s: build with cargo build --release --bins --examples" % p)

    rows = []  # (figure, target, measured, ok)

    def want(name):
        return not only or name in only

    def step(name):
        print("== %s" % name, file=sys.stderr, flush=True)

    if want("spawn"):
        for n in (100, 1000):
            step("spawn %d" % n)
            rs = [spawn_run(n) for _ in range(runs)]
            secs, cpu = med(rs, "secs"), med(rs, "cpu_ms_per_worker")
            rq, load = med(rs, "runqueue_secs"), med(rs, "load")
            if n == 1000:
                rows.append((
                    "Spawn 1,000: start to all acked",
                    "< 1.5 s",
                    "%.2f s (master waited %.2f s for a CPU; load avg %.1f)" % (secs, rq, load),
                    secs < 1.5,
                ))
                rows.append(("Spawn 1,000: master CPU per worker", "< 1 ms", "%.2f ms" % cpu, cpu < 1.0))
            else:
                rows.append(("Spawn 100: start to all acked", "-", "%.3f s (CPU %.2f ms/worker)" % (secs, cpu), None))

    if want("upgrade"):
        step("upgrade")
        rs = [upgrade_run() for _ in range(runs)]
        secs = med(rs, "secs")
        rows.append(("Smooth upgrade of 100 (max_unacked 8)", "< 2 s", "%.2f s" % secs, secs < 2.0))

    if want("footprint"):
        sizes = [10, 1000, 2000] if quick else [10, 1000, 10000]
        cap = max_workers_possible()
        res, took, split = {}, {}, {}
        for n in sizes:
            if n > cap:
                notes.append("footprint %d skipped: this machine allows about %d more processes" % (n, cap))
                n = cap
            step("footprint %d" % n)
            rs = [footprint_run(n) for _ in range(1 if n > 1000 else runs)]
            res[n] = med(rs, "rss_kib")
            took[n] = med(rs, "secs")
            split[n] = (med(rs, "anon_kib"), med(rs, "file_kib"))
        for n, kib in res.items():
            target, ok = "-", None
            if n == 10:
                target, ok = "< 4 MiB", kib < 4096
            elif n == 1000:
                target, ok = "< 16 MiB", kib < 16384
            rows.append((
                "Master RSS, %d workers" % n,
                target,
                "%.1f MiB: %.1f anon + %.1f file-backed (all acked %.2f s after start)" % (
                    kib / 1024, split[n][0] / 1024, split[n][1] / 1024, took[n]),
                ok,
            ))
        ns = sorted(res)
        if len(ns) >= 2:
            a, b = ns[0], ns[-1]
            per = (res[b] - res[a]) / (b - a)
            rows.append(("RSS growth per worker (%d to %d)" % (a, b), "small, linear", "%.2f KiB" % per, per < 4.0))

    if want("idle"):
        secs = 5 if quick else 30
        step("idle %ds" % secs)
        r = idle_run(secs)
        rows.append((
            "Idle, 100 acked: voluntary ctx switches (%ds)" % secs,
            "<= 1/s",
            "%.2f/s" % r["per_sec"],
            r["per_sec"] <= 1.0,
        ))

    if want("crash"):
        secs = 35 if quick else 60
        step("crash loop %ds" % secs)
        r = crash_run(secs)
        rows.append(("Crash loop of 100 (%ds): master CPU" % secs, "< 5%", "%.2f %%" % r["cpu_pct"], r["cpu_pct"] < 5.0))
        per_crash = r["lines"] / max(1, r["crashes"])
        rows.append((
            "Crash loop: log volume after the first burst",
            "bounded: < 10 lines/s, <= 2.5 lines per crash",
            "%.1f lines/s (all: %d lines in %ds, %d crashes, %.2f lines/crash)" % (
                r["steady_lines_per_sec"], r["lines"], secs, r["crashes"], per_crash),
            r["steady_lines_per_sec"] < 10.0 and per_crash <= 2.5,
        ))
        rows.append((
            "Crash loop: backoff in the log",
            "visible",
            "%d lines, e.g. `%s`" % (r["backoff_lines"], r["backoff_sample"].replace("|", "/")),
            r["backoff_lines"] > 0,
        ))

    if want("control"):
        step("control")
        rs = [control_run() for _ in range(runs)]
        ms = med(rs, "median_ms")
        rows.append((
            "`status` round trip, 1,000 workers (500 req)",
            "median < 2 ms",
            "%.2f ms (p99 %.2f ms, %d bytes)" % (ms, med(rs, "p99_ms"), rs[0]["bytes"]),
            ms < 2.0,
        ))

    if want("reexec"):
        for n in (10, 1000):
            for check in (True, False):
                step("reexec %d%s" % (n, "" if check else " (no check)"))
                rs = [reexec_run(n, check) for _ in range(runs)]
                ms, mx, nxt = med(rs, "median_ms"), med(rs, "max_ms"), med(rs, "next_ms")
                label = "Re-exec, %d workers: request to the new image's reply" % n
                if not check:
                    label += " (upgrade_check = false)"
                target, ok = "-", None
                if n == 1000:
                    target, ok = "< 100 ms", ms < 100.0
                rows.append((
                    label,
                    target,
                    "%.1f ms median of 10 (max %.1f ms); next command answered in %.2f ms" % (ms, mx, nxt),
                    ok,
                ))
        step("reexec x100")
        r = reexec_leak_run()
        (f0, r0), (f1, r1), (f2, r2) = r["start"], r["first"], r["last"]
        rows.append((
            "Re-exec x100, 10 workers: master fds and RSS",
            "equal after 100",
            "fds %d after the 1st, %d after the 100th (%d at start); RSS %.1f MiB -> %.1f MiB (%.1f at start)" % (
                f1, f2, f0, r1 / 1024, r2 / 1024, r0 / 1024),
            f1 == f2 and r2 <= r1 * 1.05 + 256,
        ))

    if want("scale"):
        pools, per = (20, 50) if quick else (100, 100)
        step("scale %dx%d" % (pools, per))
        r = scale_run(pools, per)
        rows.append((
            "%d pools x %d: start to all acked" % (pools, per),
            "-",
            "%.2f s" % r["start_secs"],
            None,
        ))
        rows.append(("%d pools x %d: upgrade each pool in turn" % (pools, per), "-", "%.2f s" % r["upgrade_secs"], None))
        rows.append((
            "%d pools x %d: clean shutdown" % (pools, per),
            "exit 0, no worker left",
            "%.2f s, exit %s" % (r["stop_secs"], "0" if r["clean_exit"] else "non-zero"),
            r["clean_exit"],
        ))
        rows.append(("%d pools x %d: peak master RSS" % (pools, per), "-", "%.1f MiB" % (r["peak_rss_kib"] / 1024), None))

    # Whole-run cleanup check: nothing of this run may survive.
    stray = tagged_pids(RUN_TAG)
    for pid in stray:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    left = sum(n for _, n in LEFTOVERS) + len(stray)
    rows.append(("Cleanup: workers left after each figure", "0", str(left), left == 0))

    table = render(rows, quick, runs, notes)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "latest.md"), "w") as f:
        f.write(table)
    print(table)
    return 0 if all(ok is not False for *_, ok in rows) else 1


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def render(rows, quick, runs, notes):
    out = []
    out.append(
        "Run %s, `bench/run%s`, nproc %d, CPU %s, kernel %s, load average at the end %.1f;"
        " medians of %d run(s) for the short figures." % (
            time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            " --quick" if quick else "",
            os.cpu_count(),
            cpu_model(),
            platform.release(),
            loadavg(),
            runs,
        ))
    out.append("")
    out.append("| Figure | Target | Measured | Result |")
    out.append("| --- | --- | --- | --- |")
    for fig, target, measured, ok in rows:
        res = "-" if ok is None else ("pass" if ok else "**FAIL**")
        out.append("| %s | %s | %s | %s |" % (fig, target, measured, res))
    for n in notes:
        out.append("")
        out.append("Note: %s" % n)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        # Whatever happened (an error, Ctrl-C), no worker of this run survives it.
        for pid in tagged_pids(RUN_TAG):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
