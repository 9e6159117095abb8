"""A real WebSocket echo server on loopback (the `websockets` package), recording each handshake it sees."""

from __future__ import annotations

import threading
import time

from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response
from websockets.sync.server import serve


class EchoServer:
    """Echoes every message. `refuse = 403` makes it answer handshakes with that status instead of 101."""

    def __init__(self) -> None:
        self.handshakes: list[tuple[str, Headers]] = []
        self.closed: list[float] = []  # when each connection's handler saw the connection end
        self.open = 0
        self.refuse: int | None = None
        self.lock = threading.Lock()
        self.server = serve(
            self._handle, "127.0.0.1", 0, process_request=self._process_request, ping_interval=None, compression=None
        )
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.socket.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EchoServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()

    def _process_request(self, connection, request) -> Response | None:
        with self.lock:
            self.handshakes.append((request.path, request.headers))
        if self.refuse is not None:
            return connection.respond(self.refuse, "refused by the upstream\n")
        return None

    def _handle(self, websocket) -> None:
        with self.lock:
            self.open += 1
        try:
            for message in websocket:
                websocket.send(message)
        except ConnectionClosed:
            pass
        finally:
            with self.lock:
                self.open -= 1
                self.closed.append(time.monotonic())
