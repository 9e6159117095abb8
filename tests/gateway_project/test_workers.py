"""The gateway's gunicorn worker: when a worker leaves a new connection to a less loaded one (pure logic), and
how its responses reach the socket (gunicorn's own parser and response on a socket pair); the worker on a real
gunicorn is in test_workers_e2e.py."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections import Counter

import gevent
import gevent.socket
import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser

from gateway_project import workers


@pytest.fixture
def worker():
    """A GatewayWorker's accept bookkeeping, in slot 0, with the shared table restored afterwards."""
    saved = list(workers._counts)
    w = object.__new__(workers.GatewayWorker)
    w._slot, w._pid, w._open, w._held_since, w._last_hold = 0, os.getpid(), 0, None, 0.0
    for i in range(len(workers._counts)):
        workers._counts[i] = 0
    workers._counts[0] = w._pid
    yield w
    for i, value in enumerate(saved):
        workers._counts[i] = value


def other(slot: int, pid: int, connections: int) -> None:
    workers._counts[2 * slot] = pid
    workers._counts[2 * slot + 1] = connections


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_accepts_while_within_the_slack_of_the_least_loaded_live_worker(worker):
    other(1, os.getppid(), 5)
    other(2, os.getppid(), 9)
    worker._open = 5 + workers.ACCEPT_SLACK
    assert not worker.hold_back()
    worker._open += 1
    assert worker.hold_back()


def test_a_lone_worker_and_a_dead_workers_slot_never_hold_back(worker, dead_pid):
    worker._open = 50
    assert not worker.hold_back()
    other(3, dead_pid, 0)
    assert not worker.hold_back()


def test_holds_a_connection_back_at_most_the_maximum_deferral(worker, monkeypatch):
    other(1, os.getppid(), 0)
    worker._open = 10
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    waited = 0.0
    while worker.hold_back():
        now[0] += workers.ACCEPT_RETRY
        waited += workers.ACCEPT_RETRY
        assert waited <= workers.ACCEPT_MAX_DEFER + 2 * workers.ACCEPT_RETRY
    assert waited >= workers.ACCEPT_MAX_DEFER - workers.ACCEPT_RETRY
    # A new wait later (the other worker took the connections meanwhile) starts its own clock.
    now[0] += 1.0
    assert worker.hold_back()


class Recorder:
    """The client socket as the response sees it: every send or sendall is one write."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.sock.sendall(data)

    def send(self, data: bytes) -> int:
        sent = self.sock.send(data)
        self.writes.append(bytes(data[:sent]))
        return sent


def respond(request: bytes, status: str, headers: list, body: list[bytes]) -> tuple[list[bytes], bytes]:
    """Serve one request with the worker's Response; return its writes and what the client read."""
    server, client = socket.socketpair()
    with server, client:
        client.sendall(request)
        req = next(RequestParser(Config(), server, ("127.0.0.1", 1)))
        sock = Recorder(server)
        response = workers.Response(req, sock, Config())
        response.start_response(status, headers)
        for piece in body:
            response.write(piece)
        response.close()
        server.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := client.recv(65536):
            received += chunk
    return sock.writes, received


GET = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n"


def test_the_header_block_goes_out_with_the_first_body_bytes():
    writes, received = respond(GET, "200 OK", [("Content-Length", "10")], [b"hello", b"world"])
    assert len(writes) == 2
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\nhello")
    assert writes[1] == b"world"
    assert received == b"".join(writes)


def test_a_chunked_body_keeps_its_framing():
    writes, received = respond(GET, "200 OK", [("Content-Type", "text/plain")], [b"hello", b"world!"])
    assert b"Transfer-Encoding: chunked\r\n" in writes[0]
    assert writes[0].endswith(b"\r\n\r\n5\r\nhello\r\n")
    assert writes[1:] == [b"6\r\nworld!\r\n", b"0\r\n\r\n"]
    assert received.endswith(b"\r\n\r\n5\r\nhello\r\n6\r\nworld!\r\n0\r\n\r\n")


def test_an_empty_chunked_body_is_the_header_block_and_the_last_chunk_in_one_write():
    writes, _ = respond(GET, "200 OK", [], [])
    assert len(writes) == 1
    assert writes[0].endswith(b"\r\n\r\n0\r\n\r\n")


@pytest.mark.parametrize(
    ("request_line", "status", "body"),
    [
        (b"HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n", "200 OK", [b"dropped"]),
        (GET, "204 No Content", []),
        (GET, "304 Not Modified", []),
    ],
)
def test_a_response_without_a_body_is_its_header_block(request_line, status, body):
    writes, received = respond(request_line, status, [("Content-Length", "7")], body)
    assert len(writes) == 1
    assert writes[0].endswith(b"\r\n\r\n")
    assert received == writes[0]


