"""The compiled route table: built once per configuration revision, matched per request without SQL.

Matching rules, in order:

1. Host: routes whose host equals the request's host are considered first, then wildcard hosts (`*.example.com`,
   the longest suffix first), then routes without a host. The first group with any matching prefix decides.
2. Path: the longest prefix that matches segment by segment (/api matches /api and /api/x, not /apix).
3. Method: among the routes on that host and prefix, the one that accepts the method; if none does, 405.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from urllib3.util import Retry, Timeout
from urllib3.util.url import parse_url

from gateway_project import runtime
from proxy.balancing import Balancer, CompiledTarget, OutlierPolicy, state_of
from proxy.budget import RetryBudget, budget_of

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})  # RFC 9110 §9.2.2
#: Methods that become retryable with an Idempotency-Key (draft-ietf-httpapi-idempotency-key-header).
KEYED_METHODS = frozenset({"POST", "PATCH"})


@dataclass(frozen=True, slots=True)
class CompiledUpstream:
    """An upstream compiled for the hot path: its targets and balancer, timeouts, retry policies and budget, built
    once per configuration revision. The base URL gives the scheme, the base path and the Host header; the
    targets (or, without any, the base URL's own host and port) are where connections go."""

    id: int
    name: str
    scheme: str
    host_header: str
    base_path: str
    connect_timeout: float
    read_timeout: float
    deadline: float
    retry: Retry
    #: The same policy with POST and PATCH retryable, for requests carrying an Idempotency-Key on routes that
    #: allow it.
    retry_with_key: Retry
    timeout: Timeout
    enabled: bool
    balancer: Balancer
    budget: RetryBudget
    budget_percent: int = 20
    budget_min: int = 3
    #: Active health check (proxy.health), or None: (path, interval, timeout, statuses, healthy, unhealthy).
    check: HealthCheck | None = None

    @property
    def targets(self) -> tuple[CompiledTarget, ...]:
        return self.balancer.targets


@dataclass(frozen=True, slots=True)
class HealthCheck:
    path: str
    interval: float
    timeout: float
    statuses: frozenset[int]
    healthy_threshold: int
    unhealthy_threshold: int


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
    upstream: CompiledUpstream
    require_api_key: bool = False
    drop_keys: frozenset[str] = frozenset()
    #: POST and PATCH with an Idempotency-Key header may be retried.
    retry_idempotency_key: bool = False
    #: Header carrying the milliseconds left to the deadline, and its environ key (a client's value in it can
    #: only shorten the deadline); None: off.
    deadline_header: str | None = None
    deadline_key: str | None = None
    #: Protocols a client may switch to (lower case), e.g. frozenset({"websocket"}).
    upgrade_protocols: frozenset[str] = frozenset()

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


def compile_upstream(upstream, targets=()) -> CompiledUpstream:
    """Compile an upstream and its enabled `targets` (Target rows; none: the base URL's host and port)."""
    from gateway_project.validation import parse_statuses

    url = parse_url(upstream.base_url)
    scheme = url.scheme or "http"
    base_host = url.host.strip("[]")
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
    addresses = [(t.address, t.weight) for t in targets if t.enabled]
    if not targets:
        addresses = [(base_address(upstream.base_url), 1)]
    compiled_targets = tuple(
        _compile_target(upstream, address, weight, scheme=scheme, base_host=base_host) for address, weight in addresses
    )
    check = None
    if upstream.health_check_path:
        check = HealthCheck(
            path=upstream.health_check_path,
            interval=upstream.health_check_interval,
            timeout=upstream.health_check_timeout,
            statuses=frozenset(int(s) for s in upstream.health_check_statuses.split(",")),
            healthy_threshold=upstream.healthy_threshold,
            unhealthy_threshold=upstream.unhealthy_threshold,
        )
    else:
        for target in compiled_targets:  # checks switched off: whatever they said no longer holds
            target.state.active_healthy = True
    balancer = Balancer(
        compiled_targets,
        checked=check is not None,
        algorithm=upstream.balancing,
        policy=OutlierPolicy(
            consecutive=upstream.eject_consecutive_failures,
            base_seconds=upstream.eject_seconds,
            max_seconds=upstream.eject_max_seconds,
            max_percent=upstream.eject_max_percent,
            statuses=parse_statuses(upstream.eject_on_statuses),
        ),
    )
    return CompiledUpstream(
        id=upstream.id,
        name=upstream.name,
        scheme=scheme,
        host_header=host_header,
        base_path=(url.path or "").rstrip("/"),
        connect_timeout=upstream.connect_timeout,
        read_timeout=upstream.read_timeout,
        deadline=upstream.deadline,
        retry=retry,
        retry_with_key=retry.new(allowed_methods=IDEMPOTENT_METHODS | KEYED_METHODS),
        timeout=Timeout(connect=upstream.connect_timeout, read=upstream.read_timeout),
        enabled=upstream.enabled,
        balancer=balancer,
        budget=budget_of(upstream.id, upstream.name),
        budget_percent=upstream.retry_budget_percent,
        budget_min=upstream.retry_budget_min,
        check=check,
    )


def base_address(base_url: str) -> str:
    """host:port of a base URL: the one target of an upstream without Target rows."""
    url = parse_url(base_url)
    return f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"


def _compile_target(upstream, address: str, weight: int, *, scheme: str, base_host: str) -> CompiledTarget:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    pool_kwargs: dict[str, Any] = {}
    if scheme == "https":
        if not upstream.tls_verify:
            pool_kwargs = {"cert_reqs": "CERT_NONE", "assert_hostname": False}
        elif host != base_host:
            # A target named by its address still presents the service's certificate: ask for it by the base
            # URL's name (SNI) and check the certificate against that name.
            pool_kwargs = {"server_hostname": base_host, "assert_hostname": base_host}
    return CompiledTarget(
        address=address,
        host=host,
        port=int(port),
        weight=weight,
        pool_kwargs=pool_kwargs or None,
        state=state_of(upstream.id, address),
    )


def compile_route(route, upstream: CompiledUpstream) -> CompiledRoute:
    from gateway_project.http import environ_key
    from proxy.headers import request_drop_keys

    prefix = route.path_prefix
    limit = route.max_body_bytes if route.max_body_bytes is not None else settings.GATEWAY_MAX_BODY_BYTES
    private = [settings.GATEWAY_CONSUMER_HEADER]
    if not route.forward_api_key:
        private.append(settings.GATEWAY_API_KEY_HEADER)
    deadline_header = route.deadline_header or None
    if deadline_header:
        private.append(deadline_header)  # the gateway writes its own value
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
        retry_idempotency_key=route.retry_idempotency_key,
        deadline_header=deadline_header,
        deadline_key=environ_key(deadline_header) if deadline_header else None,
        upgrade_protocols=frozenset(p for p in route.upgrade_protocols.split(",") if p),
    )


def load_route_table() -> RouteTable:
    """Read every enabled route and its upstream from the database and compile them."""
    from proxy.models import Route, Target, Upstream

    # Every target in one query, grouped here: prefetch_related("targets") built a queryset per upstream, half of
    # what a load cost with 1,000 upstreams (every worker loads a changed configuration at once, between requests).
    # Compiled in turns with the worker's requests (runtime.in_turns).
    targets: dict[int, list] = {}
    for target in runtime.in_turns(Target.objects.order_by("upstream_id", "address")):
        targets.setdefault(target.upstream_id, []).append(target)
    upstreams = {u.id: compile_upstream(u, targets.get(u.id, [])) for u in runtime.in_turns(Upstream.objects.all())}
    routes = [
        compile_route(r, upstreams[r.upstream_id])
        for r in runtime.in_turns(Route.objects.filter(enabled=True))
        # An upstream committed with its route after the upstreams were read: the revision moved, so
        # runtime.load() reads everything again.
        if r.upstream_id in upstreams
    ]
    return RouteTable(routes)
