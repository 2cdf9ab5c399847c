#!/usr/bin/env python3
"""Third-party servers as workers, under load, while upgrades run.

For each server recipe in examples/configs/ (docs/workers.md), start the
master on that very file (rewritten only for a free port, a private temp dir
and the installed tools' paths), run a load tool against it and ask for a
rolling upgrade every --interval seconds, then report what the tool counted:

- ab (apache2-utils): a new connection per request. "failed" is ab's
  "Failed requests" plus non-2xx answers.
- wrk: keep-alive connections. "read errors" is wrk's socket read errors
  (a keep-alive connection closed under a request), plus connect, write and
  timeout errors and non-2xx answers, all shown.

Also counted: drains that hung until SIGKILL (a worker still alive after
stop_timeout), from the master's log.

Needs: .ci/install-servers --bench (servers, wrk, ab), a release build
(cargo build --release). Python stdlib only. Loopback only.

    bench/servers.py                          # every server, ab and wrk
    bench/servers.py --servers nginx --tools ab --bind-opts ,b --runs 10
    bench/servers.py --servers go,node --variant stock
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
SERVERS = ["gunicorn", "uvicorn", "hypercorn", "go", "node", "nginx", "haproxy", "lighttpd", "puma"]
TOOLS_DIR = os.environ.get("EINHYRNINGSINS_SERVERS", os.path.join(REPO, "target", "ci-servers"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(sock, command, timeout=60):
    """One control request; the last reply's message."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(sock)
    s.sendall((json.dumps({"command": command}) + "\n").encode())
    buf, last = b"", None
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            v = json.loads(line)
            last = v
            if not v.get("wait"):
                s.close()
                return v.get("message", "")
    s.close()
    return last.get("message", "") if last else ""


def state(sock):
    return json.loads(request(sock, "state"))


def prepare(server, dirpath, port, bind_opts, variant, no_nodelay=False):
    """The example config and its server files, rewritten for this run; the
    config's path."""
    sdir = os.path.join(dirpath, "servers")
    shutil.copytree(os.path.join(REPO, "examples", "servers"), sdir)
    for root, _, files in os.walk(sdir):
        for f in files:
            p = os.path.join(root, f)
            try:
                text = open(p).read()
            except UnicodeDecodeError:
                continue
            text = text.replace("127.0.0.1:8080", f"127.0.0.1:{port}").replace("server.port = 8080", f"server.port = {port}")
            text = text.replace("/tmp/einhyrningsins-", dirpath + "/")
            text = text.replace('var.CWD + "/examples/servers/www"', f'"{sdir}/www"')
            open(p, "w").write(text)
    text = open(os.path.join(REPO, "examples", "configs", f"{server}.toml")).read()
    text = re.sub(r'socket = "/tmp/einhyrningsins-[^"]*"', f'socket = "{dirpath}/ctl.sock"', text)
    text = text.replace("examples/servers", sdir)
    text = text.replace('"./go_worker"', '"' + os.path.join(TOOLS_DIR, "bin", "go_worker") + '"')
    text = text.replace("127.0.0.1:8080,r", f"127.0.0.1:{port},r{bind_opts}")
    if no_nodelay:
        text = text.replace(",nodelay", "")
    if variant:
        text = text.replace("--drain=graceful", f"--drain={variant}").replace("-drain=graceful", f"-drain={variant}")
    cfg = os.path.join(dirpath, "app.toml")
    open(cfg, "w").write(text)
    return cfg


def run_tool(tool, url, seconds, conns):
    if tool == "ab":
        cmd = ["ab", "-q", "-r", "-t", str(seconds), "-n", "100000000", "-c", str(conns), url]
    else:
        cmd = ["wrk", "-t", "2", "-c", str(conns), "-d", f"{seconds}s", url]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def parse(tool, out):
    num = lambda pat: int(m.group(1)) if (m := re.search(pat, out)) else 0
    if tool == "ab":
        done = num(r"Complete requests:\s+(\d+)")
        non2xx = num(r"Non-2xx responses:\s+(\d+)")
        # ab also counts as "failed" every answer whose length differs from
        # the first one's: the bodies hold a pid, whose digits vary. Not an
        # error; the others are.
        c, r, ln, x = (num(rf"{k}: (\d+)") for k in ("Connect", "Receive", "Length", "Exceptions"))
        return {"requests": done, "errors": c + r + x + non2xx,
                "detail": f"connect {c}, receive {r}, exceptions {x}, non-2xx {non2xx} (length {ln}, not counted)"}
    done = num(r"(\d+) requests in")
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    c, r, w, t = (int(x) for x in m.groups()) if m else (0, 0, 0, 0)
    non2xx = num(r"Non-2xx or 3xx responses: (\d+)")
    return {"requests": done, "errors": c + r + w + t + non2xx, "read": r,
            "detail": f"connect {c}, read {r}, write {w}, timeout {t}, non-2xx {non2xx}"}


