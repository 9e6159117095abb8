"""One typed object per request: created by the outermost middleware, filled and read by every layer.

Apps never set attributes of their own on the request; each reads and writes its fields of
`request.gateway` (a RequestContext), so what a request carries is written down in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

NO_ROUTE, OWN = "(none)", "(gateway)"


class AttemptObserver(Protocol):
    """Told about every attempt to reach the upstream (retries included); the circuit breaker implements it."""

    def attempt_finished(self, *, status: int | None, error: Exception | None, elapsed: float) -> None: ...

    def may_continue(self) -> bool: ...


@dataclass(slots=True, eq=False)
class RequestContext:
    id: str
    client_ip: str
    peer_trusted: bool  # the TCP peer is a trusted proxy (GATEWAY_TRUSTED_PROXIES)
    started: float  # time.perf_counter() when the gateway got the request
    #: Label of the request in metrics: the route's name, NO_ROUTE, or OWN for the gateway's own endpoints.
    route_label: str = NO_ROUTE
    #: The configuration snapshot the request is served from (proxy; runtime.Snapshot).
    snapshot: Any = None
    #: The matched route (proxy's CompiledRoute: id, name, upstream with id and name) and the parsed target.
    route: Any = None
    target: Any = None
    #: The consumer the API key names (limits' ConsumerInfo: id, name), and the rate-limit outcome.
    consumer: Any = None
    ratelimit: Any = None
    #: The breaker's ticket for this request.
    attempt_observer: AttemptObserver | None = None
    #: Seconds spent per phase (ratelimit, breaker, upstream), for Server-Timing.
    timings: dict[str, float] = field(default_factory=dict)
    #: Extra fields of the access log line.
    log: dict[str, Any] = field(default_factory=dict)
    bytes_in: int = 0
    #: The relayed upstream body, once streaming (it counts the bytes sent).
    body: Any = None
    #: The route tester's dry run: rate limits are checked without counting the request.
    dry_run: bool = False
