"""Header hygiene in both directions (proxy.headers)."""

from __future__ import annotations

import pytest
from django.http.response import ResponseHeaders
from urllib3 import HTTPHeaderDict
from urllib3.util import SKIP_HEADER

from proxy.headers import (
    client_response_headers,
    connection_tokens,
    list_members,
    merge_response_headers,
    request_drop_keys,
    upstream_request_headers,
)

DROP = request_drop_keys("X-Consumer-Name")


def forward(environ: dict, *, client_ip: str = "198.51.100.20", peer_trusted: bool = False, **overrides):
    env = {"REMOTE_ADDR": "198.51.100.20", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "gw.example.com", **environ}
    kwargs = {
        "drop": DROP,
        "host_header": "orders.internal:8080",
        "client_ip": client_ip,
        "peer_trusted": peer_trusted,
        "scheme": "http",
        "request_id": "rid-1",
        "via": "gateway",
        "prefix": None,
        **overrides,
    }
    return upstream_request_headers(env, **kwargs)


def lower(headers: dict) -> dict:
    return {k.lower(): v for k, v in headers.items()}


def test_end_to_end_headers_are_forwarded():
    headers = forward(
        {
            "HTTP_AUTHORIZATION": "Bearer t",
            "HTTP_COOKIE": "a=1; b=2",
            "HTTP_ACCEPT": "application/json",
            "HTTP_X_API_KEY": "k",
            "HTTP_IF_NONE_MATCH": '"abc"',
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": "12",
            "PATH_INFO": "/not/a/header",
            "wsgi.url_scheme": "http",
        }
    )
    assert headers["Authorization"] == "Bearer t"
    assert headers["Cookie"] == "a=1; b=2"
    assert headers["Accept"] == "application/json"
    assert headers["X-Api-Key"] == "k"
    assert headers["If-None-Match"] == '"abc"'
    assert headers["Content-Type"] == "application/json"
    # framing is the caller's business; non-header environ keys never become headers
    assert "content-length" not in lower(headers)
    assert not {"path-info", "path_info", "wsgi.url_scheme"} & set(lower(headers))


def test_hop_by_hop_and_connection_named_headers_are_dropped():
    headers = forward(
        {
            "HTTP_CONNECTION": "keep-alive, X-Secret, x-other-secret",
            "HTTP_KEEP_ALIVE": "timeout=5",
            "HTTP_PROXY_CONNECTION": "keep-alive",
            "HTTP_PROXY_AUTHORIZATION": "Basic Zm9vOmJhcg==",
            "HTTP_PROXY_AUTHENTICATE": "Basic",
            "HTTP_TE": "trailers",
            "HTTP_TRAILER": "X-T",
            "HTTP_TRANSFER_ENCODING": "chunked",
            "HTTP_UPGRADE": "websocket",
            "HTTP_X_SECRET": "s",
            "HTTP_X_OTHER_SECRET": "s2",
            "HTTP_X_KEPT": "yes",
        }
    )
    names = set(lower(headers))
    assert not names & {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "x-secret",
        "x-other-secret",
    }
    assert headers["X-Kept"] == "yes"


def test_gateway_owned_headers_from_an_untrusted_client_are_replaced():
    headers = forward(
        {
            "HTTP_HOST": "gw.example.com",
            "HTTP_FORWARDED": "for=1.2.3.4;proto=https",
            "HTTP_X_FORWARDED_FOR": "1.2.3.4",
            "HTTP_X_FORWARDED_PROTO": "https",
            "HTTP_X_FORWARDED_HOST": "evil.example",
            "HTTP_X_FORWARDED_PORT": "443",
            "HTTP_X_FORWARDED_PREFIX": "/evil",
            "HTTP_X_REAL_IP": "1.2.3.4",
            "HTTP_X_REQUEST_ID": "client-chosen",
            "HTTP_EXPECT": "100-continue",
        },
        scheme="http",
    )
    assert headers["Host"] == "orders.internal:8080"
    assert headers["X-Forwarded-For"] == "198.51.100.20"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"] == "gw.example.com"
    assert headers["X-Request-ID"] == "rid-1"
    names = set(lower(headers))
    assert not names & {"forwarded", "x-forwarded-port", "x-forwarded-prefix", "x-real-ip", "expect"}
    # one header per name, whatever casing the client used
    assert sorted(lower(headers)) == sorted(name.lower() for name in headers)


