"""A target server in a process of its own, so that a test can kill it as a crash would (SIGKILL: the kernel
resets its connections, in flight or idle) and start it again on the same port.

Every answer is 200 with `X-Served-By: <port>`, so a client can tell which target served it.

    python -m tests.support.target PORT
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.servers import REPO, free_port, wait_until


class TargetProcess:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TargetProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.target", str(self.port)], cwd=REPO)
        wait_until(self._accepts, 10, f"target on port {self.port}")
        return self

    def _accepts(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        body = b"{}"
        self.send_response(200)
        self.send_header("X-Served-By", str(self.server.server_address[1]))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


if __name__ == "__main__":
    _Server(("127.0.0.1", int(sys.argv[1])), _Handler).serve_forever(poll_interval=0.05)
