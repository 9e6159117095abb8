"""Request-target safety (proxy.paths): what a client's path may look like before it is forwarded."""

from __future__ import annotations

import pytest
from django.test import RequestFactory

from proxy.paths import BadPath, Target, check_path, parse_target


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("/", "/"),
        ("/api", "/api"),
        ("/api/", "/api/"),
        ("/api/users/42", "/api/users/42"),
        ("/.well-known/openid-configuration", "/.well-known/openid-configuration"),
        ("/a/...", "/a/..."),
        ("/a/.x/..y/z..", "/a/.x/..y/z.."),
        ("/a;v=1/b", "/a;v=1/b"),
        ("/a:b@c/~d/!$&'()*+,=", "/a:b@c/~d/!$&'()*+,="),
        ("/a%20b", "/a b"),
        ("/caf%C3%A9", "/caf\u00e9"),
        ("/100%25", "/100%"),
        ("/a/%25zz", "/a/%zz"),  # a literal '%zz' (decodes to something that does not decode further)
        ("/a/%25", "/a/%"),  # a literal '%'
        ("/a/100%25x", "/a/100%x"),  # '%' not followed by two hex digits once decoded
        ("/a/%41%42", "/a/AB"),
    ],
)
def test_safe_paths_are_returned_decoded_once(raw, decoded):
    assert check_path(raw) == decoded


@pytest.mark.parametrize(
    "raw",
    [
        # dot segments, also with path parameters (Tomcat reads '..;' as '..')
        "/a/../b",
        "/a/./b",
        "/a/..",
        "/a/.",
        "/..",
        "/a/..;/b",
        "/a/..;x=1/b",
        "/a/.;/b",
        # encoded dots
        "/a/%2e%2e/b",
        "/a/%2E%2E/b",
        "/a/.%2e/b",
        "/a/%2e./b",
        "/a/%2e",
        "/a/%2e/",
        "/a/..%3b/b",
        # encoded slash
        "/a%2fb",
        "/a%2Fb",
        "/a/%2f..",
        # backslash, raw and encoded
        "/a\\b",
        "/a%5cb",
        "/a%5Cb",
        "/a/..%5c..%5cetc",
        # double and triple encoding
        "/a/%252e%252e/b",
        "/a/%252E%252E/b",
        "/a/%25%32%65%25%32%65/b",
        "/a%252fb",
        "/a%25252fb",
        "/a%25255cb",
        # control characters
        "/a%00b",
        "/a%0ab",
        "/a%0d%0aSet-Cookie:x",
        "/a%09",
        "/a%7f",
        # empty segments
        "//",
        "//a",
        "/a//b",
        "/a/b//",
        # raw characters that must be percent-encoded
        "/caf\u00e9",
        "/a b",
        "/a\tb",
        '/a"b',
        "/a<b>",
        "/a?b",
        "/a#b",
        "/a{b}",
        # malformed escapes
        "/a%zz",
        "/a%4",
        "/a%",
        "/a%g0",
        # not starting with '/'
        "",
        "a/b",
        "*",
    ],
)
def test_unsafe_paths_are_refused(raw):
    with pytest.raises(BadPath):
        check_path(raw)


@pytest.mark.parametrize("raw", ["/a/%2525", "/a/%2541", "/orders/%2561dmin", "/a/%2525252f", "/a/%252525252541"])
def test_double_encoding_is_refused_whatever_it_hides(raw):
    """A path that still holds an escape after one decoding looks different to an upstream that decodes twice."""
    with pytest.raises(BadPath, match="more than once"):
        check_path(raw)


@pytest.mark.parametrize("raw", ["/a/%EF%BC%8E%EF%BC%8E/b", "/a/%EF%BC%8F", "/a/%EF%BC%BCb", "/a/%E2%80%A5/b"])
def test_characters_that_normalize_to_dots_or_slashes_are_refused(raw):
    """Fullwidth full stops, solidus and reverse solidus, and the two-dot leader, normalize (NFKC) to '.', '/', '\\'."""
    with pytest.raises(BadPath):
        check_path(raw)


def test_path_parameters_are_ignored_for_matching_but_forwarded():
    target = parse_target({"RAW_URI": "/orders/admin;jsessionid=1/users;x=2?q=1"})
    assert target.path == "/orders/admin/users"
    assert target.raw_path == "/orders/admin;jsessionid=1/users;x=2"


def test_the_refusal_says_why():
    with pytest.raises(BadPath, match="empty segment"):
        check_path("/a//b")
    with pytest.raises(BadPath, match=r"'\.' or '\.\.' segment"):
        check_path("/a/%2e%2e/b")
    with pytest.raises(BadPath, match="control character"):
        check_path("/a%00")
    with pytest.raises(BadPath, match="malformed"):
        check_path("/a%zz")


