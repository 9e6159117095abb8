"""gateway_project.http on real sockets: writing a message in one send(2) when it fits, the rest after."""

from __future__ import annotations

import socket
import threading
import time

import gevent
import gevent.socket
import pytest

from gateway_project.http import CLOSED, DATA, IDLE, peek, send_all


class Counting:
    def __init__(self, sock) -> None:
        self.sock = sock
        self.calls: list[str] = []

    def send(self, data) -> int:
        self.calls.append("send")
        return self.sock.send(data)

    def sendall(self, data) -> None:
        self.calls.append("sendall")
        self.sock.sendall(data)


def test_a_small_message_is_one_send():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        counting = Counting(ours)
        send_all(counting, b"HTTP/1.1 200 OK\r\n\r\nhello")
        assert counting.calls == ["send"]
        assert theirs.recv(100) == b"HTTP/1.1 200 OK\r\n\r\nhello"


@pytest.fixture
def own_hub():
    """A gevent hub for this test alone, destroyed after it. Left behind in the test process, this hub's loop
    stopped going idle in a later test (test_workers' turns) once test_settings had run between them; the
    worker tests expect a loop of their own."""
    yield
    gevent.get_hub().destroy(destroy_loop=True)


def test_what_the_kernel_does_not_take_at_once_follows_in_order_under_gevent(own_hub):
    """A message far larger than the socket's buffers: the first send takes part, sendall the rest, while the
    peer reads; every byte arrives once, in order."""
    a, b = socket.socketpair()
    ours, theirs = gevent.socket.socket(fileno=a.detach()), b
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.settimeout(5)
    message = bytes(range(256)) * 16384  # 4 MiB
    received = bytearray()

    def read() -> None:
        while len(received) < len(message):
            chunk = theirs.recv(1 << 20)
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    with ours, theirs:
        counting = Counting(ours)
        send_all(counting, message)
        reader.join(10)
    assert counting.calls == ["send", "sendall"]
    assert bytes(received) == message


@pytest.mark.parametrize("kind", ["stdlib", "gevent"])
def test_peek_tells_idle_data_and_closed_and_leaves_the_socket_as_it_was(kind, own_hub):
    """A kept-alive connection is idle, holds bytes nobody asked for, or was closed by its peer; peeking reads
    nothing and leaves the socket's timeout as it was, on a plain socket and on gevent's (a worker's sockets)."""
    ours, theirs = socket.socketpair()
    if kind == "gevent":
        ours = gevent.socket.socket(fileno=ours.detach())
    with ours, theirs:
        ours.settimeout(5.0)
        started = time.monotonic()
        assert peek(ours) == IDLE
        assert time.monotonic() - started < 1  # never waits
        theirs.sendall(b"x")
        time.sleep(0.05)
        assert peek(ours) == DATA
        assert ours.recv(10) == b"x"  # still there to read
        assert peek(ours) == IDLE
        theirs.close()
        time.sleep(0.05)
        assert peek(ours) == CLOSED
        assert ours.gettimeout() == 5.0
