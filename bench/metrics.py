#!/usr/bin/env python3
"""Observability costs (issue 15): /metrics scrape latency, idle wake-ups with
metrics on, and the master's memory per worker with metrics on versus off.

- Scrape latency: a master with N = 10, 1,000 and 10,000 acked workers
  (examples/ack_worker, manual ack) and `[metrics] listen = "127.0.0.1:0"`;
  SCRAPES sequential `GET /metrics` on new connections, each timed from
  connect to the last byte of the body; median and p90, and the body size.
  Each scrape reads /proc/PID/stat of every worker.
- Idle wake-ups: 100 acked workers, metrics listener configured (the events
  ring is always there), nobody scraping or following: the master's
  voluntary_ctxt_switches over IDLE seconds, with metrics on and off; and
  with metrics on once more, IDLE seconds after a burst of scrapes has ended
  (the scrape connections' idle deadline fires once, 10 s after the last one).
- Memory: VmRSS with 10,000 acked workers, metrics on versus off, before any
  scrape (what the counters cost), and VmHWM after the scrapes (what
  rendering costs at its peak).

Usage: python3 bench/metrics.py [--scrapes N] [--idle SECS] [--sizes 10,1000,10000]
                                [--only scrape,idle,footprint]
Builds the release master and worker first unless BENCH_NO_BUILD=1. Reuses
bench/suite/bench.py's master harness (temp dirs, tagged workers, clean stop).
"""

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench", "suite"))
import bench as suite  # noqa: E402


def with_metrics(m):
    with open(m.config, "a") as f:
        f.write('\n[metrics]\nlisten = "127.0.0.1:0"\n')
    return m


def metrics_addr(m):
    def find():
        hit = re.search(r"metrics: serving http://([0-9.]+):(\d+)/metrics", m.log())
        return (hit.group(1), int(hit.group(2))) if hit else None

    return suite.wait_for(find, 10, "the metrics listener")


def scrape(addr):
    t0 = time.perf_counter()
    s = socket.create_connection(addr, timeout=30)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
    buf = b""
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        buf += chunk
    took = time.perf_counter() - t0
    s.close()
    head, _, body = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise suite.BenchError("scrape failed: %r" % head[:200])
    return took, len(body)


def started(n, metrics, name):
    m = suite.Master({"w": (n, False)}, name)
    if metrics:
        with_metrics(m)
    m.start()
    suite.wait_for(lambda: m.acked_from_log({"w": n}), 600, "%d acks" % n, step=0.05)
    time.sleep(0.5)
    return m


def stop(m):
    took, left = m.stop(timeout=180)
    if left:
        raise suite.BenchError("%d worker(s) left behind" % len(left))


def scrape_run(n, scrapes):
    m = started(n, True, "scrape%d" % n)
    try:
        rss_before = suite.status_field(m.pid, "VmRSS")
        addr = metrics_addr(m)
        scrape(addr)  # first touch: page cache for /proc, allocator warm-up
        times, size = [], 0
        for _ in range(scrapes):
            t, size = scrape(addr)
            times.append(t)
        times.sort()
        return {
            "n": n,
            "median_ms": statistics.median(times) * 1000,
            "p90_ms": times[int(len(times) * 0.9) - 1] * 1000,
            "bytes": size,
            "rss_kib": rss_before,
            "hwm_kib": suite.status_field(m.pid, "VmHWM"),
        }
    finally:
        stop(m)


def ctx(pid):
    return suite.status_field(pid, "voluntary_ctxt_switches")


def idle_run(secs, metrics, after_scrapes=False, n=100):
    m = started(n, metrics, "idle%s" % ("on" if metrics else "off"))
    try:
        if after_scrapes:
            addr = metrics_addr(m)
            for _ in range(20):
                scrape(addr)
            # The scrape connections' idle deadline (10 s) fires once, then
            # nothing is armed any more.
            time.sleep(11)
        c0 = ctx(m.pid)
        time.sleep(secs)
        return ctx(m.pid) - c0
    finally:
        stop(m)


def footprint(n, metrics):
    m = started(n, metrics, "rss%s%d" % ("on" if metrics else "off", n))
    try:
        return suite.status_field(m.pid, "VmRSS")
    finally:
        stop(m)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scrapes", type=int, default=30)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--sizes", default="10,1000,10000")
    ap.add_argument("--only", default="scrape,idle,footprint", help="comma-separated: scrape,idle,footprint")
    args = ap.parse_args()
    if os.environ.get("BENCH_NO_BUILD") != "1":
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "einhyrningsins",
                        "--example", "ack_worker"], cwd=ROOT, check=True)
    for note in suite.raise_limits():
        print("note:", note)
    sizes = [int(s) for s in args.sizes.split(",")]
    only = set(args.only.split(","))
    print("machine: %d CPU(s), %s; load average %.1f" % (os.cpu_count(), " ".join(os.uname()[2:3]),
                                                        os.getloadavg()[0]))
    print("\n| workers | scrape median | scrape p90 | body | master VmRSS before | VmHWM after |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    scraped = {}
    for n in sizes if only & {"scrape", "footprint"} else []:
        r = scrape_run(n, args.scrapes)
        scraped[n] = r
        print("| %d | %.2f ms | %.2f ms | %.0f KiB | %.1f MiB | %.1f MiB |" % (
            n, r["median_ms"], r["p90_ms"], r["bytes"] / 1024, r["rss_kib"] / 1024, r["hwm_kib"] / 1024),
            flush=True)
    print("\n| idle, 100 workers, %.0f s | voluntary context switches |" % args.idle)
    print("| --- | ---: |")
    for label, metrics, after in (("metrics off", False, False), ("metrics on, never scraped", True, False),
                                  ("metrics on, 11 s after 20 scrapes", True, True)) if "idle" in only else ():
        print("| %s | %d |" % (label, idle_run(args.idle, metrics, after)), flush=True)
    if "footprint" not in only:
        return
    big = max(sizes)
    on = scraped[big]["rss_kib"]
    off = footprint(big, False)
    print("\nVmRSS with %d acked workers, before any scrape: metrics on %.1f MiB, off %.1f MiB; "
          "difference %+.0f KiB = %+.1f bytes per worker" % (big, on / 1024, off / 1024, on - off,
                                                            (on - off) * 1024 / big))


if __name__ == "__main__":
    main()
