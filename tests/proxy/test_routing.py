"""The compiled route table (proxy.routing): host, then longest segment prefix, then method."""

from __future__ import annotations

import pytest

from proxy import routing
from proxy.models import Route, Upstream
from proxy.routing import CompiledRoute, MethodNotAllowed, RouteTable


def target(base_url: str = "http://127.0.0.1:9", *, id: int = 1, name: str = "backend", **fields):
    return routing.compile_upstream(Upstream(id=id, name=name, base_url=base_url, **fields))


def route(
    id: int,
    prefix: str,
    *,
    host: str = "",
    methods: str = "",
    strip_prefix: bool = True,
    base_url: str = "http://127.0.0.1:9",
) -> CompiledRoute:
    return CompiledRoute(
        id=id,
        name=f"r{id}",
        prefix=prefix,
        depth=0 if prefix == "/" else prefix.count("/"),
        host=host,
        methods=Route(methods=methods).method_set,
        strip_prefix=strip_prefix,
        max_body_bytes=0,
        upstream=target(base_url),
    )


def matched_id(table: RouteTable, path: str, *, host: str = "gw.local", method: str = "GET"):
    match = table.match(host, path, method)
    return match.id if isinstance(match, CompiledRoute) else match


# path prefixes


def test_longest_segment_prefix_wins():
    table = RouteTable([route(1, "/api"), route(2, "/api/users")])
    assert matched_id(table, "/api/users/42") == 2
    assert matched_id(table, "/api/users") == 2
    assert matched_id(table, "/api/users/") == 2
    assert matched_id(table, "/api/usersx") == 1
    assert matched_id(table, "/api/orders/7") == 1
    assert matched_id(table, "/api") == 1
    assert matched_id(table, "/api/") == 1


@pytest.mark.parametrize("path", ["/apix", "/apix/users", "/ap", "/", "/other", "/API"])
def test_prefix_matches_whole_segments_only(path):
    table = RouteTable([route(1, "/api"), route(2, "/api/users")])
    assert table.match("gw.local", path, "GET") is None


def test_root_route_catches_what_nothing_longer_matches():
    table = RouteTable([route(1, "/"), route(2, "/api")])
    assert matched_id(table, "/") == 1
    assert matched_id(table, "/anything/at/all") == 1
    assert matched_id(table, "/apix") == 1
    assert matched_id(table, "/api") == 2
    assert matched_id(table, "/api/x") == 2


def test_trailing_slash_on_the_request_path():
    table = RouteTable([route(1, "/api/v1")])
    assert matched_id(table, "/api/v1/") == 1
    assert matched_id(table, "/api/v1/x/") == 1
    assert matched_id(table, "/api/") is None


def test_deep_prefix_with_intermediate_gaps():
    table = RouteTable([route(1, "/a"), route(2, "/a/b/c")])
    assert matched_id(table, "/a/b/c/d/e") == 2
    assert matched_id(table, "/a/b") == 1
    assert matched_id(table, "/a/b/cd") == 1


def test_empty_table():
    table = RouteTable()
    assert len(table) == 0
    assert table.match("gw.local", "/", "GET") is None
    assert table.match("gw.local", "/api", "GET") is None


def test_table_length_and_order():
    table = RouteTable([route(3, "/b"), route(2, "/a", host="x.example"), route(1, "/a")])
    assert len(table) == 3
    assert [r.id for r in table.routes] == [1, 3, 2]  # by host, prefix, id


# hosts


@pytest.fixture
def hosted():
    return RouteTable(
        [
            route(1, "/api", host="api.example.com"),
            route(2, "/api", host="*.example.com"),
            route(3, "/api"),
            route(4, "/api", host="*.eu.example.com"),
        ]
    )


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("api.example.com", 1),
        ("www.example.com", 2),
        ("a.b.c.example.com", 2),
        ("x.eu.example.com", 4),
        ("a.b.eu.example.com", 4),
        ("eu.example.com", 2),
        ("example.com", 3),  # a wildcard does not match its apex
        ("evilexample.com", 3),
        ("api.example.com.evil.org", 3),
        ("other.org", 3),
        ("localhost", 3),
        ("", 3),
    ],
)
def test_exact_host_beats_wildcard_beats_no_host(hosted, host, expected):
    assert matched_id(hosted, "/api/x", host=host) == expected


