"""Input the gateway refuses at the front door, end to end: a request without one Host, a path that Unicode
normalization turns into something else."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.support.config import make_route, make_upstream, serve
from tests.support.rawclient import RawClient


@pytest.fixture
def api(live, upstream):
    make_route("api", "/api", make_upstream("backend", upstream.url + "/base", max_retries=0))
    serve(live)
    return upstream


def send(gateway, head: str):
    with RawClient(gateway.port) as client:
        client.send(head.encode("latin-1"))
        return client.read_response()


@pytest.mark.parametrize("target", ["/api/x", "/healthz"])
@pytest.mark.parametrize(
    "host_lines",
    [
        "",
        "Host: 127.0.0.1\r\nHost: 127.0.0.1\r\n",
        "Host: 127.0.0.1\r\nHost: evil.example\r\n",
        "Host: \r\n",
    ],
    ids=["no-host", "same-host-twice", "two-hosts", "empty-host"],
)
def test_an_http_1_1_request_without_exactly_one_host_is_a_400(live, api, target, host_lines):
    answer = send(live, f"GET {target} HTTP/1.1\r\n{host_lines}Connection: close\r\n\r\n")
    assert answer.status == 400, answer.body
    if host_lines.count("Host") < 2:  # gunicorn itself refuses a repeated Host, before the gateway
        assert json.loads(answer.body)["error"] == "bad_host"
    assert api.received == []


def test_an_http_1_0_request_may_omit_host(live, api):
    answer = send(live, "GET /api/old HTTP/1.0\r\n\r\n")
    assert answer.status == 200
    assert api.received[-1].path == "/base/old"


@pytest.mark.parametrize(
    "target",
    [
        "/api/%EF%BC%85%EF%BC%92%EF%BD%85%EF%BC%85%EF%BC%92%EF%BD%85/admin",  # fullwidth '%2e%2e' -> '%2e%2e' -> '..'
        "/api/%EF%BC%85%EF%BC%92%EF%BC%A6etc%EF%BC%85%EF%BC%92%EF%BC%A6passwd",  # fullwidth '%2F' -> '%2F' -> '/'
        "/api/%EF%BC%852e%EF%BC%852e/admin",  # a fullwidth percent sign before ASCII '2e'
    ],
)
def test_a_path_that_normalizes_to_an_escape_is_refused(live, api, target):
    answer = send(live, f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert answer.status == 400
    assert json.loads(answer.body)["error"] == "bad_path"
    assert api.received == []


def test_fullwidth_letters_are_forwarded_byte_exact(live, api):
    answer = send(live, "GET /api/%EF%BC%A1%EF%BC%A2%EF%BC%A3 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert answer.status == 200
    assert api.received[-1].path == "/base/%EF%BC%A1%EF%BC%A2%EF%BC%A3"


def test_a_path_cannot_dodge_a_longer_prefix_by_normalizing_into_it(live, upstream):
    """'/orders/<fullwidth a>dmin' is '/orders/admin' to an upstream that normalizes: not the open route."""
    make_route("admin", "/orders/admin", make_upstream("locked", upstream.url + "/locked"), require_api_key=True)
    make_route("orders", "/orders", make_upstream("open", upstream.url + "/open"))
    serve(live)
    answer = send(live, "GET /orders/%EF%BD%81dmin/users HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert answer.status in (400, 401)
    assert upstream.received == []


@pytest.mark.parametrize("coding", ["gzip, chunked", "deflate,chunked", "chunked, chunked"])
def test_a_body_in_a_transfer_coding_other_than_chunked_is_a_501(live, api, coding):
    """The server takes the chunked framing off and nothing else: forwarded, a gzip body would reach the upstream
    as if it were plain."""
    body = "5\r\nhello\r\n0\r\n\r\n"
    answer = send(
        live,
        f"POST /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: {coding}\r\nConnection: close\r\n\r\n{body}",
    )
    if answer.status == 400:
        return  # gunicorn itself refused this one, before the gateway: as good
    assert answer.status == 501, answer.body
    assert json.loads(answer.body)["error"] == "not_implemented"
    assert api.received == []


def test_a_chunked_body_is_forwarded(live, api):
    body = "5\r\nhello\r\n0\r\n\r\n"
    head = "POST /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n"
    answer = send(live, head + body)
    assert answer.status == 200
    assert api.received[-1].body_sha256 == hashlib.sha256(b"hello").hexdigest()
