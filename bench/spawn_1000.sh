#!/usr/bin/env bash
# Spawn 1,000 workers: how long from master start until all 1,000 example workers
# have acked (manual ack, one pool, one bind), and what the master costs at that
# moment: resident memory (VmRSS) and CPU time (utime+stime). Runs RUNS times
# (default 3), prints each run and the median, shuts the master down cleanly each
# time and checks no worker is left behind.
#
# Usage: bench/spawn_1000.sh [WORKERS] [RUNS]      (defaults: 1000 3)
# Needs: cargo, python3. Builds the release master and example worker first.
set -euo pipefail

WORKERS=${1:-1000}
RUNS=${2:-3}
cd "$(dirname "$0")/.."

cargo build --release --quiet --example http_worker --bin einhyrningsins
MASTER=$PWD/target/release/einhyrningsins
WORKER=$PWD/target/release/examples/http_worker

# Each worker holds a few fds and is one process; the master holds one fd per
# control connection in flight. Raise the soft limits as far as allowed.
need_fds=$((WORKERS * 2 + 256))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need_fds" ]; then
    ulimit -n "$(ulimit -Hn)" || true
fi
need_procs=$((WORKERS + 512))
if [ "$(ulimit -u)" != unlimited ] && [ "$(ulimit -u)" -lt "$need_procs" ]; then
    ulimit -u "$(ulimit -Hu)" || true
fi
echo "machine: $(nproc) CPU(s), $(uname -sr); ulimit -n $(ulimit -n), -u $(ulimit -u)"
echo "command: $MASTER -d SOCK -n $WORKERS -m -b 127.0.0.1:0,r --no-watch -- $WORKER"

python3 - "$MASTER" "$WORKER" "$WORKERS" "$RUNS" <<'PY'
import json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

master, worker, n, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
TICK = os.sysconf("SC_CLK_TCK")


def request(sock_path, command):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(sock_path)
    s.sendall((json.dumps({"command": command}) + "\n").encode())
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        buf += chunk
    s.close()
    return json.loads(buf)["message"]


def state(sock_path):
    return json.loads(request(sock_path, "state"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    # Fields 14 and 15 (utime, stime) are rest[11] and rest[12].
    return (int(rest[11]) + int(rest[12])) / TICK


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def log_ms(path, needle):
    """Timestamps (ms of the day, UTC) of the master's log lines containing needle."""
    out = []
    with open(path) as f:
        for line in f:
            if needle in line and line[:4].isdigit():
                h, m, sec = line.split()[0].split("T")[1].rstrip("Z").split(":")
                out.append((int(h) * 3600 + int(m) * 60) * 1000 + round(float(sec) * 1000))
    return out


def one_run(i):
    d = tempfile.mkdtemp(prefix="ehy-bench-")
    sock = os.path.join(d, "ctl.sock")
    log = open(os.path.join(d, "master.log"), "w")
    args = [master, "-d", sock, "-n", str(n), "-m", "-b", "127.0.0.1:0,r",
            "--no-watch", "--", worker]
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    pids = []
    try:
        while True:
            if p.poll() is not None:
                raise SystemExit(f"master exited early ({p.returncode}); see {log.name}")
            try:
                st = state(sock)
                pool = st["pools"]["main"]
                if pool["acked"] >= n:
                    elapsed = time.monotonic() - t0
                    rss, cpu = rss_kib(p.pid), cpu_secs(p.pid)
                    pids = [w["pid"] for w in pool["workers"]]
                    break
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            time.sleep(0.02)
        # Clean shutdown: SIGINT drains every worker; the master exits when all
        # are gone. Then no worker may be left.
        t1 = time.monotonic()
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=120)
        shutdown = time.monotonic() - t1
        left = [q for q in pids if alive(q)]
        if rc != 0 or left:
            raise SystemExit(f"run {i}: master exit {rc}, {len(left)} worker(s) left: {left[:10]}")
        # Where the time went, from the master's own timestamps.
        log.flush()
        start = log_ms(log.name, "starting 1 pool")[0]
        spawned = log_ms(log.name, "spawned worker pid")
        acked = log_ms(log.name, " acked (index")
        print(f"run {i}: {n} acked in {elapsed:.3f} s; master VmRSS {rss / 1024:.1f} MiB, "
              f"CPU {cpu:.2f} s; clean shutdown in {shutdown:.2f} s, 0 workers left; "
              f"log: last spawn at +{(spawned[-1] - start) / 1000:.3f} s, "
              f"last ack at +{(acked[-1] - start) / 1000:.3f} s; load average {load:.1f}",
              flush=True)
        shutil.rmtree(d)  # kept (with its log) only when a run fails
        return elapsed, rss, cpu, shutdown
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for q in pids:
            if alive(q):
                os.kill(q, signal.SIGKILL)
        log.close()


results = [one_run(i + 1) for i in range(runs)]
med = [statistics.median(col) for col in zip(*results)]
print(f"median of {runs}: all {n} acked in {med[0]:.3f} s; master VmRSS {med[1] / 1024:.1f} MiB, "
      f"CPU {med[2]:.2f} s; shutdown {med[3]:.2f} s")
PY
