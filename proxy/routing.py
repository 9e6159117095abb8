"""The compiled route table: built once per configuration revision, matched per request without SQL.

Matching rules, in order:

1. Host: routes whose host equals the request's host are considered first, then wildcard hosts (`*.example.com`,
   the longest suffix first), then routes without a host. The first group with any matching prefix decides.
2. Path: the longest prefix that matches segment by segment (/api matches /api and /api/x, not /apix).
3. Method: among the routes on that host and prefix, the one that accepts the method; if none does, 405.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from urllib3.util import Retry, Timeout
from urllib3.util.url import parse_url

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})  # RFC 9110 §9.2.2


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """An upstream compiled for the hot path: pool key parts, timeouts and the retry policy, built once."""

    id: int
    name: str
    scheme: str
    host: str
    port: int
    host_header: str
    base_path: str
    connect_timeout: float
    read_timeout: float
    deadline: float
    retry: Retry
    timeout: Timeout
    enabled: bool
    pool_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    id: int
    name: str
    prefix: str
    depth: int
    host: str
    methods: frozenset[str] | None
    strip_prefix: bool
    max_body_bytes: int
    upstream: UpstreamTarget
    require_api_key: bool = False
    drop_keys: frozenset[str] = frozenset()

    def forward_path(self, raw_path: str) -> str:
        """The path sent upstream: the base path, then the client's raw path with the prefix stripped if set."""
        rest = raw_path
        if self.strip_prefix and self.depth:
            index = 0
            for _ in range(self.depth):
                index = raw_path.find("/", index + 1)
                if index < 0:
                    break
            rest = "" if index < 0 else raw_path[index:]
        path = self.upstream.base_path + rest
        return path or "/"


@dataclass(frozen=True, slots=True)
class MethodNotAllowed:
    allowed: tuple[str, ...]


class _Group:
    """Routes that share a host and a prefix; their method sets are disjoint (enforced at save time)."""

    __slots__ = ("allowed", "any_method", "by_method")

    def __init__(self) -> None:
        self.by_method: dict[str, CompiledRoute] = {}
        self.any_method: CompiledRoute | None = None
        self.allowed: tuple[str, ...] = ()

    def add(self, route: CompiledRoute) -> None:
        if route.methods is None:
            if self.any_method is None:
                self.any_method = route
        else:
            for method in route.methods:
                self.by_method.setdefault(method, route)
        self.allowed = tuple(sorted(self.by_method))

    def pick(self, method: str) -> CompiledRoute | MethodNotAllowed:
        route = self.by_method.get(method) or self.any_method
        return route if route is not None else MethodNotAllowed(self.allowed)


class RouteTable:
    def __init__(self, routes: list[CompiledRoute] | tuple[CompiledRoute, ...] = ()) -> None:
        self.routes = tuple(sorted(routes, key=lambda r: (r.host, r.prefix, r.id)))
        self._exact: dict[str, dict[str, _Group]] = {}
        self._wildcard: dict[str, dict[str, _Group]] = {}
        self._any: dict[str, _Group] = {}
        for route in self.routes:
            if not route.host:
                table = self._any
            elif route.host.startswith("*."):
                table = self._wildcard.setdefault(route.host[1:], {})
            else:
                table = self._exact.setdefault(route.host, {})
            table.setdefault(route.prefix, _Group()).add(route)

    def __len__(self) -> int:
        return len(self.routes)

    def match(self, host: str, path: str, method: str) -> CompiledRoute | MethodNotAllowed | None:
        """Match a lower-case host (no port) and a decoded path that starts with '/'."""
        if self._exact:
            table = self._exact.get(host)
            if table is not None:
                group = _longest_prefix(table, path)
                if group is not None:
                    return group.pick(method)
        if self._wildcard:
            dot = host.find(".")
            while dot >= 0:
                table = self._wildcard.get(host[dot:])
                if table is not None:
                    group = _longest_prefix(table, path)
                    if group is not None:
                        return group.pick(method)
                dot = host.find(".", dot + 1)
        group = _longest_prefix(self._any, path)
        return None if group is None else group.pick(method)


def _longest_prefix(table: dict[str, _Group], path: str) -> _Group | None:
    """Walk the path's ancestors from the longest: /a/b/c, /a/b, /a, /."""
    if not table:
        return None
    candidate = path[:-1] if len(path) > 1 and path.endswith("/") else path
    while True:
        group = table.get(candidate)
        if group is not None:
            return group
        if candidate == "/":
            return None
        candidate = candidate[: candidate.rfind("/")] or "/"


def compile_upstream(upstream) -> UpstreamTarget:
    from gateway_project.validation import parse_statuses

    url = parse_url(upstream.base_url)
    scheme = url.scheme or "http"
    port = url.port or (443 if scheme == "https" else 80)
    default_port = (scheme == "http" and port == 80) or (scheme == "https" and port == 443)
    host_header = url.host if default_port else f"{url.host}:{port}"
    retry = Retry(
        total=upstream.max_retries,
        connect=None,
        read=None,
        status=None,
        # TLS handshake failures and the like: retrying rarely helps and costs the deadline.
        other=0,
        redirect=False,
        allowed_methods=IDEMPOTENT_METHODS,
        status_forcelist=parse_statuses(upstream.retry_on_statuses),
        backoff_factor=upstream.backoff_factor,
        backoff_max=upstream.backoff_max,
        backoff_jitter=upstream.backoff_jitter,
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    pool_kwargs: dict[str, Any] = {}
    if scheme == "https" and not upstream.tls_verify:
        pool_kwargs = {"cert_reqs": "CERT_NONE", "assert_hostname": False}
    return UpstreamTarget(
        id=upstream.id,
        name=upstream.name,
        scheme=scheme,
        host=url.host.strip("[]"),
        port=port,
        host_header=host_header,
        base_path=(url.path or "").rstrip("/"),
        connect_timeout=upstream.connect_timeout,
        read_timeout=upstream.read_timeout,
        deadline=upstream.deadline,
        retry=retry,
        timeout=Timeout(connect=upstream.connect_timeout, read=upstream.read_timeout),
        enabled=upstream.enabled,
        pool_kwargs=pool_kwargs,
    )


def compile_route(route, upstream: UpstreamTarget) -> CompiledRoute:
    from proxy.headers import request_drop_keys

    prefix = route.path_prefix
    limit = route.max_body_bytes if route.max_body_bytes is not None else settings.GATEWAY_MAX_BODY_BYTES
    private = [settings.GATEWAY_CONSUMER_HEADER]
    if not route.forward_api_key:
        private.append(settings.GATEWAY_API_KEY_HEADER)
    return CompiledRoute(
        id=route.id,
        name=route.name,
        prefix=prefix,
        depth=0 if prefix == "/" else prefix.count("/"),
        host=route.host,
        methods=route.method_set,
        strip_prefix=route.strip_prefix,
        max_body_bytes=limit,
        upstream=upstream,
        require_api_key=route.require_api_key,
        drop_keys=request_drop_keys(*private),
    )


def load_route_table() -> RouteTable:
    """Read every enabled route and its upstream from the database and compile them."""
    from proxy.models import Route, Upstream

    upstreams = {u.id: compile_upstream(u) for u in Upstream.objects.all()}
    routes = [compile_route(r, upstreams[r.upstream_id]) for r in Route.objects.filter(enabled=True)]
    return RouteTable(routes)
