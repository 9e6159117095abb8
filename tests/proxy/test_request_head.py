"""The upstream request's head, built in one pass (proxy.forwarding.OnePassRequestHead): byte for byte what
urllib3 sends, refused where http.client refuses, in one write."""

from __future__ import annotations

import socket

import pytest
from urllib3.connection import HTTPConnection
from urllib3.util import SKIP_HEADER
from urllib3.util.url import _encode_target

from proxy.forwarding import KeepAliveHTTPConnection, direct_head


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
        # So does any method urllib3 does not know to expect no body.
        ("PROPFIND", PROXIED),
        ("PURGE", PROXIED),
        ("OPTIONS", PROXIED),
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


def urlopen_sends(method: str, url: str, headers, body: bytes | None) -> bytes:
    """What urllib3's urlopen() writes for this request: its target encoded, then urllib3's request()."""
    recorder = Recorder()
    try:
        connection = HTTPConnection("upstream.internal", 8080)
        recorder.wire(connection)
        connection.request(method, _encode_target(url), body=body, headers=dict(headers))
        recorder.theirs.settimeout(1)
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(body or b"\r\n\r\n"):
            data += recorder.theirs.recv(65536)
        return data
    finally:
        recorder.close()


@pytest.mark.parametrize(
    ("method", "url", "headers", "body"),
    [
        ("GET", "/v1/items?q=1", PROXIED, None),
        ("HEAD", "/", PROXIED, None),
        ("DELETE", "/v1/items/7", {**PROXIED, "X-Count": 3}, None),
        ("POST", "/v1/items", PROXIED, None),
        ("PROPFIND", "/v1/items", PROXIED, None),
        ("MKCOL", "/v1/items", PROXIED, None),
        ("TRACE", "/v1/items", PROXIED, None),
        ("POST", "/v1/items", {**PROXIED, "Content-Type": "application/json"}, b'{"a": 1}'),
        ("PUT", "/v1/items/7", PROXIED, b""),
        ("PATCH", "/v1/items/7", PROXIED, b"x" * 100_000),
        ("GET", "/v1/items", {"Host": "h"}, None),  # urllib3's User-Agent and Accept-Encoding
        ("GET", "/a b/caf\xe9?q=<x> y#frag", PROXIED, None),  # what urllib3 percent-encodes in the target
        ("GET", "/a\x01\x7fb?\x00", PROXIED, None),  # control characters too: http.client's check never refuses
        ("GET", "/v1/items", {**PROXIED, "X-Folded": "one\r\n two", "X-Latin": "caf\xe9"}, None),
    ],
)
def test_the_direct_head_is_byte_for_byte_what_urlopen_sends(method, url, headers, body):
    message = direct_head(method, url, dict(headers), body)
    assert message + (body or b"") == urlopen_sends(method, url, headers, body)


@pytest.mark.parametrize(
    ("method", "url", "headers"),
    [
        ("GET", "/", {"Accept": "*/*"}),  # no Host: http.client works it out
        ("GET", "http://elsewhere/", PROXIED),  # not a path
        ("POST", "/", {**PROXIED, "Content-Length": "5"}),  # its own framing
        ("POST", "/", {**PROXIED, "Transfer-Encoding": "chunked"}),
    ],
)
def test_a_request_the_direct_head_does_not_cover_takes_urllib3s_path(method, url, headers):
    assert direct_head(method, url, dict(headers), None) is None


@pytest.mark.parametrize(
    ("method", "headers", "refusal"),
    [
        ("GE T", PROXIED, "Method cannot contain non-token characters"),
        ("GET\r\nX: y", PROXIED, "Method cannot contain non-token characters"),
        ("GET", {**PROXIED, "X-Bad:Name": "1"}, "Invalid header name"),
        ("GET", {**PROXIED, "X-Smuggle": "1\r\nInjected: yes"}, "Invalid header value"),
    ],
)
def test_the_direct_head_refuses_what_urllib3_refuses(method, headers, refusal):
    with pytest.raises(ValueError, match=refusal):
        urlopen_sends(method, "/", headers, None)
    for _ in range(2):  # the second time too: a refused name is never remembered as checked
        with pytest.raises(ValueError, match=refusal):
            direct_head(method, "/", dict(headers), None)


def test_the_illegal_value_is_named_when_others_come_before_and_after_it():
    headers = {**PROXIED, "X-Before": "fine", "X-Bad": "one\ntwo", "X-After": "ends in CR\r"}
    with pytest.raises(ValueError, match=r"Invalid header value 'one\\ntwo'"):
        direct_head("GET", "/", headers, None)
    headers = {**PROXIED, "X-Before": "fine", "X-After": "ends in CR\r"}
    with pytest.raises(ValueError, match=r"Invalid header value 'ends in CR\\r'"):
        direct_head("GET", "/", headers, None)
    with pytest.raises(ValueError, match="Invalid header value"):
        urlopen_sends("GET", "/", headers, None)
    # Field by field, as http.client checks them: a bad value before a bad name is the one refused.
    headers = {**PROXIED, "X-Bad": "one\ntwo", "Bad:Name": "x"}
    with pytest.raises(ValueError, match="Invalid header value"):
        urlopen_sends("GET", "/", headers, None)
    with pytest.raises(ValueError, match="Invalid header value"):
        direct_head("GET", "/", headers, None)