def test_host_group_with_a_matching_prefix_decides():
    """The most specific host group with any matching prefix decides, even if a less specific one matches longer."""
    table = RouteTable([route(1, "/api", host="api.example.com"), route(2, "/api/users")])
    assert matched_id(table, "/api/users/1", host="api.example.com") == 1
    assert matched_id(table, "/api/users/1", host="other.example.com") == 2


def test_host_group_without_a_matching_prefix_falls_through():
    table = RouteTable(
        [
            route(1, "/api", host="api.example.com"),
            route(2, "/static", host="*.example.com"),
            route(3, "/health"),
        ]
    )
    assert matched_id(table, "/static/x", host="api.example.com") == 2
    assert matched_id(table, "/health", host="api.example.com") == 3
    assert matched_id(table, "/nothing", host="api.example.com") is None


def test_host_only_routes_do_not_match_other_hosts():
    table = RouteTable([route(1, "/", host="api.example.com"), route(2, "/", host="*.internal")])
    assert matched_id(table, "/x", host="api.example.com") == 1
    assert matched_id(table, "/x", host="db.internal") == 2
    assert table.match("other.example.com", "/x", "GET") is None
    assert table.match("internal", "/x", "GET") is None


# methods


def test_method_groups_on_one_prefix():
    table = RouteTable([route(1, "/api", methods="GET"), route(2, "/api", methods="POST,PUT")])
    assert matched_id(table, "/api/x", method="GET") == 1
    assert matched_id(table, "/api/x", method="HEAD") == 1  # GET implies HEAD
    assert matched_id(table, "/api/x", method="POST") == 2
    assert matched_id(table, "/api/x", method="PUT") == 2
    assert table.match("gw.local", "/api/x", "DELETE") == MethodNotAllowed(("GET", "HEAD", "POST", "PUT"))
    assert table.match("gw.local", "/api/x", "OPTIONS") == MethodNotAllowed(("GET", "HEAD", "POST", "PUT"))


def test_any_method_route_takes_the_other_methods():
    table = RouteTable([route(1, "/api", methods="POST"), route(2, "/api")])
    assert matched_id(table, "/api", method="POST") == 1
    assert matched_id(table, "/api", method="GET") == 2
    assert matched_id(table, "/api", method="DELETE") == 2


def test_method_not_allowed_does_not_fall_back_to_a_shorter_prefix():
    """The longest prefix decides; its methods answer 405 rather than a shorter prefix answering at all."""
    table = RouteTable([route(1, "/api"), route(2, "/api/admin", methods="GET")])
    assert table.match("gw.local", "/api/admin/x", "POST") == MethodNotAllowed(("GET", "HEAD"))
    assert matched_id(table, "/api/other", method="POST") == 1


def test_method_not_allowed_is_per_host_group():
    table = RouteTable([route(1, "/api", host="api.example.com", methods="GET"), route(2, "/api")])
    assert table.match("api.example.com", "/api", "POST") == MethodNotAllowed(("GET", "HEAD"))
    assert matched_id(table, "/api", host="other.example.com", method="POST") == 2


def test_head_only_route_does_not_accept_get():
    table = RouteTable([route(1, "/api", methods="HEAD")])
    assert matched_id(table, "/api", method="HEAD") == 1
    assert table.match("gw.local", "/api", "GET") == MethodNotAllowed(("HEAD",))


def test_two_any_method_routes_on_one_prefix_the_lowest_id_wins():
    """Validation prevents it; should it happen anyway, the choice is deterministic."""
    table = RouteTable([route(5, "/api"), route(3, "/api")])
    assert matched_id(table, "/api") == 3