def test_bad_path_is_a_value_error():
    assert issubclass(BadPath, ValueError)


# parse_target: the request target as gunicorn hands it over (RAW_URI)


def test_parse_target_keeps_the_raw_path_and_query():
    target = parse_target({"RAW_URI": "/api/caf%C3%A9/x%20y?q=%2F&a=b%20c", "PATH_INFO": "ignored"})
    assert target == Target(raw_path="/api/caf%C3%A9/x%20y", query="q=%2F&a=b%20c", path="/api/caf\u00e9/x y")


def test_parse_target_query_is_not_validated_or_decoded():
    """Only the path is checked; the query is passed on exactly as sent, even with '..' or encoded slashes."""
    target = parse_target({"RAW_URI": "/api?next=/../..%2f%00&x"})
    assert target.raw_path == "/api"
    assert target.query == "next=/../..%2f%00&x"
    assert target.path == "/api"


def test_parse_target_empty_query():
    assert parse_target({"RAW_URI": "/api?"}) == Target(raw_path="/api", query="", path="/api")
    assert parse_target({"RAW_URI": "/api"}) == Target(raw_path="/api", query="", path="/api")


@pytest.mark.parametrize(
    "raw_uri",
    ["http://evil.example/api", "https://example.com/", "//evil.example/api", "*", "api/x", ""],
)
def test_parse_target_refuses_other_than_origin_form(raw_uri):
    with pytest.raises(BadPath):
        parse_target({"RAW_URI": raw_uri})


@pytest.mark.parametrize("raw_uri", ["/api#frag", "/api?x=1#frag", "/api/%2e%2e#x"])
def test_parse_target_refuses_a_fragment(raw_uri):
    with pytest.raises(BadPath):
        parse_target({"RAW_URI": raw_uri})


def test_parse_target_checks_the_path():
    with pytest.raises(BadPath):
        parse_target({"RAW_URI": "/api/%2e%2e/admin?x=1"})


# parse_target without RAW_URI: Django's test client; the target is rebuilt from the decoded PATH_INFO


def test_fallback_requotes_the_decoded_path():
    environ = RequestFactory().get("/api/caf%C3%A9/x%20y", {"q": "/"}).environ
    assert "RAW_URI" not in environ
    target = parse_target(environ)
    assert target.raw_path == "/api/caf%C3%A9/x%20y"
    assert target.query == "q=%2F"
    assert target.path == "/api/caf\u00e9/x y"


def test_fallback_keeps_sub_delims_and_quotes_the_rest():
    target = parse_target({"PATH_INFO": "/a:b@c,d=e/g!$&'()*+~h/100%/x y"})
    assert target.raw_path == "/a:b@c,d=e/g!$&'()*+~h/100%25/x%20y"
    assert target.path == "/a:b@c,d=e/g!$&'()*+~h/100%/x y"


def test_fallback_without_path_info_is_root():
    assert parse_target({}) == Target(raw_path="/", query="", path="/")


def test_fallback_still_refuses_dot_segments_and_empty_segments():
    with pytest.raises(BadPath):
        parse_target(RequestFactory().get("/a/%2e%2e/b").environ)
    with pytest.raises(BadPath):
        parse_target({"PATH_INFO": "/a//b"})
    with pytest.raises(BadPath):
        parse_target({"PATH_INFO": "/a\\b"})


@pytest.mark.parametrize(
    "raw",
    [
        "/a/%EF%BC%85%EF%BC%92%EF%BD%85%EF%BC%85%EF%BC%92%EF%BD%85/b",  # fullwidth '%2e%2e' -> '%2e%2e'
        "/a/%EF%BC%85%EF%BC%92%EF%BC%A6etc",  # fullwidth '%2F' then 'etc' -> '%2Fetc'
        "/a/%EF%BC%852e",  # a fullwidth percent sign in front of ASCII hex digits
        "/a/%EF%B9%AA41",  # the small percent sign
    ],
)
def test_characters_that_normalize_to_a_percent_escape_are_refused(raw):
    """An upstream that normalizes (NFKC) and then decodes would read '..' or '/' where the gateway saw neither."""
    with pytest.raises(BadPath, match="normaliz"):
        check_path(raw)


def test_characters_that_normalize_to_letters_pass_and_the_target_says_how_they_fold():
    assert check_path("/a/%EF%BC%A1%EF%BC%A2%EF%BC%A3") == "/a/\uff21\uff22\uff23"
    target = parse_target({"RAW_URI": "/a/%EF%BD%81dmin"})
    assert target.path == "/a/\uff41dmin"
    assert target.folded == "/a/admin"
    assert parse_target({"RAW_URI": "/a/caf%C3%A9"}).folded is None
