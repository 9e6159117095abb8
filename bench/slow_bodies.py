#!/usr/bin/env python
"""What one gateway instance holds under a flood of clients that never finish their request bodies.

    .venv/bin/python bench/slow_bodies.py                       # 2,100 slow clients, the default settings
    .venv/bin/python bench/slow_bodies.py --clients 500 --max-seconds 30
    GATEWAY_CLIENT_BODY_TIMEOUT=5 .venv/bin/python bench/slow_bodies.py   # any gateway setting, from the environment

Starts a redis-server, a small upstream and the gateway (gunicorn, 2 workers, the settings of the environment)
on 127.0.0.1, then opens the clients at once: each announces `Content-Length: 10`, sends 2 bytes and waits.
Meanwhile it calls /healthz and a proxied route every 0.25 s. It stops by itself once every slow client has
been answered or closed, or after --max-seconds, and prints when the slow clients were answered and how long
/healthz and the route were unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


async def status_of(port: int, request: bytes, timeout: float) -> tuple[int | None, float]:
    """(status or None, seconds) for one request on a fresh connection."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        writer.write(request)
        line = await asyncio.wait_for(reader.readline(), timeout)
        writer.close()
        return (int(line.split()[1]) if line else None), time.monotonic() - started
    except (OSError, TimeoutError, ValueError, IndexError):
        return None, time.monotonic() - started


async def slow_client(port: int, started: float, results: list, stop: asyncio.Event) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        results.append(("refused", time.monotonic() - started))
        return
    writer.write(b"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\nxx")
    read = asyncio.ensure_future(reader.readline())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if read.done() and not read.exception():
        line = read.result()
        results.append((line.split()[1].decode() if line else "closed", time.monotonic() - started))
    else:
        read.cancel()
        results.append(("still waiting", time.monotonic() - started))
    stopped.cancel()
    writer.close()


async def flood(port: int, clients: int, max_seconds: float) -> dict:
    started = time.monotonic()
    stop = asyncio.Event()
    results: list = []
    tasks = [asyncio.ensure_future(slow_client(port, started, results, stop)) for _ in range(clients)]
    await asyncio.sleep(0.5)  # every slow client connected and sent its head
    probes: list = []
    health = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    routed = b"GET /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    while len(results) < clients and time.monotonic() - started < max_seconds:
        at = time.monotonic() - started
        (h, h_s), (r, r_s) = await asyncio.gather(status_of(port, health, 1.0), status_of(port, routed, 1.0))
        probes.append((round(at, 2), h, round(h_s, 3), r, round(r_s, 3)))
        await asyncio.sleep(0.25)
    stop.set()
    await asyncio.gather(*tasks)
    outcomes: dict = {}
    for status, seconds in results:
        entry = outcomes.setdefault(status, {"count": 0, "first_s": seconds, "last_s": seconds})
        entry["count"] += 1
        entry["first_s"] = round(min(entry["first_s"], seconds), 2)
        entry["last_s"] = round(max(entry["last_s"], seconds), 2)
    down = [p for p in probes if p[1] != 200]
    return {
        "slow_clients": clients,
        "slow_client_outcomes": outcomes,
        "healthz_unavailable_probes": len(down),
        "healthz_probes": len(probes),
        "healthz_first_ok_at_s": next((p[0] for p in probes if p[1] == 200), None),
        "route_first_ok_at_s": next((p[0] for p in probes if p[3] == 200), None),
        "ran_s": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=2100)
    parser.add_argument("--max-seconds", type=float, default=90)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gateway-slow-bodies-"))
    processes: list[subprocess.Popen] = []
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        redis_port, gateway_port = free_port(), free_port()
        processes.append(
            subprocess.Popen(
                ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--dir", str(work)],
                stdout=subprocess.DEVNULL,
            )
        )
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
            "SECRET_KEY": "slow-bodies-benchmark-" + "x" * 40,
            "ALLOWED_HOSTS": "*",
            "DATABASE_URL": f"sqlite:///{work / 'gateway.sqlite3'}",
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "GATEWAY_LISTEN": f"127.0.0.1:{gateway_port}",
            "GATEWAY_WORKERS": os.environ.get("GATEWAY_WORKERS", "2"),
            "GATEWAY_LOG_LEVEL": "WARNING",
            "GATEWAY_VAR_DIR": str(work / "var"),
        }
        config = work / "gateway.json"
        config.write_text(
            json.dumps(
                {
                    "version": 1,
                    "upstreams": [{"name": "ok", "base_url": f"http://127.0.0.1:{upstream.server_address[1]}"}],
                    "routes": [{"name": "api", "path_prefix": "/api", "upstream": "ok"}],
                }
            )
        )
        for command in (["migrate", "--noinput", "-v", "0"], ["gateway_import", str(config)]):
            subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True)
        with open(work / "gateway.log", "wb") as log:
            processes.append(
                subprocess.Popen(
                    [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "gateway_project.wsgi"],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            deadline = time.monotonic() + 30
            while asyncio.run(status_of(gateway_port, b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n", 1))[0] != 200:
                if time.monotonic() > deadline:
                    raise SystemExit(f"the gateway did not start; see {work / 'gateway.log'}")
                time.sleep(0.2)
            report = asyncio.run(flood(gateway_port, args.clients, args.max_seconds))
        report["settings"] = {k: v for k, v in env.items() if k.startswith("GATEWAY_CLIENT_BODY")} or "defaults"
        print(json.dumps(report, indent=2))
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(15)
        upstream.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
