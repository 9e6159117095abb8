"""A raw-socket upstream on loopback that misbehaves on purpose, scripted per connection.

Each accepted connection runs `script(conn)` in a thread of its own. The script reads requests with
`conn.read_request()` and writes whatever bytes it likes, when it likes (`send`, `drip`, `close`): a 103 before
the real answer, Content-Length next to Transfer-Encoding, a body shorter than announced, a header section cut
off by a close, a header dripped one byte per second. Every request is recorded with the connection it came on,
so a test can tell whether the gateway reused a connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass
class RawRequest:
    connection: int  # which accepted connection (1, 2, ...) carried it
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None


def response(status: int, body: bytes = b"", headers: Iterable[tuple[str, str]] = (), *, length: bool = True) -> bytes:
    """The bytes of a simple HTTP/1.1 response (with a Content-Length unless `length` is False)."""
    lines = [f"HTTP/1.1 {status} X"]
    lines += [f"{name}: {value}" for name, value in headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Close(bytes):
    """An answer after which the upstream closes the connection."""


def chunked(body: bytes) -> bytes:
    return (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"


class RawConnection:
    def __init__(self, sock: socket.socket, number: int, server: RawUpstream) -> None:
        self.sock = sock
        self.number = number
        self.server = server
        self.buffer = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buffer += data
        return True

    def read_request(self) -> RawRequest | None:
        """The next request on this connection (Content-Length or chunked body), or None when it ends."""
        try:
            while b"\r\n\r\n" not in self.buffer:
                if not self._fill():
                    return None
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
            names = {k.lower(): v for k, v in headers}
            body = b""
            if "chunked" in names.get("transfer-encoding", "").lower():
                while True:
                    while b"\r\n" not in self.buffer:
                        if not self._fill():
                            return None
                    size_line, self.buffer = self.buffer.split(b"\r\n", 1)
                    size = int(size_line.split(b";")[0], 16)
                    while len(self.buffer) < size + 2:
                        if not self._fill():
                            return None
                    body += self.buffer[:size]
                    self.buffer = self.buffer[size + 2 :]
                    if size == 0:
                        break
            else:
                length = int(names.get("content-length", "0"))
                while len(self.buffer) < length:
                    if not self._fill():
                        return None
                body, self.buffer = self.buffer[:length], self.buffer[length:]
        except OSError:
            return None
        request = RawRequest(self.number, method, target, headers, body)
        with self.server.lock:
            self.server.requests.append(request)
        self.server.arrived.set()
        return request

    def send(self, data: bytes) -> bool:
        """Write bytes; False when the peer has gone."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def drip(self, data: bytes, interval: float) -> None:
        """Write one byte every `interval` seconds until done, the peer goes or the server stops."""
        for i in range(len(data)):
            if not self.send(data[i : i + 1]) or self.server.stopping.wait(interval):
                return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


Script = Callable[[RawConnection], None]


class RawUpstream:
    """A TCP server on 127.0.0.1 whose every connection is handled by `script`."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.lock = threading.Lock()
        self.requests: list[RawRequest] = []
        self.connections = 0
        self.arrived = threading.Event()
        self.stopping = threading.Event()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1024)
        self._open: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RawUpstream:
        self.thread.start()
        return self

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.connections += 1
                number = self.connections
                self._open.append(sock)
            threading.Thread(target=self._run, args=(RawConnection(sock, number, self),), daemon=True).start()

    def _run(self, conn: RawConnection) -> None:
        try:
            self.script(conn)
        finally:
            conn.close()

    def stop(self) -> None:
        self.stopping.set()
        self.listener.close()
        with self.lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> RawUpstream:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_each(answer: Callable[[RawRequest], bytes | None]) -> Script:
    """A keep-alive script: for every request, send what `answer` returns; a `Close` answer (or None) then closes
    the connection."""

    def script(conn: RawConnection) -> None:
        while (request := conn.read_request()) is not None:
            data = answer(request)
            if data is None or not conn.send(data) or isinstance(data, Close):
                return

    return script


@dataclass
class Scripted:
    """Answers given in turn, one per request whatever the connection; then `then` for every later one."""

    answers: list[bytes | None]
    then: Callable[[RawRequest], bytes | None] = field(default=lambda request: response(200, b"ok"))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: RawRequest) -> bytes | None:
        with self.lock:
            if self.answers:
                return self.answers.pop(0)
        return self.then(request)
