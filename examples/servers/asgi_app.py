"""An ASGI app for uvicorn and hypercorn (examples/configs/uvicorn.toml,
hypercorn.toml, docs/workers.md).

Answers every request with `pid=<pid> version=<APP_VERSION>`; `/sleep?ms=N`
answers after N ms (at most 10 s).
"""
import asyncio
import os

VERSION = os.environ.get("APP_VERSION", "1")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] == "/sleep":
        q = scope.get("query_string", b"").decode()
        ms = int(q[3:]) if q.startswith("ms=") and q[3:].isdigit() else 100
        await asyncio.sleep(min(ms, 10_000) / 1000)
    body = f"pid={os.getpid()} version={VERSION}\n".encode()
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})