def test_trusted_peer_extends_the_forwarded_chain():
    headers = forward(
        {
            "REMOTE_ADDR": "10.0.0.1",
            "HTTP_X_FORWARDED_FOR": "203.0.113.7, 10.0.0.9",
            "HTTP_X_FORWARDED_HOST": "public.example.com",
            "HTTP_X_FORWARDED_PROTO": "https",
        },
        client_ip="203.0.113.7",
        peer_trusted=True,
        scheme="https",
    )
    assert headers["X-Forwarded-For"] == "203.0.113.7, 10.0.0.9, 10.0.0.1"
    assert headers["X-Forwarded-Host"] == "public.example.com"
    assert headers["X-Forwarded-Proto"] == "https"


def test_trusted_peer_without_a_chain_starts_one():
    headers = forward({"REMOTE_ADDR": "10.0.0.1"}, client_ip="10.0.0.1", peer_trusted=True)
    assert headers["X-Forwarded-For"] == "10.0.0.1"
    assert headers["X-Forwarded-Host"] == "gw.example.com"


def test_missing_host_gives_an_empty_forwarded_host():
    env = {"REMOTE_ADDR": "198.51.100.20"}
    headers = upstream_request_headers(
        env,
        drop=DROP,
        host_header="h",
        client_ip="198.51.100.20",
        peer_trusted=False,
        scheme="http",
        request_id="r",
        via="gw",
        prefix=None,
    )
    assert headers["X-Forwarded-Host"] == ""
    assert headers["Via"] == "1.1 gw"


@pytest.mark.parametrize(
    ("protocol", "prior", "expected"),
    [
        ("HTTP/1.1", None, "1.1 gateway"),
        ("HTTP/1.0", None, "1.0 gateway"),
        ("HTTP/1.1", "1.1 edge", "1.1 edge, 1.1 gateway"),
        ("HTTP/1.0", "1.0 a, 1.1 b", "1.0 a, 1.1 b, 1.0 gateway"),
    ],
)
def test_via_is_appended_with_the_clients_protocol_version(protocol, prior, expected):
    environ = {"SERVER_PROTOCOL": protocol}
    if prior is not None:
        environ["HTTP_VIA"] = prior
    headers = forward(environ)
    assert headers["Via"] == expected
    assert [name for name in headers if name.lower() == "via"] == ["Via"]


def test_forwarded_prefix_when_the_route_strips_one():
    assert forward({}, prefix="/api")["X-Forwarded-Prefix"] == "/api"
    assert "X-Forwarded-Prefix" not in forward({}, prefix=None)
    assert "X-Forwarded-Prefix" not in forward({}, prefix="")


def test_user_agent_and_accept_encoding_are_not_invented():
    """Without them, http.client would add its own; the sentinel tells urllib3 to send none."""
    headers = forward({})
    assert headers["User-Agent"] is SKIP_HEADER
    assert headers["Accept-Encoding"] is SKIP_HEADER


def test_user_agent_and_accept_encoding_of_the_client_are_kept():
    headers = forward({"HTTP_USER_AGENT": "curl/8", "HTTP_ACCEPT_ENCODING": "gzip"})
    assert headers["User-Agent"] == "curl/8"
    assert headers["Accept-Encoding"] == "gzip"


def test_connection_naming_a_gateway_header_does_not_remove_the_gateways_value():
    headers = forward({"HTTP_CONNECTION": "X-Forwarded-For, Via, Host", "HTTP_X_FORWARDED_FOR": "1.2.3.4"})
    assert headers["X-Forwarded-For"] == "198.51.100.20"
    assert headers["Via"] == "1.1 gateway"
    assert headers["Host"] == "orders.internal:8080"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, set()),
        ("", set()),
        ("close", {"close"}),
        ("Keep-Alive, X-Foo ,, x-bar", {"keep-alive", "x-foo", "x-bar"}),
    ],
)
def test_connection_tokens(value, expected):
    assert connection_tokens(value) == expected


# the response side


def test_response_keeps_repeated_set_cookie_lines():
    upstream = HTTPHeaderDict()
    upstream.add("Content-Type", "application/json")
    upstream.add("Set-Cookie", "a=1; Path=/")
    upstream.add("Set-Cookie", "b=2; Path=/; HttpOnly")
    upstream.add("Cache-Control", "no-store")
    assert client_response_headers(upstream) == [
        ("Content-Type", "application/json"),
        ("Set-Cookie", "a=1; Path=/"),
        ("Set-Cookie", "b=2; Path=/; HttpOnly"),
        ("Cache-Control", "no-store"),
    ]


