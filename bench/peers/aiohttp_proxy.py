"""A bare aiohttp server and client on uvloop: the least a Python proxy hop can cost.

    python bench/peers/aiohttp_proxy.py PORT UPSTREAM_BASE_URL [WORKERS]

The parent binds one listening socket and forks WORKERS processes that accept on it (as gunicorn does); it
stops them when it gets SIGTERM.
"""

import contextlib
import os
import signal
import socket
import sys

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def serve(sock: socket.socket, upstream: str) -> None:
    import aiohttp
    import uvloop
    from aiohttp import web

    async def start(app):
        app["client"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000), auto_decompress=False, skip_auto_headers=("User-Agent",)
        )

    async def stop(app):
        await app["client"].close()

    async def proxy(request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with request.app["client"].request(
            request.method, upstream + request.path_qs, headers=headers, data=await request.read()
        ) as answer:
            body = await answer.read()
            out = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(body=body, status=answer.status, headers=out)

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", proxy)
    uvloop.install()
    web.run_app(app, sock=sock, access_log=None, print=None, handle_signals=True)


def main() -> None:
    port, upstream = int(sys.argv[1]), sys.argv[2].rstrip("/")
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            serve(sock, upstream)
            os._exit(0)
        children.append(pid)

    def stop(signum, frame):
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for pid in children:
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break


if __name__ == "__main__":
    main()
