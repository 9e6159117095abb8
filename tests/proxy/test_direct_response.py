"""proxy.upstream_response.DirectResponse on a socket pair: when its connection goes back to the pool open, and
the limits of the chunked framing. (Its rules against real misbehaving upstreams, through a real gateway, are in
test_upstream_responses_e2e.py.)"""

from __future__ import annotations

import socket

import pytest
from urllib3.exceptions import ProtocolError

from proxy import upstream_response
from proxy.upstream_response import HEADER_DEADLINE, DirectResponse


class Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Pool:
    def __init__(self) -> None:
        self.returned: list[Connection] = []

    def _put_conn(self, conn: Connection) -> None:
        self.returned.append(conn)


@pytest.fixture
def answer():
    """DirectResponse over a socket pair whose far end has written `data`."""
    pairs = []
    no_deadline = HEADER_DEADLINE.set(None)  # another test's send() may have left one in this context

    def read(data: bytes, method: str = "GET"):
        ours, theirs = socket.socketpair()
        pairs.append((ours, theirs))
        ours.settimeout(2)
        theirs.sendall(data)
        pool, conn = Pool(), Connection(ours)
        return DirectResponse(pool, conn, method), pool, conn

    yield read
    HEADER_DEADLINE.reset(no_deadline)
    for ours, theirs in pairs:
        ours.close()
        theirs.close()


#: A two-byte body, framed by its length and chunked.
HI = b"Content-Length: 2\r\n\r\nhi"
CHUNKED_HI = b"2\r\nhi\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "method", "body", "reused"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "GET", b"hello", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "GET", b"hello", True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", "GET", b"", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD", b"", True),
        # Bytes after the end of the answer: out of step with the upstream.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\n", "GET", b"hello", False),
        (b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil", "GET", b"", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "HEAD", b"", False),
        # The upstream says it will close, or the body runs until it does.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello", "GET", b"hello", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", "GET", b"hello", False),
        # Every Connection field counts, not the first only (http.client read the first).
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\n" + HI, "GET", b"hi", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\n" + HI, "GET", b"hi", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\n" + HI, "GET", b"hi", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n" + HI, "GET", b"hi", True),
        (b"HTTP/1.1 200 OK\r\nConnection: x-trace\r\nConnection: keep-alive\r\n" + HI, "GET", b"hi", True),
        # Chunked in HTTP/1.0: faulty framing, never reused (RFC 9112 §6.1).
        (
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_HI,
            "GET",
            b"hi",
            False,
        ),
    ],
)
def test_a_connection_goes_back_open_only_after_a_complete_answer_with_nothing_after_it(
    answer, data, method, body, reused
):
    response, pool, conn = answer(data, method)
    assert response.read() == body
    response.release_conn()
    assert pool.returned == [conn]
    assert conn.closed is not reused


def test_a_connection_released_before_its_answer_was_read_is_closed(answer):
    response, pool, conn = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
    assert response.read1(3) == b"hel"
    response.release_conn()
    response.release_conn()  # once only
    assert pool.returned == [conn]
    assert conn.closed


def test_a_trailer_section_is_bounded(answer, monkeypatch):
    monkeypatch.setattr(upstream_response, "MAX_HEAD_BYTES", 1000)
    trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 80) for i in range(20))
    response, _, conn = answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n" + trailers)
    assert response.read1(100) == b"hi"
    with pytest.raises(ProtocolError, match="trailer section longer than 1000 bytes"):
        response.read1(100)
    assert conn.closed


def test_a_head_in_many_small_pieces_is_read_whole(answer, monkeypatch):
    """A head that arrives a few bytes at a time (an upstream dripping it) grows one buffer in place."""
    monkeypatch.setattr(upstream_response, "_RECV", 7)
    fields = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 200) for i in range(90))
    response, pool, conn = answer(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 5\r\n\r\nhello")
    assert response.status == 200
    assert response.headers["X-F89"] == "v" * 200
    assert response.read() == b"hello"
    response.release_conn()
    assert pool.returned == [conn]
    assert not conn.closed
