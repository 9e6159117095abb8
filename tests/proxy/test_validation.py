"""Normalization of operator-typed values (proxy.validation), shared by models, admin and gateway_import."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from gateway_project.validation import normalize_statuses, parse_statuses, validate_name
from proxy import routing
from proxy.models import Upstream
from proxy.validation import (
    ROUTE_METHODS,
    normalize_base_url,
    normalize_host,
    normalize_methods,
    normalize_prefix,
)


def error_code(excinfo) -> str:
    return excinfo.value.error_list[0].code


# normalize_base_url


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://orders.internal", "http://orders.internal"),
        ("http://orders.internal/", "http://orders.internal"),
        ("https://orders.internal:8443/v1", "https://orders.internal:8443/v1"),
        ("https://orders.internal:8443/v1/", "https://orders.internal:8443/v1"),
        ("http://orders.internal/v1/api///", "http://orders.internal/v1/api"),
        ("  http://orders.internal/v1  ", "http://orders.internal/v1"),
        ("HTTP://Orders.Internal:8080/V1/Path", "http://orders.internal:8080/V1/Path"),
        ("HTTPS://API.EXAMPLE.COM", "https://api.example.com"),
        ("http://127.0.0.1:9", "http://127.0.0.1:9"),
        ("http://[::1]:8080/x/", "http://[::1]:8080/x"),
        ("http://[2001:DB8::1]/", "http://[2001:db8::1]"),
        ("http://[::1]", "http://[::1]"),
        ("http://h:65535", "http://h:65535"),
        ("http://h:1", "http://h:1"),
        ("http://h:80", "http://h:80"),
        ("http://h/a%20b/c;v=1/d:e@f", "http://h/a%20b/c;v=1/d:e@f"),
        ("http://h/.well-known/x", "http://h/.well-known/x"),
    ],
)
def test_base_url_is_normalized(value, expected):
    assert normalize_base_url(value) == expected


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("", "invalid_scheme"),
        ("orders.internal", "invalid_scheme"),
        ("//orders.internal/v1", "invalid_scheme"),
        ("ftp://orders.internal", "invalid_scheme"),
        ("file:///etc/passwd", "invalid_scheme"),
        ("ws://orders.internal", "invalid_scheme"),
        ("http://", "no_host"),
        ("http:///v1", "no_host"),
        ("http://user@orders.internal", "userinfo"),
        ("http://user:secret@orders.internal", "userinfo"),
        ("http://:secret@orders.internal", "userinfo"),
        ("http://@orders.internal", "userinfo"),
        ("http://orders.internal?x=1", "query"),
        ("http://orders.internal/v1?x=1", "query"),
        ("http://orders.internal/v1?", "query"),
        ("http://orders.internal#top", "fragment"),
        ("http://orders.internal/v1#", "fragment"),
        ("http://orders.internal:0", "invalid_port"),
        ("http://orders.internal:65536", "invalid_url"),
        ("http://orders.internal:99999", "invalid_url"),
        ("http://orders.internal:-1", "invalid_url"),
        ("http://orders.internal:http", "invalid_url"),
        ("http://[::1", "invalid_url"),
        ("http://orders.internal/a/../b", "invalid_path"),
        ("http://orders.internal/a/./b", "invalid_path"),
        ("http://orders.internal/..", "invalid_path"),
        ("http://orders.internal/a//b", "invalid_path"),
        ("http://orders.internal/a b", "invalid_path"),
        ("http://orders.internal/caf\u00e9", "invalid_path"),
        ('http://orders.internal/a"b', "invalid_path"),
    ],
)
def test_base_url_is_refused(value, code):
    with pytest.raises(ValidationError) as excinfo:
        normalize_base_url(value)
    assert error_code(excinfo) == code


def test_base_url_none_is_refused():
    with pytest.raises(ValidationError):
        normalize_base_url(None)


def test_normalized_base_url_is_stable():
    once = normalize_base_url("HTTP://API.Example.com:8080/V1/")
    assert normalize_base_url(once) == once


@pytest.mark.parametrize(
    "value",
    [
        "http://exa mple.com/v1",
        "http://exa\x00mple.com",
        "http://h\\x/v1",
        "http://-orders.internal",
        "http://orders..internal",
    ],
)
def test_base_url_host_must_be_a_dns_name_or_an_ip_address(value):
    """Hosts urllib3 cannot parse (or would read as another host) must be refused, not break the route table."""
    with pytest.raises(ValidationError) as excinfo:
        normalize_base_url(value)
    assert error_code(excinfo) == "invalid_host"


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("http://orders_v2.svc:8080/x", "orders_v2.svc"),
        ("http://10.1.2.3:8080", "10.1.2.3"),
        ("http://[2001:db8::1]", "2001:db8::1"),
        ("http://localhost", "localhost"),
    ],
)
def test_accepted_base_url_compiles_to_the_same_host(value, host):
    target = routing.compile_upstream(Upstream(id=1, name="x", base_url=normalize_base_url(value)))
    assert target.targets[0].host == host


def test_base_url_path_with_a_malformed_escape_is_refused():
    with pytest.raises(ValidationError):
        normalize_base_url("http://orders.internal/a%zz")


# normalize_prefix

RESERVED = ("/healthz", "/metrics", "/_gateway", "/admin")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/", "/"),
        ("/api", "/api"),
        ("/api/", "/api"),
        ("/api/v1/", "/api/v1"),
        (" /api ", "/api"),
        ("/API/Users", "/API/Users"),
        ("/a-b_c.d~e", "/a-b_c.d~e"),
        ("/a:b@c,d=e,f!$&'()*+", "/a:b@c,d=e,f!$&'()*+"),
        ("/.well-known", "/.well-known"),
        ("/healthzx", "/healthzx"),
        ("/api/healthz", "/api/healthz"),
        ("/_gatewayx/y", "/_gatewayx/y"),
    ],
)
def test_prefix_is_normalized(value, expected):
    assert normalize_prefix(value, RESERVED) == expected


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("", "no_slash"),
        ("api", "no_slash"),
        ("api/", "no_slash"),
        ("/api%2f", "invalid_prefix"),
        ("/100%", "invalid_prefix"),
        ("/api?x=1", "invalid_prefix"),
        ("/api#x", "invalid_prefix"),
        ("/a b", "invalid_prefix"),
        ("/caf\u00e9", "invalid_prefix"),
        ("/a\\b", "invalid_prefix"),
        ("//", "empty_segment"),
        ("//api", "empty_segment"),
        ("/api//v1", "empty_segment"),
        ("/api//", "empty_segment"),
        ("/api/./v1", "dot_segment"),
        ("/api/..", "dot_segment"),
        ("/.", "dot_segment"),
        ("/healthz", "reserved"),
        ("/healthz/", "reserved"),
        ("/healthz/deep", "reserved"),
        ("/_gateway/api", "reserved"),
        ("/admin", "reserved"),
    ],
)
def test_prefix_is_refused(value, code):
    with pytest.raises(ValidationError) as excinfo:
        normalize_prefix(value, RESERVED)
    assert error_code(excinfo) == code


def test_prefix_reserved_only_as_passed():
    """The reserved prefixes come from the caller; without them /healthz is an ordinary prefix."""
    assert normalize_prefix("/healthz") == "/healthz"
    with pytest.raises(ValidationError):
        normalize_prefix("/orders/x", ("/orders",))


def test_root_prefix_is_not_refused_by_reserved_prefixes():
    assert normalize_prefix("/", RESERVED) == "/"


# normalize_host


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ""),
        ("   ", ""),
        (None, ""),
        ("api.example.com", "api.example.com"),
        ("API.Example.COM", "api.example.com"),
        ("api.example.com.", "api.example.com"),
        (" api.example.com ", "api.example.com"),
        ("*.example.com", "*.example.com"),
        ("*.Example.COM.", "*.example.com"),
        ("localhost", "localhost"),
        ("10.0.0.1", "10.0.0.1"),
        ("a-b.c-d.example", "a-b.c-d.example"),
        ("x" * 63 + ".com", "x" * 63 + ".com"),
    ],
)
def test_host_is_normalized(value, expected):
    assert normalize_host(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "api.example.com:8080",
        "*.example.com:443",
        "[::1]",
        "http://api.example.com",
        "api.example.com/v1",
        "*",
        "*.",
        "a.*.example.com",
        "*example.com",
        "**.example.com",
        "-api.example.com",
        "api-.example.com",
        "api..example.com",
        "api_x.example.com",
        "api example.com",
        "user@api.example.com",
        "x" * 64 + ".com",
        ("a" * 62 + ".") * 4 + "com",
    ],
)
def test_host_is_refused(value):
    with pytest.raises(ValidationError) as excinfo:
        normalize_host(value)
    assert error_code(excinfo) == "invalid_host"


# normalize_methods


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ""),
        (None, ""),
        (" , ", ""),
        ("GET", "GET"),
        ("get", "GET"),
        ("post,get", "GET,POST"),
        ("GET, GET,get", "GET"),
        ("GET POST", "GET,POST"),
        ("options,delete,patch,put,post,head,get", "GET,HEAD,POST,PUT,PATCH,DELETE,OPTIONS"),
        ("DELETE,OPTIONS,GET", "GET,DELETE,OPTIONS"),
    ],
)
def test_methods_are_normalized_in_route_methods_order(value, expected):
    assert normalize_methods(value) == expected


def test_every_route_method_is_accepted():
    assert normalize_methods(",".join(reversed(ROUTE_METHODS))) == ",".join(ROUTE_METHODS)


@pytest.mark.parametrize("value", ["TRACE", "CONNECT", "GET,TRACE", "connect", "PROPFIND", "GET;POST", "G3T"])
def test_methods_are_refused(value):
    with pytest.raises(ValidationError) as excinfo:
        normalize_methods(value)
    assert error_code(excinfo) == "invalid_method"


def test_refused_methods_are_named():
    with pytest.raises(ValidationError, match="CONNECT, TRACE"):
        normalize_methods("get,trace,connect")


# parse_statuses / normalize_statuses


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", frozenset()),
        (None, frozenset()),
        ("502", frozenset({502})),
        ("502,503,504", frozenset({502, 503, 504})),
        (" 503 , 502 ,, 503 ", frozenset({502, 503})),
        ("400,599", frozenset({400, 599})),
    ],
)
def test_statuses_are_parsed(value, expected):
    assert parse_statuses(value) == expected


@pytest.mark.parametrize("value", ["399", "600", "200", "abc", "50x", "-502", "+502", "502.0", "502 503", "1e3"])
def test_statuses_are_refused(value):
    with pytest.raises(ValidationError) as excinfo:
        parse_statuses(value)
    assert error_code(excinfo) == "invalid_status"


def test_statuses_normalized_sorted_and_deduplicated():
    assert normalize_statuses("504, 502,503,502") == "502,503,504"
    assert normalize_statuses("") == ""


def test_statuses_with_a_superscript_digit_are_a_validation_error():
    with pytest.raises(ValidationError):
        parse_statuses("50\u00b2")


# validate_name


@pytest.mark.parametrize("value", ["a", "orders", "Orders-v2", "a.b_c-d", "0", "x" * 63])
def test_names_accepted(value):
    validate_name(value)


@pytest.mark.parametrize("value", ["", None, "-a", ".a", "_a", "a b", "a/b", "caf\u00e9", "x" * 64])
def test_names_refused(value):
    with pytest.raises(ValidationError):
        validate_name(value)