def one_run(server, tool, args):
    dirpath = tempfile.mkdtemp(prefix=f"srv-{server}-", dir="/tmp")
    port = free_port()
    cfg = prepare(server, dirpath, port, args.bind_opts, args.variant, args.no_nodelay)
    env = dict(os.environ)
    env["PATH"] = os.path.join(TOOLS_DIR, "venv", "bin") + os.pathsep + "/usr/sbin" + os.pathsep + env.get("PATH", "")
    log = open(os.path.join(dirpath, "master.log"), "w")
    master = subprocess.Popen([args.master, "--config", cfg], cwd=REPO, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    sock = os.path.join(dirpath, "ctl.sock")
    result = {"server": server, "tool": tool}
    started = time.time()
    try:
        if args.startup:
            # From the master's start to the first 200 through the socket:
            # what a timer ack must at least cover.
            while time.time() - started < 30:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        if c.recv(16).startswith(b"HTTP/1.1 200"):
                            result["startup"] = time.time() - started
                            return result
                except OSError:
                    pass
                time.sleep(0.01)
            raise RuntimeError("no answer within 30 s")
        deadline = time.time() + 30
        while True:
            if master.poll() is not None:
                raise RuntimeError(f"master exited: {open(log.name).read()[-2000:]}")
            try:
                st = state(sock)
                if st["pools"]["web"]["acked"] >= 2:
                    break
            except (OSError, ValueError, KeyError):
                pass
            if time.time() > deadline:
                raise RuntimeError(f"workers never acked: {open(log.name).read()[-2000:]}")
            time.sleep(0.2)
        load = run_tool(tool, f"http://127.0.0.1:{port}/", args.duration, args.conns)
        upgrades, t0 = 0, time.time()
        time.sleep(args.interval)
        while time.time() - t0 < args.duration - args.interval:
            tick = time.time()
            msg = request(sock, "upgrade")
            upgrades += "done" in msg.lower() or "upgraded" in msg.lower() or "complete" in msg.lower()
            time.sleep(max(0.0, args.interval - (time.time() - tick)))
        out, _ = load.communicate(timeout=args.duration + 60)
        result.update(parse(tool, out))
        result["upgrades"] = upgrades
        # Drains that outlived stop_timeout, before the master's own shutdown.
        time.sleep(0.5)
        result["hung_drains"] = len(re.findall(r"SIGKILL", open(log.name).read()))
    finally:
        try:
            os.killpg(master.pid, signal.SIGTERM)
            master.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        # The master, its workers and their children share the session.
        try:
            os.killpg(master.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
        if not args.keep:
            shutil.rmtree(dirpath, ignore_errors=True)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--tools", default="ab,wrk")
    ap.add_argument("--duration", type=int, default=24, help="seconds of load per run")
    ap.add_argument("--interval", type=float, default=3.0, help="seconds between upgrades")
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--bind-opts", default="", help="appended to the bind, e.g. ,b")
    ap.add_argument("--variant", default="", help="go/node drain: stock or graceful")
    ap.add_argument("--master", default=os.path.join(REPO, "target", "release", "einhyrningsins"))
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (logs)")
    ap.add_argument("--no-nodelay", action="store_true", help="drop the recipes' ,nodelay")
    ap.add_argument("--startup", action="store_true",
                    help="measure only the time from the master's start to the first answer")
    args = ap.parse_args()
    if args.startup:
        print("| server | runs | first answer after the master's start: median, max |")
        print("| --- | --- | --- |")
        for server in args.servers.split(","):
            ts = sorted(one_run(server, "startup", args)["startup"] for _ in range(args.runs))
            print(f"| {server} | {len(ts)} | {ts[len(ts) // 2]:.2f} s, {ts[-1]:.2f} s |", flush=True)
        return
    for tool in args.tools.split(","):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: run .ci/install-servers --bench")
    print(f"| server | tool | runs | upgrades | requests | errors | errors per 10k | hung drains | detail |")
    print(f"| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for server in args.servers.split(","):
        for tool in args.tools.split(","):
            rs = []
            for _ in range(args.runs):
                try:
                    rs.append(one_run(server, tool, args))
                except Exception as e:  # report and go on with the next
                    print(f"| {server} | {tool} | FAILED: {e} |".replace("\n", " "), flush=True)
            if not rs:
                continue
            req = sum(r.get("requests", 0) for r in rs)
            err = sum(r.get("errors", 0) for r in rs)
            per = f"{10000 * err / req:.2f}" if req else "-"
            errs = "/".join(str(r.get("errors", 0)) for r in rs)
            print(f"| {server}{args.bind_opts}{' ' + args.variant if args.variant else ''} | {tool} | {len(rs)} | "
                  f"{sum(r.get('upgrades', 0) for r in rs)} | {req} | {errs} | {per} | "
                  f"{sum(r.get('hung_drains', 0) for r in rs)} | {rs[-1].get('detail', '')} |", flush=True)


if __name__ == "__main__":
    main()
