"""A client on a raw socket: requests exactly as written, responses read on one keep-alive connection.

Unlike http.client, it notices what a careful client must: a body shorter than its Content-Length, a
connection closed where a response should continue, an interim (1xx) answer.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool  # False when the connection ended before the framing said the body was over

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class RawClient:
    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    def closed_by_peer(self, timeout: float) -> bool:
        """True if the server closes the connection within `timeout` seconds (and sends nothing more)."""
        self.sock.settimeout(timeout)
        try:
            while self._fill():
                pass
        except TimeoutError:
            return False
        return True

    def read_response(self, method: str = "GET") -> RawResponse:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"connection closed before a complete response head: {self.buffer[:200]!r}")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
        names = {k.lower(): v for k, v in headers}
        if method == "HEAD" or status < 200 or status in (204, 304):
            return RawResponse(status, headers, b"", True)
        if "chunked" in names.get("transfer-encoding", "").lower():
            body = b""
            while True:
                while b"\r\n" not in self.buffer:
                    if not self._fill():
                        return RawResponse(status, headers, body, False)
                size_line, rest = self.buffer.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(rest) < size + 2:
                    if not self._fill():
                        return RawResponse(status, headers, body + rest[:size], False)
                    rest = self.buffer.split(b"\r\n", 1)[1]
                body += rest[:size]
                self.buffer = rest[size + 2 :]
                if size == 0:
                    return RawResponse(status, headers, body, True)
        if "content-length" in names:
            length = int(names["content-length"])
            while len(self.buffer) < length:
                if not self._fill():
                    body, self.buffer = self.buffer, b""
                    return RawResponse(status, headers, body, False)
            body, self.buffer = self.buffer[:length], self.buffer[length:]
            return RawResponse(status, headers, body, True)
        while self._fill():
            pass
        body, self.buffer = self.buffer, b""
        return RawResponse(status, headers, body, True)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def get(port: int, target: str, *, host: str = "127.0.0.1", headers: str = "", timeout: float = 10.0) -> RawResponse:
    """One GET on a fresh connection."""
    with RawClient(port, timeout) as client:
        client.send(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode("latin-1"))
        return client.read_response()
