#!/usr/bin/env python3
"""A worker for einhyrningsins (or einhorn) in plain Python 3, standard library only.

It doubles as the example of writing a worker in any language. The whole child
API is four things, each marked "CHILD API" below:

1. Sockets: the master binds them and passes them as open fds. EINHORN_FD_COUNT
   says how many; EINHORN_FD_0, EINHORN_FD_1, ... are their numbers. Serve them,
   never bind your own.
2. Readiness: once serving, send one line to the master's control socket,
   {"command":"worker:ack","pid":<pid>}, on the fd in EINHORN_SOCK_FD if set,
   else by connecting to EINHORN_SOCK_PATH. (Only needed with `ack = "manual"`;
   in timer mode staying alive is enough, and acking anyway is harmless.)
3. Stopping: on SIGUSR2 (also SIGTERM, SIGINT) stop accepting, answer every
   request already sent (with "Connection: close"), close connections that stay
   idle for a short grace, exit 0. A request racing the close of an idle
   keep-alive connection, or sent on a connection accepted just before the
   drain, is still answered: none is dropped.
4. Identity: EINHORN_CHILD_INDEX is this worker's slot in its pool.

Answers: any path -> "pid=<pid> index=<slot> pool=<WORKER_POOL> version=<WORKER_VERSION>",
/sleep?ms=N answers the same after N ms (a slow request, to watch a drain),
/stats -> "sleeping=<requests in /sleep> served=<responses>".
"""

import faulthandler
import http.server
import json
import os
import select
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.parse

PID = os.getpid()
BODY = "pid={} index={} pool={} version={}\n".format(
    PID,
    os.environ.get("EINHORN_CHILD_INDEX", "-"),  # CHILD API (4)
    os.environ.get("WORKER_POOL", "-"),
    os.environ.get("WORKER_VERSION", "-"),
)

lock = threading.Lock()  # guards the three below
draining = None  # time.monotonic() when the drain began
connections = set()  # live handlers
stats = {"sleeping": 0, "served": 0}

# While draining, a connection that has been answered at least once and stays
# idle this long is closed; one accepted but not yet heard from gets NEW_GRACE
# to send its first request (it was accepted before the drain: its client is
# waiting for an answer, not a reset).
IDLE_GRACE = 0.1
NEW_GRACE = 1.0
# A drain that takes longer than this (a client that never finishes its
# request) is cut short: the worker says so, shows where each thread is, and
# exits, well before the master's stop_timeout would SIGKILL it.
DRAIN_LIMIT = float(os.environ.get("WORKER_DRAIN_LIMIT", "20"))

# Written once when the drain begins: wakes every idle connection's poll.
DRAIN_R, DRAIN_W = os.pipe()


def log(msg):
    print("http_worker.py pid={} {}".format(PID, msg), file=sys.stderr, flush=True)


def inherited_sockets():
    """CHILD API (1): the listening sockets the master passed down."""
    count = int(os.environ.get("EINHORN_FD_COUNT", "0"))
    fds = [int(os.environ["EINHORN_FD_%d" % n]) for n in range(count)]
    if not fds and "LISTEN_FDS" in os.environ:  # systemd's convention, for free
        fds = list(range(3, 3 + int(os.environ["LISTEN_FDS"])))
    # socket.socket(fileno=...) detects the family (TCP or unix) by itself.
    socks = [socket.socket(fileno=fd) for fd in fds]
    for s in socks:
        # Several workers accept on one socket; the losers of a race must not
        # block in accept(). (O_NONBLOCK is shared with the other workers of the
        # pool; they all run this same program, so that is fine.)
        s.setblocking(False)
    return socks