def test_response_drops_hop_by_hop_connection_named_and_gateway_headers():
    upstream = HTTPHeaderDict()
    upstream.add("Connection", "X-Upstream-Private")
    upstream.add("connection", "keep-alive")
    upstream.add("X-Upstream-Private", "secret")
    upstream.add("Keep-Alive", "timeout=5")
    upstream.add("Proxy-Authenticate", "Basic")
    upstream.add("Upgrade", "h2c")
    upstream.add("Trailer", "X-T")
    upstream.add("Transfer-Encoding", "chunked")
    upstream.add("Server", "upstream/1.0")
    upstream.add("Date", "Thu, 01 Jan 1970 00:00:00 GMT")
    upstream.add("X-Request-ID", "upstream-id")
    upstream.add("X-Kept", "yes")
    upstream.add("Content-Length", "2")
    assert client_response_headers(upstream) == [("X-Kept", "yes"), ("Content-Length", "2")]


def test_response_header_names_are_matched_case_insensitively():
    upstream = HTTPHeaderDict()
    upstream.add("CONNECTION", "x-private")
    upstream.add("X-PRIVATE", "secret")
    upstream.add("SERVER", "upstream")
    upstream.add("x-kept", "yes")
    assert client_response_headers(upstream) == [("x-kept", "yes")]


def test_response_without_headers():
    assert client_response_headers(HTTPHeaderDict()) == []


def test_per_route_private_headers_are_dropped_and_the_consumer_is_set_by_the_gateway():
    headers = forward(
        {"HTTP_X_API_KEY": "secret", "HTTP_X_CONSUMER_NAME": "spoofed"},
        drop=request_drop_keys("X-Consumer-Name", "X-API-Key"),
        consumer=("X-Consumer-Name", "acme"),
    )
    assert "x-api-key" not in lower(headers)
    assert headers["X-Consumer-Name"] == "acme"


def test_a_client_cannot_name_its_own_consumer():
    headers = forward({"HTTP_X_CONSUMER_NAME": "spoofed"})
    assert "x-consumer-name" not in lower(headers)


def own_headers(**fields) -> ResponseHeaders:
    return ResponseHeaders({name.replace("_", "-"): value for name, value in fields.items()})


def test_the_upstreams_copy_of_a_field_the_gateway_set_is_dropped():
    own = own_headers(X_Request_ID="gw", RateLimit='"p";r=1;t=2')
    upstream = [("x-request-id", "up"), ("ratelimit", "up"), ("RateLimit-Policy", "up"), ("X-Kept", "1")]
    assert merge_response_headers(own, upstream) == [
        ("X-Request-ID", "gw"),
        ("RateLimit", '"p";r=1;t=2'),
        ("RateLimit-Policy", "up"),  # the gateway did not set it here
        ("X-Kept", "1"),
    ]


def test_the_whole_legacy_rate_limit_family_goes_when_the_gateway_sends_any_of_it():
    own = own_headers(X_RateLimit_Limit="10")
    upstream = [("X-RateLimit-Limit", "5"), ("X-RateLimit-Used", "1"), ("X-Ratelimit-Bucket", "b")]
    assert merge_response_headers(own, upstream) == [("X-RateLimit-Limit", "10")]
    assert merge_response_headers(own_headers(), upstream) == upstream


def test_server_timing_is_one_list_without_duplicate_names():
    own = own_headers(Server_Timing="upstream;dur=3.0, total;dur=4.0")
    upstream = [("Server-Timing", 'db;dur=1;desc="a, b", total;dur=2'), ("Server-Timing", "Upstream;dur=9, cache")]
    assert merge_response_headers(own, upstream) == [
        ("Server-Timing", 'upstream;dur=3.0, total;dur=4.0, db;dur=1;desc="a, b", cache'),
    ]


def test_server_timing_of_the_upstream_passes_when_the_gateway_sends_none():
    upstream = [("Server-Timing", "db;dur=1"), ("Server-Timing", "app;dur=2")]
    assert merge_response_headers(own_headers(), upstream) == upstream


@pytest.mark.parametrize(
    ("value", "members"),
    [
        ("a, b,c", ["a", "b", "c"]),
        ('a;desc="x, y", b', ['a;desc="x, y"', "b"]),
        ('a;desc="q\\", still", b', ['a;desc="q\\", still"', "b"]),
        (" , a,, ", ["a"]),
    ],
)
def test_list_members_keep_commas_inside_quoted_strings(value, members):
    assert list_members(value) == members
