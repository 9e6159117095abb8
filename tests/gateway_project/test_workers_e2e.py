"""The gateway's gunicorn worker (gateway_project/workers.py) on a real gunicorn: one keep-alive connection
with requests waiting cannot keep the worker from another connection."""

from __future__ import annotations

import socket
import time

import pytest

from tests.support.gateways import start_gateway

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: gateway.test\r\n\r\n"
ANSWER = b'{"status":"ok"}'


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory, redis_server, django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        gw = start_gateway(tmp_path_factory, redis_server, workers=1)
    yield gw
    gw.stop()


def answered(sock: socket.socket, count: int, timeout: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(ANSWER) < count:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(1 << 20)
        assert chunk, "the gateway closed the connection"
        data += chunk
    return data


def test_pipelined_requests_on_one_connection_do_not_hold_up_another(one_worker):
    greedy = socket.create_connection(("127.0.0.1", one_worker.port), timeout=10)
    polite = socket.create_connection(("127.0.0.1", one_worker.port), timeout=10)
    try:
        for sock in (greedy, polite):  # both accepted, each served by its own greenlet
            sock.sendall(REQUEST)
            answered(sock, 1)
        burst = 400
        greedy.sendall(REQUEST * burst)  # all in the worker's socket before it reads the first
        so_far = answered(greedy, 1)  # the worker is at it
        polite.sendall(REQUEST)
        answered(polite, 1)
        greedy.setblocking(False)
        try:
            while chunk := greedy.recv(1 << 20):
                so_far += chunk
        except BlockingIOError:
            pass
        # gunicorn's own gevent worker answered all 400 first: the greenlet never yielded while the next
        # request was already buffered.
        assert so_far.count(ANSWER) < burst // 2
        greedy.setblocking(True)
        answered(greedy, burst - so_far.count(ANSWER))
    finally:
        greedy.close()
        polite.close()
