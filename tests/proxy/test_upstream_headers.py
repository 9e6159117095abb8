"""The upstream response head's fields are parsed without the email package, into exactly the message
http.client's own parsing makes (proxy/upstream_response.parse_headers), odd heads included."""

from __future__ import annotations

import http.client
import io

import pytest

from proxy.upstream_response import parse_headers

HEADS = [
    b"Content-Type: application/json\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n",
    b"A:b\r\nB:  c \r\nC:\r\nX-Y: a:b:c\r\n\r\n",
    b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n",
    b"A: v\n\n",
    b"X: y\t\r\n\r\n",
    b"X: caf\xe9\r\n\r\n",
    b"\r\n",
    b"X: y\r\n",
    # What the email parser treats specially: folded lines, lines that are no field, a bare CR, "From ".
    b"Folded: a\r\n b\r\nNext: c\r\n\r\n",
    b"Bad line\r\nX: y\r\n\r\n",
    b"Sp : v\r\nX: y\r\n\r\n",
    b"X: a\rb\r\nY: z\r\n\r\n",
    b":empty\r\nX: y\r\n\r\n",
    b"From nobody\r\nX: y\r\n\r\n",
    b"Content-Length: 5\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
]


@pytest.mark.parametrize("head", HEADS)
def test_the_same_message_as_http_client_makes(head):
    ours, theirs = parse_headers(io.BytesIO(head)), http.client.parse_headers(io.BytesIO(head))
    assert ours._headers == theirs._headers
    assert ours.items() == theirs.items()
    assert ours.get_payload() == theirs.get_payload()
    assert [type(d) for d in ours.defects] == [type(d) for d in theirs.defects]
    assert ours.get_all("content-length") == theirs.get_all("content-length")


def test_the_same_limits_as_http_client():
    with pytest.raises(http.client.LineTooLong):
        parse_headers(io.BytesIO(b"X: " + b"a" * 70000 + b"\r\n\r\n"))
    with pytest.raises(http.client.HTTPException, match="more than 100 headers"):
        parse_headers(io.BytesIO(b"X: y\r\n" * 101 + b"\r\n"))