def test_an_empty_piece_sends_the_header_block_at_once():
    """A streaming answer whose body is slow to come: an empty first piece gets the headers to the client."""
    server, client = socket.socketpair()
    with server, client:
        client.sendall(GET)
        req = next(RequestParser(Config(), server, ("127.0.0.1", 1)))
        response = workers.Response(req, server, Config())
        response.start_response("200 OK", [("Content-Type", "text/event-stream")])
        response.write(b"")
        client.settimeout(5)
        assert client.recv(65536).endswith(b"\r\n\r\n")


def test_turns_let_waiting_connections_go_in_arrival_order():
    turns = workers.Turns(max_wait=5.0)
    order = []

    def next_request(name):
        turns.wait()
        order.append(name)

    gevent.joinall([gevent.spawn(next_request, name) for name in "abcde"], timeout=5)
    assert order == list("abcde")
    assert not turns.waiting and not turns.idle.active and not turns.timer.active


@pytest.mark.parametrize(("batch", "expected"), [(1, [1, 1, 1, 1, 1]), (3, [3, 2])])
def test_an_idle_moment_lets_up_to_a_batch_of_waiting_connections_go_together(batch, expected):
    """The connections let go by one idle moment start in the same pass of the loop (so the requests of one
    pass share its writes to Redis), in arrival order; the rest wait for the next idle moment."""
    turns = workers.Turns(max_wait=5.0, batch=batch)
    passes = [0]
    prepare = gevent.get_hub().loop.prepare()  # runs once per pass of the loop, before it polls
    prepare.start(lambda: passes.__setitem__(0, passes[0] + 1))
    started = []

    def next_request(name):
        turns.wait()
        started.append((name, passes[0]))

    try:
        waiting = [gevent.spawn(next_request, name) for name in "abcde"]
        gevent.joinall(waiting, timeout=5)
    finally:
        prepare.stop()
    assert [name for name, _ in started] == list("abcde")
    together = Counter(seen for _, seen in started)  # how many started in each pass
    assert [together[seen] for seen in sorted(together)] == expected


def test_a_loop_that_is_never_idle_still_lets_a_waiting_connection_go():
    """A socket that is always readable keeps a watcher pending on every pass of the loop, so it is never idle:
    the wait ends after max_wait, not never."""
    turns = workers.Turns(max_wait=0.05)
    busy, other = socket.socketpair()
    busy.sendall(b"x")  # never read: always readable
    spinning = True

    def spin():
        while spinning:
            gevent.socket.wait_read(other.fileno())

    spinner = gevent.spawn(spin)
    try:
        gevent.sleep(0.01)
        started = time.monotonic()
        waiting = gevent.spawn(turns.wait)
        waiting.join(timeout=2)
        waited = time.monotonic() - started
        assert waiting.successful()
        assert 0.04 <= waited < 1.0
    finally:
        spinning = False
        spinner.join(timeout=2)
        busy.close()
        other.close()


def test_the_date_header_is_gunicorns_formatted_once_a_second(monkeypatch):
    from email.utils import formatdate

    now = [1_700_000_000.25]
    monkeypatch.setattr(workers.time, "time", lambda: now[0])
    monkeypatch.setattr(workers, "_date", (0, ""))
    formatted = []
    monkeypatch.setattr(workers, "_gunicorn_http_date", lambda t: formatted.append(t) or formatdate(t, usegmt=True))
    first = workers.http_date()
    assert first == "Tue, 14 Nov 2023 22:13:20 GMT" == formatdate(now[0], usegmt=True)
    now[0] += 0.7  # the same second
    assert workers.http_date() == first
    now[0] += 0.1  # the next one
    assert workers.http_date() == "Tue, 14 Nov 2023 22:13:21 GMT"
    assert len(formatted) == 2
    assert workers.http_date(86400) == "Fri, 02 Jan 1970 00:00:00 GMT"  # a given time is formatted as given


def test_the_worker_freezes_what_the_loaded_application_holds_before_it_serves(monkeypatch):
    """Full collections would otherwise walk every object of Django and the apps, stopping the worker for tens
    of milliseconds; frozen objects are left out."""
    import gc

    frozen_when_serving = []
    monkeypatch.setattr(workers.GeventWorker, "run", lambda self: frozen_when_serving.append(gc.get_freeze_count()))
    monkeypatch.setattr(workers, "Turns", lambda max_wait, batch: None)
    monkeypatch.setattr(workers.ggevent, "StreamServer", workers.ggevent.StreamServer)
    monkeypatch.setattr(workers.wsgi, "Response", workers.wsgi.Response)
    monkeypatch.setattr(workers.util, "http_date", workers.util.http_date)
    worker = object.__new__(workers.GatewayWorker)
    worker._slot = 0
    saved = workers._counts[0]
    gc.unfreeze()
    try:
        worker.run()
    finally:
        gc.unfreeze()
        workers._counts[0] = saved
    assert frozen_when_serving and frozen_when_serving[0] > 10_000
