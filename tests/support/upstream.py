"""A real HTTP/1.1 upstream on loopback that records exactly what it receives.

Behaviour is chosen by the request path (anywhere in it, so a base path in front does not matter):

- .../status/<code>            answer <code>
- .../delay/<seconds>          answer 200 after a delay
- .../bytes/<n>                stream n bytes with Content-Length
- .../chunked/<n>              stream n bytes chunked
- .../retry-after/<s>/<code>   answer <code> with Retry-After: <s>
- .../cookies                  two Set-Cookie lines
- .../hop                      a response with hop-by-hop and Connection-named headers
- .../break/<n>                announce 2n bytes, send n, close
- .../events/<n>/<seconds>     server-sent events: n events, chunked, one every <seconds> (the first at once)
- anything else                200 with a small JSON body describing the request

`queue(...)` makes the next requests answer given statuses (or "reset" to close the connection without an
answer), whatever their path. `behave(status=..., delay=...)` makes every request wait `delay` seconds and
then answer `status` (a failing, slow or hung upstream) until `behave()` restores normal answers.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    method: str
    path: str  # the raw request target, byte-exact as received
    headers: list[tuple[str, str]]
    body_bytes: int
    body_sha256: str
    chunked: bool
    at: float = field(default_factory=time.monotonic)

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    def header_names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle and delayed ACKs add 40 ms.
    disable_nagle_algorithm = True
    server: Upstream

    def log_message(self, format, *args):
        pass

    def _read_body(self) -> tuple[int, str, bool]:
        digest = hashlib.sha256()
        total = 0
        length = self.headers.get("Content-Length")
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        if chunked:
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, 1 << 20))
                    if not data:
                        raise ConnectionError("body ended early")
                    digest.update(data)
                    total += len(data)
                    remaining -= len(data)
                self.rfile.readline()
        elif length:
            remaining = int(length)
            while remaining:
                data = self.rfile.read(min(remaining, 1 << 20))
                if not data:
                    raise ConnectionError("body ended early")
                digest.update(data)
                total += len(data)
                remaining -= len(data)
        return total, digest.hexdigest(), chunked

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError, OSError):
            self.close_connection = True

    def _serve(self):
        self.server.connections_seen.add(self.client_address)
        try:
            size, sha, chunked = self._read_body()
        except ConnectionError:
            self.close_connection = True
            return
        received = Received(self.command, self.path, list(self.headers.items()), size, sha, chunked)
        with self.server.lock:
            self.server.received.append(received)
            scripted = self.server.script.popleft() if self.server.script else None
        if scripted == "reset":
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return
        if scripted is not None:
            return self._send(int(scripted), b'{"scripted": true}')
        status, delay = self.server.behaviour
        if delay:
            time.sleep(delay)
        if status is not None:
            return self._send(status, b'{"forced": true}')
        path = self.path.split("?", 1)[0]
        if m := re.search(r"/status/(\d{3})", path):
            return self._send(int(m.group(1)), b'{"status": true}')
        if m := re.search(r"/delay/([0-9.]+)", path):
            time.sleep(float(m.group(1)))
            return self._send(200, b'{"delayed": true}')
        if m := re.search(r"/retry-after/(\d+)/(\d{3})", path):
            return self._send(int(m.group(2)), b"{}", [("Retry-After", m.group(1))])
        if m := re.search(r"/bytes/(\d+)", path):
            return self._stream(int(m.group(1)), chunked=False)
        if m := re.search(r"/chunked/(\d+)", path):
            return self._stream(int(m.group(1)), chunked=True)
        if m := re.search(r"/events/(\d+)/([0-9.]+)", path):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for index in range(int(m.group(1))):
                if index:
                    time.sleep(float(m.group(2)))
                event = f"id: {index}\ndata: {time.monotonic()}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return None
        if m := re.search(r"/break/(\d+)", path):
            n = int(m.group(1))
            self.send_response(200)
            self.send_header("Content-Length", str(2 * n))
            self.end_headers()
            self.wfile.write(b"x" * n)
            self.close_connection = True
            return None
        if path.endswith("/cookies"):
            return self._send(200, b"{}", [("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/")])
        if path.endswith("/hop"):
            return self._send(
                200,
                b"{}",
                [
                    ("Connection", "X-Upstream-Private"),
                    ("X-Upstream-Private", "secret"),
                    ("Keep-Alive", "timeout=5"),
                    ("Proxy-Authenticate", "Basic"),
                    ("Upgrade", "h2c"),
                    ("X-Kept", "yes"),
                    ("Trailer", "X-T"),
                ],
            )
        body = json.dumps({"method": self.command, "path": self.path, "body_bytes": size}).encode()
        return self._send(200, body, [("Content-Type", "application/json")])

    def _send(self, status: int, body: bytes, headers: list[tuple[str, str]] = ()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(body)

    def _stream(self, size: int, *, chunked: bool):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command == "HEAD":
            return
        block = b"\xab" * (256 * 1024)
        remaining = size
        while remaining:
            piece = block[: min(remaining, len(block))]
            if chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                self.wfile.write(piece)
            remaining -= len(piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _serve


class Upstream(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096
    allow_reuse_address = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.script: deque = deque()
        self.behaviour: tuple[int | None, float] = (None, 0.0)
        self.connections_seen: set = set()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Upstream:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def queue(self, *answers) -> None:
        with self.lock:
            self.script.extend(answers)

    def behave(self, status: int | None = None, delay: float = 0.0) -> None:
        self.behaviour = (status, delay)

    def reset(self) -> None:
        with self.lock:
            self.received.clear()
            self.script.clear()
            self.behaviour = (None, 0.0)
            self.connections_seen.clear()

    def requests_to(self, fragment: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if fragment in r.path]
