"""The upstream request's head, built in one pass (proxy.forwarding.OnePassRequestHead): byte for byte what
urllib3 sends, refused where http.client refuses, in one write."""

from __future__ import annotations

import socket

import pytest
from urllib3.connection import HTTPConnection
from urllib3.util import SKIP_HEADER

from proxy.forwarding import KeepAliveHTTPConnection


class Recorder:
    """A connected socket pair: the connection writes to one end; the test reads what arrived and counts sends."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.sends = 0

    def wire(self, connection) -> None:
        recorder = self

        class Counted:
            def __init__(self, sock) -> None:
                self._sock = sock

            def sendall(self, data) -> None:
                recorder.sends += 1
                self._sock.sendall(data)

            def send(self, data) -> int:
                recorder.sends += 1
                return self._sock.send(data)

            def settimeout(self, value) -> None:
                self._sock.settimeout(value)

            def __getattr__(self, name):
                return getattr(self._sock, name)

        connection.sock = Counted(self.ours)

    def received(self) -> bytes:
        self.theirs.settimeout(1)
        data = b""
        while not data.endswith(b"\r\n\r\n"):
            data += self.theirs.recv(65536)
        return data

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


def head(connection_class, method: str, url: str, headers, **kwargs) -> tuple[bytes, int]:
    recorder = Recorder()
    try:
        connection = connection_class("upstream.internal", 8080)
        recorder.wire(connection)
        connection.request(method, url, headers=headers, **kwargs)
        return recorder.received(), recorder.sends
    finally:
        recorder.close()


PROXIED = {
    "Accept": "*/*",
    "X-Forwarded-For": "192.0.2.7",
    "X-Forwarded-Proto": "http",
    "X-Forwarded-Host": "api.example.com",
    "Via": "1.1 gateway",
    "X-Request-ID": "abc",
    "Host": "api.example.com",
    "User-Agent": SKIP_HEADER,
    "Accept-Encoding": SKIP_HEADER,
}


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("GET", PROXIED),
        ("HEAD", PROXIED),
        ("DELETE", {**PROXIED, "X-Count": 3}),
        # A bodiless POST, PUT or PATCH says Content-Length: 0, as urllib3 says it.
        ("POST", PROXIED),
        ("PATCH", PROXIED),
        # Without Host, User-Agent or Accept-Encoding, urllib3's and http.client's own.
        ("GET", {"Accept": "*/*"}),
        ("get", {"accept-encoding": "gzip", "host": "h", "user-agent": "ua"}),
        # A value folded onto a second line is allowed by http.client, so here too.
        ("GET", {**PROXIED, "X-Folded": "one\r\n two"}),
        ("GET", {**PROXIED, "X-Latin": "caf\xe9"}),
    ],
)
def test_the_head_is_byte_for_byte_urllib3s_in_one_write(method, headers):
    expected, _ = head(HTTPConnection, method, "/v1/items?q=1", dict(headers))
    sent, sends = head(KeepAliveHTTPConnection, method, "/v1/items?q=1", dict(headers))
    assert sent == expected
    assert sends == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Bad\r\nInjected": "1"},
        {"X-Bad:Name": "1"},
        {" X-Leading-Blank": "1"},
        {"": "1"},
        {"X-Smuggle": "1\r\nInjected: yes"},
        {"X-Smuggle": "1\nInjected: yes"},
        {"X-Smuggle": "1\rInjected: yes"},
        {"X-Caf\xe9": "1"},
        {"X-Not-Skippable": SKIP_HEADER},
    ],
)
def test_what_http_client_refuses_is_refused_and_nothing_is_sent(headers):
    with pytest.raises((ValueError, UnicodeEncodeError)):
        head(HTTPConnection, "GET", "/", dict(headers))
    recorder = Recorder()
    try:
        connection = KeepAliveHTTPConnection("upstream.internal", 8080)
        recorder.wire(connection)
        with pytest.raises((ValueError, UnicodeEncodeError)):
            connection.request("GET", "/", headers=dict(headers))
        assert recorder.sends == 0
    finally:
        recorder.close()


def test_a_value_that_is_no_latin_1_is_refused_as_http_client_refuses_it():
    with pytest.raises(UnicodeEncodeError):
        head(HTTPConnection, "GET", "/", {"X-Emoji": "\u2603"})
    with pytest.raises(UnicodeEncodeError):
        head(KeepAliveHTTPConnection, "GET", "/", {"X-Emoji": "\u2603"})


@pytest.mark.parametrize(
    ("body", "kwargs", "headers"),
    [
        (b"payload", {}, {"Host": "h"}),
        (iter([b"pay", b"load"]), {"chunked": True}, {"Host": "h"}),
        (None, {}, {"Host": "h", "Content-Length": "0"}),
        (None, {}, {"Host": "h", "Transfer-Encoding": "chunked"}),
    ],
)
def test_a_request_with_a_body_or_its_own_framing_takes_urllib3s_path(body, kwargs, headers):
    def sent(connection_class):
        recorder = Recorder()
        try:
            connection = connection_class("upstream.internal", 8080)
            recorder.wire(connection)
            given = body if not hasattr(body, "__next__") else iter([b"pay", b"load"])
            connection.request("POST", "/", body=given, headers=dict(headers), **kwargs)
            recorder.theirs.settimeout(0.5)
            data = b""
            try:
                while True:
                    piece = recorder.theirs.recv(65536)
                    if not piece:
                        break
                    data += piece
            except TimeoutError:
                pass
            return data
        finally:
            recorder.close()

    assert sent(KeepAliveHTTPConnection) == sent(HTTPConnection)
