"""A WSGI app for gunicorn (examples/configs/gunicorn.toml, docs/workers.md).

Answers every request with `pid=<pid> version=<APP_VERSION>`; `/sleep?ms=N`
answers after N ms (at most 10 s), to hold a request across a drain.
"""
import os
import time

VERSION = os.environ.get("APP_VERSION", "1")


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/sleep":
        q = environ.get("QUERY_STRING", "")
        ms = int(q[3:]) if q.startswith("ms=") and q[3:].isdigit() else 100
        time.sleep(min(ms, 10_000) / 1000)
    body = f"pid={os.getpid()} version={VERSION}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
