"""A client that stops reading a response, through a real gunicorn gateway: it is dropped once a write has
waited GATEWAY_SEND_TIMEOUT, and the upstream connection its answer streamed from is closed with it (nginx's
send_timeout). Before, neither ever happened while the client kept its connection open."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.support.config import make_route, make_upstream, serve
from tests.support.rawupstream import RawUpstream

SEND_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def gateway_options() -> dict:
    return {"workers": 1, "env": {"GATEWAY_SEND_TIMEOUT": str(SEND_TIMEOUT)}}


def test_a_client_that_stops_reading_is_dropped_and_frees_the_upstream_connection(live):
    upstream_gone = threading.Event()

    def endless(conn) -> None:
        if conn.read_request() is None:
            return
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 34))
        chunk = b"x" * 65536
        while conn.send(chunk):
            pass
        upstream_gone.set()

    with RawUpstream(endless) as raw:
        make_route("big", "/big", make_upstream("big", raw.url, read_timeout=30))
        serve(live)
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", live.port))
        try:
            client.sendall(b"GET /big/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            started = time.monotonic()
            # The client reads nothing: the gateway's writes fill its buffers and wait.
            assert upstream_gone.wait(15), "the upstream connection was still open after 15 s"
            assert time.monotonic() - started >= SEND_TIMEOUT * 0.9
            # And the client's connection was closed by the gateway: once the buffered bytes are read, EOF.
            client.settimeout(10)
            while client.recv(1 << 20):
                pass
        finally:
            client.close()