def ack():
    """CHILD API (2): tell the master we are ready."""
    line = (json.dumps({"command": "worker:ack", "pid": PID}) + "\n").encode()
    try:
        if "EINHORN_SOCK_FD" in os.environ:
            with socket.socket(fileno=int(os.environ["EINHORN_SOCK_FD"])) as s:
                s.sendall(line)
        elif "EINHORN_SOCK_PATH" in os.environ:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(os.environ["EINHORN_SOCK_PATH"])
                s.sendall(line)
    except OSError as e:
        log("ack failed (carrying on): {}".format(e))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def setup(self):
        super().setup()
        self.answered = 0
        with lock:
            connections.add(self)

    def finish(self):
        with lock:
            connections.discard(self)
        super().finish()

    def wait_for_request(self):
        """Wait until the client sends something; False once the drain says
        this idle connection may close (never before its grace is over)."""
        while True:
            with lock:
                began = draining
            p = select.poll()
            p.register(self.connection, select.POLLIN)
            if began is None:
                # Sleep until the client speaks or the drain begins: no
                # polling loop while serving.
                p.register(DRAIN_R, select.POLLIN)
                timeout = None
            else:
                grace = IDLE_GRACE if self.answered else NEW_GRACE
                left = began + grace - time.monotonic()
                if left <= 0:
                    return False
                timeout = left * 1000
            try:
                ready = p.poll(timeout)
            except (OSError, ValueError):
                return False
            if any(fd == self.connection.fileno() for fd, _ in ready):
                return True

    def buffered(self):
        """Bytes of a next request already read into rfile (pipelining):
        select() on the socket would not see them."""
        try:
            self.connection.setblocking(False)
            try:
                return len(self.rfile.peek(1))
            finally:
                self.connection.setblocking(True)
        except (OSError, ValueError):
            return 0

    def handle_one_request(self):
        if not self.buffered() and not self.wait_for_request():
            self.close_connection = True
            return
        super().handle_one_request()
        self.answered += 1

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/sleep":
            try:
                ms = int(urllib.parse.parse_qs(url.query).get("ms", ["0"])[0])
            except ValueError:
                ms = -1
            if not 0 <= ms <= 600_000:
                self.send_error(400, "ms must be an integer from 0 to 600000")
                return
            with lock:
                stats["sleeping"] += 1
            time.sleep(ms / 1000)
            with lock:
                stats["sleeping"] -= 1
        body = BODY
        if url.path == "/stats":
            with lock:
                body = "sleeping={sleeping} served={served}\n".format(**stats)
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        with lock:
            stats["served"] += 1
            if draining is not None:  # CHILD API (3): in-flight requests end the connection
                self.close_connection = True
                self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        pass  # quiet: a pool of these would flood the master's log


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = False  # server_close() waits for in-flight requests

    def __init__(self, sock):
        super().__init__(None, Handler, bind_and_activate=False)
        self.socket.close()  # drop the socket the base class made; use the master's
        self.socket = sock


def drain(servers):
    """CHILD API (3): stop accepting, answer what was sent, close the idle."""
    global draining
    with lock:
        # From now on every response says Connection: close, and idle
        # connections close once their grace is over (see wait_for_request).
        draining = time.monotonic()
    os.write(DRAIN_W, b"x")  # never read: every poll on DRAIN_R sees it
    for server in servers:
        server.shutdown()  # stops the accept loop: no new connection is taken
        server.socket.close()  # our copy of the fd; the master keeps the socket
    for server in servers:
        server.server_close()  # joins the handler threads


def main():
    stop = threading.Event()
    signals = {}

    def on_signal(signum, frame):
        signals.setdefault("first", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    servers = [Server(sock) for sock in inherited_sockets()]
    for server in servers:
        threading.Thread(target=server.serve_forever, args=(0.5,), daemon=True).start()
    log("serving fds={}".format([s.socket.fileno() for s in servers]))
    ack()

    # With a timeout: a signal may be delivered to any thread, and an untimed
    # wait of the main thread is then never interrupted to run the handler.
    while not stop.wait(0.2):
        pass
    log("stopping on {}: draining".format(signals.get("first")))

    def cut_short():
        time.sleep(DRAIN_LIMIT)
        log("drain not done after {}s; exiting anyway. Threads:".format(DRAIN_LIMIT))
        faulthandler.dump_traceback(all_threads=True)
        os._exit(1)

    threading.Thread(target=cut_short, daemon=True).start()
    drain(servers)
    log("drained, exiting 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