@pytest.mark.parametrize(
    ("methods", "expected"),
    [
        ("", None),
        ("GET", frozenset({"GET", "HEAD"})),
        ("GET,HEAD", frozenset({"GET", "HEAD"})),
        ("HEAD", frozenset({"HEAD"})),
        ("POST", frozenset({"POST"})),
        ("GET,POST,DELETE", frozenset({"GET", "HEAD", "POST", "DELETE"})),
    ],
)
def test_route_method_set_implies_head_with_get(methods, expected):
    assert Route(methods=methods).method_set == expected


# forward_path


@pytest.mark.parametrize(
    ("prefix", "base_url", "strip", "raw_path", "expected"),
    [
        # strip_prefix on, no base path
        ("/api", "http://h", True, "/api/users/42", "/users/42"),
        ("/api", "http://h", True, "/api", "/"),
        ("/api", "http://h", True, "/api/", "/"),
        # strip_prefix on, base path /v1
        ("/api", "http://h/v1", True, "/api/users/42", "/v1/users/42"),
        ("/api", "http://h/v1/", True, "/api/users/", "/v1/users/"),
        ("/api", "http://h/v1", True, "/api", "/v1"),
        ("/api", "http://h/v1", True, "/api/", "/v1/"),
        # multi-segment prefix
        ("/api/v2", "http://h/base", True, "/api/v2/items/1", "/base/items/1"),
        ("/api/v2", "http://h/base", True, "/api/v2", "/base"),
        # strip_prefix off
        ("/api", "http://h", False, "/api/users", "/api/users"),
        ("/api", "http://h", False, "/api", "/api"),
        ("/api", "http://h/v1", False, "/api/users", "/v1/api/users"),
        ("/api", "http://h/v1", False, "/api/", "/v1/api/"),
        # root prefix: depth 0, nothing to strip
        ("/", "http://h", True, "/", "/"),
        ("/", "http://h", True, "/x/y", "/x/y"),
        ("/", "http://h/v1", True, "/", "/v1/"),
        ("/", "http://h/v1", True, "/x/y", "/v1/x/y"),
        ("/", "http://h/v1", False, "/x", "/v1/x"),
        # the raw path is forwarded as the client wrote it, escapes included
        ("/api", "http://h/v1", True, "/api/caf%C3%A9/a%20b;p=1", "/v1/caf%C3%A9/a%20b;p=1"),
        ("/a:b", "http://h", True, "/a%3Ab/x", "/x"),
    ],
)
def test_forward_path(prefix, base_url, strip, raw_path, expected):
    assert route(1, prefix, strip_prefix=strip, base_url=base_url).forward_path(raw_path) == expected


# compiling


def test_compile_route_takes_depth_methods_and_the_default_body_limit(settings):
    settings.GATEWAY_MAX_BODY_BYTES = 1234
    upstream = target()
    compiled = routing.compile_route(
        Route(id=7, name="users", path_prefix="/api/users", host="api.example.com", methods="GET"), upstream
    )
    assert (compiled.id, compiled.name, compiled.prefix, compiled.depth) == (7, "users", "/api/users", 2)
    assert compiled.host == "api.example.com"
    assert compiled.methods == frozenset({"GET", "HEAD"})
    assert compiled.strip_prefix is True
    assert compiled.max_body_bytes == 1234
    assert compiled.upstream is upstream

    root = routing.compile_route(Route(id=8, name="root", path_prefix="/", max_body_bytes=0), upstream)
    assert root.depth == 0
    assert root.methods is None
    assert root.max_body_bytes == 0


