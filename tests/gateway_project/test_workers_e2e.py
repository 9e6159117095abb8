"""The gateway's gunicorn worker (gateway_project/workers.py) on a real gunicorn: keep-alive connections with
requests waiting cannot keep the worker from another connection."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.support.gateways import start_gateway
from tests.support.servers import wait_until

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


PROBE = b"HEAD /healthz HTTP/1.1\r\nHost: gateway.test\r\n\r\n"


def access_methods(gateway) -> list[str]:
    """The method of each access line the gateway has written so far, in order."""
    methods = []
    for line in gateway.log().splitlines():
        if line.startswith("{") and '"event": "request"' in line:
            methods.append(json.loads(line)["method"])
    return methods


def drain(sock: socket.socket) -> int:
    """Read what has arrived without waiting; return how many answers it held."""
    data = b""
    sock.setblocking(False)
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(10)
    return data.count(ANSWER)


def test_pipelined_requests_on_one_connection_do_not_hold_up_another(one_worker):
    greedy = socket.create_connection(("127.0.0.1", one_worker.port), timeout=10)
    polite = socket.create_connection(("127.0.0.1", one_worker.port), timeout=10)
    try:
        for sock in (greedy, polite):  # both accepted, each served by its own greenlet
            sock.sendall(REQUEST)
            answered(sock, 1)
        burst = 400
        greedy.sendall(REQUEST * burst)  # all in the worker's socket before it reads the first
        so_far = answered(greedy, 1).count(ANSWER)  # the worker is at it
        polite.sendall(REQUEST)
        answered(polite, 1)
        so_far += drain(greedy)
        # gunicorn's own gevent worker answered all 400 first: the greenlet never yielded while the next
        # request was already buffered.
        assert so_far < burst // 2
        answered(greedy, burst - so_far)
    finally:
        greedy.close()
        polite.close()


def test_a_request_on_another_connection_goes_before_requests_already_waiting(one_worker):
    """Four connections keep the worker busy with requests already in its sockets; a request arriving on a fifth
    is answered next, not after a round of theirs. With `gevent.sleep(0)` after each request the four took turns
    in gevent's callback phase, up to 50 requests before the worker looked at the fifth socket again."""
    greedy = [socket.create_connection(("127.0.0.1", one_worker.port), timeout=10) for _ in range(4)]
    polite = socket.create_connection(("127.0.0.1", one_worker.port), timeout=10)
    burst, probes = 400, 12
    try:
        start = len(access_methods(one_worker))
        for sock in (*greedy, polite):
            sock.sendall(REQUEST)
            answered(sock, 1)
        wait_until(lambda: len(access_methods(one_worker)) == start + 5, 10, "the first answers logged")
        start += 5
        for sock in greedy:
            sock.sendall(REQUEST * burst)
        received = [answered(greedy[0], 1).count(ANSWER), 0, 0, 0]  # the worker is at it
        received_before = []
        for _ in range(probes):
            for i, sock in enumerate(greedy):
                received[i] += drain(sock)
            received_before.append(sum(received))
            polite.sendall(PROBE)
            head = b""
            while b"\r\n\r\n" not in head:
                head += polite.recv(4096)
            assert head.startswith(b"HTTP/1.1 200")
        assert sum(received) < 4 * burst // 2, "the burst was over before the probes: nothing measured"
        for i, sock in enumerate(greedy):
            answered(sock, burst - received[i])
        wait_until(lambda: len(access_methods(one_worker)) == start + 4 * burst + probes, 10, "every answer logged")
        served_before = []
        gets = 0
        for method in access_methods(one_worker)[start:]:
            if method == "HEAD":
                served_before.append(gets)
            else:
                gets += 1
        # How many of the four's requests the worker served between the probe's arrival and its answer.
        queued_behind = [served - received for served, received in zip(served_before, received_before, strict=True)]
        assert max(queued_behind) <= 20, queued_behind
    finally:
        for sock in (*greedy, polite):
            sock.close()


def test_the_gateways_own_answer_on_a_proxied_path_is_framed_by_its_length(one_worker):
    """A 404 of the gateway's own (no route) goes out with a Content-Length, not chunked, and the connection
    carries the next request after exactly that many bytes."""
    with socket.create_connection(("127.0.0.1", one_worker.port), timeout=10) as sock:
        sock.sendall(b"GET /no-such-route HTTP/1.1\r\nHost: gateway.test\r\n\r\n" + REQUEST)
        data = b""
        while data.count(ANSWER) < 1:
            chunk = sock.recv(1 << 20)
            assert chunk, "the gateway closed the connection"
            data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 404 ")
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert b"Transfer-Encoding" not in fields
    length = int(fields[b"Content-Length"])
    assert json.loads(rest[:length])["error"] == "no_route"
    assert rest[length:].startswith(b"HTTP/1.1 200 ")


def test_a_head_answer_carries_the_length_and_no_body_and_logs_no_warning(one_worker):
    """HEAD on the gateway's own answers (no route, health): the GET's Content-Length, no body bytes, the next
    answer right after the header block, and no warning from gunicorn about body bytes it had to drop."""
    with socket.create_connection(("127.0.0.1", one_worker.port), timeout=10) as sock:
        sock.sendall(
            b"HEAD /no-such-route HTTP/1.1\r\nHost: gateway.test\r\n\r\n"
            b"HEAD /healthz HTTP/1.1\r\nHost: gateway.test\r\n\r\n" + REQUEST
        )
        data = b""
        while data.count(ANSWER) < 1:
            chunk = sock.recv(1 << 20)
            assert chunk, "the gateway closed the connection"
            data += chunk
    no_route, health, get, _ = data.split(b"\r\n\r\n", 3)
    assert no_route.startswith(b"HTTP/1.1 404 ") and b"\r\nContent-Length: " in no_route
    assert health.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Length: 15" in health
    assert get.startswith(b"HTTP/1.1 200 ")
    assert "no-body response" not in one_worker.log()
