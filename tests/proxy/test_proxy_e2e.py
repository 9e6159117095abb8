"""The request path end to end: a real gunicorn gateway, a real recording upstream, real HTTP on loopback."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
import requests

from tests.support.config import make_route, make_upstream, serve
from tests.support.upstream import Upstream


def raw_request(gateway, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes exactly as written (no client-side normalization of the path) and read one response."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def get_raw(gateway, target: str, headers: str = "") -> tuple[int, dict[str, str], bytes]:
    return raw_request(
        gateway, f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n".encode()
    )


@pytest.fixture
def api(live, upstream):
    backend = make_upstream("backend", upstream.url + "/base", backoff_factor=0, backoff_jitter=0)
    make_route("api", "/api", backend)
    serve(live)
    return upstream


def test_routes_by_longest_prefix_and_strips_it(live, upstream):
    backend = make_upstream("backend", upstream.url + "/base")
    other = make_upstream("other", upstream.url + "/other")
    make_route("api", "/api", backend)
    make_route("api-users", "/api/users", other, strip_prefix=False)
    serve(live)

    assert requests.get(live.url("/api/orders/7?x=1")).json()["path"] == "/base/orders/7?x=1"
    assert requests.get(live.url("/api/users/42")).json()["path"] == "/other/api/users/42"
    assert requests.get(live.url("/api")).json()["path"] == "/base"
    assert requests.get(live.url("/api/")).json()["path"] == "/base/"


def test_unmatched_path_is_a_json_404_with_the_request_id(live):
    response = requests.get(live.url("/nowhere"), headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 404
    assert response.headers["X-Request-ID"] == "abc-123"
    assert response.json() == {
        "error": "no_route",
        "message": "No route matches this request.",
        "request_id": "abc-123",
    }


def test_method_outside_the_route_is_405_with_allow(live, upstream):
    make_route("read-only", "/ro", make_upstream("backend", upstream.url), methods="GET")
    serve(live)
    response = requests.post(live.url("/ro/x"))
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD"
    assert upstream.received == []
    assert requests.head(live.url("/ro/x")).status_code == 200


def test_unsafe_request_ids_are_replaced(api, live):
    for bad in ("a" * 129, "has space", "semi;colon", "ünïcode"):
        response = requests.get(live.url("/api/x"), headers={"X-Request-ID": bad.encode("utf-8")})
        rid = response.headers["X-Request-ID"]
        assert rid != bad and len(rid) == 32
        assert api.received[-1].header("X-Request-ID") == rid


def test_request_headers_are_cleaned_and_gateway_headers_replace_client_values(api, live):
    requests.get(
        live.url("/api/h"),
        headers={
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "must not pass",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "Upgrade": "websocket",
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.example",
            "X-Real-IP": "6.6.6.6",
            "Forwarded": "for=6.6.6.6",
            "X-Forwarded-Ssl": "on",
            "X-Forwarded-Client-Cert": "Hash=abc;Subject=CN=admin",
            "X-Forwarded-Port": "443",
            "True-Client-IP": "6.6.6.6",
            "X-Client-IP": "6.6.6.6",
            "CF-Connecting-IP": "6.6.6.6",
            "X-Original-URL": "/admin",
            "X-Rewrite-URL": "/admin",
            "Authorization": "Bearer token",
            "X-Custom": "kept",
            "Via": "1.1 client-proxy",
        },
    )
    seen = api.received[-1]
    names = seen.header_names()
    for hop in (
        "x-secret-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "upgrade",
        "x-real-ip",
        "forwarded",
        "x-forwarded-ssl",
        "x-forwarded-client-cert",
        "x-forwarded-port",
        "true-client-ip",
        "x-client-ip",
        "cf-connecting-ip",
        "x-original-url",
        "x-rewrite-url",
    ):
        assert hop not in names, hop
    assert seen.header("X-Forwarded-For") == "127.0.0.1"
    assert seen.header("X-Forwarded-Proto") == "http"
    assert seen.header("X-Forwarded-Host") == f"127.0.0.1:{live.port}"
    assert seen.header("X-Forwarded-Prefix") == "/api"
    assert seen.header("Host") == f"127.0.0.1:{api.port}"
    assert seen.header("Via") == "1.1 client-proxy, 1.1 gateway"
    assert seen.header("Authorization") == "Bearer token"
    assert seen.header("X-Custom") == "kept"
    assert "user-agent" in names  # the client's own (python-requests), not one added by urllib3
    assert seen.header("User-Agent").startswith("python-requests")


def test_no_user_agent_or_accept_encoding_is_invented(api, live):
    raw_request(live, b"GET /api/bare HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    names = api.received[-1].header_names()
    assert "user-agent" not in names
    assert "accept-encoding" not in names


def test_response_hop_by_hop_headers_are_removed_and_cookies_kept_apart(api, live):
    response = requests.get(live.url("/api/hop"))
    for hop in ("x-upstream-private", "keep-alive", "proxy-authenticate", "upgrade", "trailer"):
        assert hop not in {k.lower() for k in response.headers}, hop
    assert response.headers["X-Kept"] == "yes"
    cookies = requests.get(live.url("/api/cookies")).raw.headers.getlist("Set-Cookie")
    assert cookies == ["a=1; Path=/", "b=2; Path=/"]


def test_content_is_not_decoded_or_re_encoded(live, upstream):
    make_route("api", "/api", make_upstream("backend", upstream.url))
    serve(live)
    response = requests.get(live.url("/api/bytes/100000"), headers={"Accept-Encoding": "gzip"}, stream=True)
    raw = response.raw.read(decode_content=False)
    assert len(raw) == 100000 and raw == b"\xab" * 100000
    assert "content-encoding" not in {k.lower() for k in response.headers}


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/x",
        "/api//evil.example/x",
        "/api/../admin/",
        "/api/./x",
        "/api/%2e%2e/admin/",
        "/api/%2E%2E%2Fadmin",
        "/api/..%2fadmin",
        "/api/%2fetc",
        "/api/%252e%252e/admin",
        "/api/%25252e%25252e/x",
        "/api/..;/admin",
        "/api/a%5c..%5cb",
        "/api/a\\b",
        "/api/%00",
        "http://evil.example/api/x",
    ],
)
def test_unsafe_paths_are_refused_and_never_reach_an_upstream(api, live, target):
    status, _, body = get_raw(live, target)
    assert status == 400, body
    assert json.loads(body)["error"] in ("bad_path", "bad_request")
    assert api.received == []


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/api/a%20b", "/base/a%20b"),
        ("/api/caf%C3%A9?q=%2F..%2F", "/base/caf%C3%A9?q=%2F..%2F"),
        ("/api/x;y=1/z", "/base/x;y=1/z"),
        ("/api/...", "/base/..."),
        ("/api/a..b", "/base/a..b"),
        ("/api/%41PI", "/base/%41PI"),
    ],
)
def test_safe_paths_are_forwarded_byte_exact_under_the_base_path(api, live, target, forwarded):
    status, _, _ = get_raw(live, target)
    assert status == 200
    assert api.received[-1].path == forwarded


def test_gunicorn_does_not_trust_forwarding_headers_from_loopback(api, live):
    # gunicorn's default would let a loopback client set the scheme, SCRIPT_NAME and PATH_INFO.
    get_raw(live, "/api/s", "X-Forwarded-Proto: https\r\nX-Forwarded-Ssl: on\r\nSCRIPT_NAME: /api\r\n")
    seen = api.received[-1]
    assert seen.header("X-Forwarded-Proto") == "http"
    assert seen.path == "/base/s"


def test_upstream_refused_is_502_and_timeout_is_504(live, upstream):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    make_route("dead", "/dead", make_upstream("dead", f"http://127.0.0.1:{port}", max_retries=0))
    make_route("slow", "/slow", make_upstream("slow", upstream.url, read_timeout=0.3, max_retries=0))
    serve(live)

    refused = requests.get(live.url("/dead/x"))
    assert refused.status_code == 502
    assert refused.json()["error"] == "upstream_unavailable"
    assert str(port) not in refused.text and "127.0.0.1" not in refused.text

    slow = requests.get(live.url("/slow/delay/2"))
    assert slow.status_code == 504
    assert slow.json()["request_id"] == slow.headers["X-Request-ID"]


def test_get_is_retried_on_listed_statuses_and_post_is_never_sent_twice(api, live):
    api.queue(503, 503)
    response = requests.get(live.url("/api/r"))
    assert response.status_code == 200
    assert len(api.requests_to("/base/r")) == 3

    api.reset()
    api.queue(503, 503)
    response = requests.post(live.url("/api/p"), data=b"payload")
    assert response.status_code == 503
    assert len(api.requests_to("/base/p")) == 1


def test_a_dropped_connection_is_retried_for_get_but_not_for_post(api, live):
    api.queue("reset")
    assert requests.get(live.url("/api/g")).status_code == 200
    assert len(api.requests_to("/base/g")) == 2

    api.reset()
    api.queue("reset")
    assert requests.post(live.url("/api/p"), data=b"x").status_code == 502
    assert len(api.requests_to("/base/p")) == 1


def test_refused_connection_is_retried_for_post(live, upstream):
    # An upstream that is down at first and comes up during the retries: a refused connection never reached it.
    port_holder = socket.socket()
    port_holder.bind(("127.0.0.1", 0))
    port = port_holder.getsockname()[1]
    port_holder.close()
    make_route(
        "late",
        "/late",
        make_upstream("late", f"http://127.0.0.1:{port}", max_retries=3, backoff_factor=0.2, backoff_jitter=0),
    )
    serve(live)

    started: list[Upstream] = []

    def start_late():
        time.sleep(0.25)
        started.append(Upstream(port=port).start())

    starter = threading.Thread(target=start_late)
    starter.start()
    try:
        response = requests.post(live.url("/late/p"), data=b"once")
        starter.join()
        assert response.status_code == 200
        assert len(started[0].requests_to("/p")) == 1
    finally:
        starter.join()
        for server in started:
            server.stop()


def test_retries_stop_at_the_deadline(live, upstream):
    make_route(
        "slow",
        "/slow",
        make_upstream(
            "slow", upstream.url, read_timeout=0.4, deadline=1.0, max_retries=10, backoff_factor=0, backoff_jitter=0
        ),
    )
    serve(live)
    started = time.monotonic()
    response = requests.get(live.url("/slow/delay/3"))
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert elapsed < 1.4
    assert len(upstream.requests_to("/delay/3")) == 3  # 0.4 + 0.4 + the 0.2 left


def test_retry_after_longer_than_the_time_left_ends_the_retries(live, upstream):
    make_route("ra", "/ra", make_upstream("ra", upstream.url, deadline=2.0, max_retries=5))
    serve(live)
    started = time.monotonic()
    response = requests.get(live.url("/ra/retry-after/30/503"))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert time.monotonic() - started < 1.0
    assert len(upstream.requests_to("/retry-after/30/503")) == 1


def test_body_over_the_limit_is_413_before_the_upstream_is_contacted(live, upstream):
    make_route("small", "/small", make_upstream("backend", upstream.url), max_body_bytes=1000)
    serve(live)
    response = requests.post(live.url("/small/u"), data=b"x" * 1001)
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"
    assert requests.post(live.url("/small/u"), data=b"x" * 1000).status_code == 200

    def chunks():
        for _ in range(3):
            yield b"y" * 600

    response = requests.post(live.url("/small/c"), data=chunks())
    assert response.status_code == 413
    assert upstream.requests_to("/c") == []
    assert len(upstream.requests_to("/u")) == 1


def test_chunked_request_bodies_are_forwarded(api, live):
    def chunks():
        for _ in range(10):
            yield b"z" * 1000

    response = requests.post(live.url("/api/chunked-upload"), data=chunks())
    assert response.status_code == 200
    seen = api.requests_to("/chunked-upload")[-1]
    assert seen.body_bytes == 10_000


def test_redirects_are_relayed_not_followed(api, live):
    response = requests.get(live.url("/api/status/302"), allow_redirects=False)
    assert response.status_code == 302
    assert len(api.received) == 1


def test_disabled_upstream_answers_503(live, upstream):
    make_route("off", "/off", make_upstream("off", upstream.url, enabled=False))
    serve(live)
    response = requests.get(live.url("/off/x"))
    assert response.status_code == 503
    assert response.json()["error"] == "upstream_disabled"
    assert upstream.received == []


def test_a_host_with_a_trailing_dot_is_that_host(live, upstream):
    """'api.example.com.' is api.example.com: it must not fall through to the routes for any host."""
    make_route(
        "by-host",
        "/orders",
        make_upstream("hosted", upstream.url + "/hosted"),
        host="api.example.com",
        require_api_key=True,
    )
    make_route("any-host", "/orders", make_upstream("open", upstream.url + "/open"))
    serve(live)
    for host in ("api.example.com", "API.example.com.", "api.example.com.:80"):
        response = requests.get(live.url("/orders/1"), headers={"Host": host}, timeout=10)
        assert response.status_code == 401, host
    assert upstream.received == []


def test_path_parameters_cannot_dodge_a_longer_prefix(live, upstream):
    make_route("admin", "/orders/admin", make_upstream("locked", upstream.url + "/locked"), require_api_key=True)
    make_route("orders", "/orders", make_upstream("open", upstream.url + "/open"))
    serve(live)
    status, _, _ = get_raw(live, "/orders/admin;x=1/users")
    assert status == 401
    status, _, _ = get_raw(live, "/orders/%2561dmin/users")
    assert status == 400
    assert upstream.received == []