@pytest.mark.parametrize(
    ("base_url", "scheme", "host", "port", "host_header", "base_path"),
    [
        ("http://orders.internal", "http", "orders.internal", 80, "orders.internal", ""),
        ("http://orders.internal:80/v1", "http", "orders.internal", 80, "orders.internal", "/v1"),
        ("http://orders.internal:8080/v1", "http", "orders.internal", 8080, "orders.internal:8080", "/v1"),
        ("https://orders.internal", "https", "orders.internal", 443, "orders.internal", ""),
        ("https://orders.internal:80", "https", "orders.internal", 80, "orders.internal:80", ""),
        ("http://[::1]:8080/a/b", "http", "::1", 8080, "[::1]:8080", "/a/b"),
        ("http://[::1]", "http", "::1", 80, "[::1]", ""),
    ],
)
def test_compile_upstream_address(base_url, scheme, host, port, host_header, base_path):
    compiled = target(base_url)
    (only,) = compiled.targets  # no Target rows: the base URL's own host and port
    assert (compiled.scheme, only.host, only.port) == (scheme, host, port)
    assert only.address == (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    assert compiled.host_header == host_header
    assert compiled.base_path == base_path


def test_compile_upstream_policy():
    compiled = target(
        "https://orders.internal",
        id=9,
        name="orders",
        connect_timeout=1.5,
        read_timeout=7.0,
        deadline=9.0,
        max_retries=3,
        retry_on_statuses="503,429",
        tls_verify=False,
        enabled=False,
    )
    assert (compiled.id, compiled.name, compiled.enabled) == (9, "orders", False)
    assert compiled.timeout.connect_timeout == 1.5
    assert compiled.timeout.read_timeout == 7.0
    assert compiled.deadline == 9.0
    assert compiled.retry.total == 3
    assert compiled.retry.status_forcelist == frozenset({429, 503})
    assert "POST" not in compiled.retry.allowed_methods
    assert not compiled.retry.redirect
    assert compiled.targets[0].pool_kwargs == {"cert_reqs": "CERT_NONE", "assert_hostname": False}
    assert target("https://orders.internal").targets[0].pool_kwargs is None
    assert target("http://orders.internal", tls_verify=False).targets[0].pool_kwargs is None


@pytest.mark.django_db
def test_each_upstream_compiles_with_its_own_enabled_targets_in_address_order(django_assert_num_queries):
    from proxy.models import Target
    from tests.support.config import make_route, make_upstream

    first, second, bare = make_upstream("first"), make_upstream("second"), make_upstream("bare")
    for upstream, address, enabled in (
        (second, "10.0.0.2:80", True),
        (first, "10.0.0.9:80", True),
        (first, "10.0.0.1:80", True),
        (second, "10.0.0.3:80", False),
        (first, "10.0.0.5:80", True),
    ):
        Target.objects.create(upstream=upstream, address=address, enabled=enabled)
    for upstream in (first, second, bare):
        make_route(upstream.name, f"/{upstream.name}", upstream)

    with django_assert_num_queries(3):  # targets, upstreams, routes: none per upstream
        table = routing.load_route_table()
    compiled = {route.name: route.upstream for route in table.routes}
    assert [t.address for t in compiled["first"].balancer.targets] == ["10.0.0.1:80", "10.0.0.5:80", "10.0.0.9:80"]
    assert [t.address for t in compiled["second"].balancer.targets] == ["10.0.0.2:80"]
    assert [t.address for t in compiled["bare"].balancer.targets] == ["127.0.0.1:9"]  # its base URL's host and port


def test_the_validated_host_name_is_remembered_per_host_and_forgotten_when_allowed_hosts_change(settings):
    from django.test import RequestFactory

    from proxy.middleware import validated_hostname

    settings.ALLOWED_HOSTS = ["api.example.com", ".example.org"]
    factory = RequestFactory()
    for _ in range(2):  # the second time from memory, the same answers
        assert validated_hostname(factory.get("/", HTTP_HOST="API.example.com:8080")) == "api.example.com"
        assert validated_hostname(factory.get("/", HTTP_HOST="api.example.com.")) == "api.example.com"
        assert validated_hostname(factory.get("/", HTTP_HOST="www.example.org")) == "www.example.org"
        assert validated_hostname(factory.get("/", HTTP_HOST="evil.test")) is None
        assert validated_hostname(factory.get("/", HTTP_HOST="api.example.com@evil.test")) is None

    settings.ALLOWED_HOSTS = ["evil.test"]
    assert validated_hostname(factory.get("/", HTTP_HOST="API.example.com:8080")) is None
    assert validated_hostname(factory.get("/", HTTP_HOST="evil.test")) == "evil.test"
