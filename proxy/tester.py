"""The route tester: an operator's request sent through the real pipeline in this process, with the decision
trace (route match, each rate-limit policy, the breaker, the URL sent upstream, every attempt, the answer).

The request is built from what the operator typed and nothing else: no admin cookie or header of theirs goes
along. The answer is shown as text, never relayed to the operator's browser. With `dry_run`, rate limits are
checked without counting the request; the request itself still goes to the upstream (that is the test).
Nothing here runs for clients' requests.
"""

from __future__ import annotations

import io
import ipaddress
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.wsgi import WSGIRequest
from django.http.request import split_domain_port
from django.utils.module_loading import import_string

from gateway_project import audit, runtime
from gateway_project.audit import Actor
from gateway_project.context import RequestContext
from gateway_project.request_id import request_id
from proxy.paths import BadPath, parse_target
from proxy.routing import MethodNotAllowed
from proxy.views import ProxyView

BODY_SHOWN = 4096
MAX_BODY = 64 * 1024
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class TestRequestError(ValueError):
    """The operator's request cannot be sent as typed (the message says why)."""


@dataclass
class Trace:
    route: str
    method: str
    url: str
    client_ip: str
    dry_run: bool
    matched: str | None = None
    why: str = ""
    ratelimit: list[dict] = field(default_factory=list)
    ratelimit_note: str = ""
    breaker: str = ""
    upstream_url: str | None = None
    target: str | None = None
    attempts: list[dict] = field(default_factory=list)
    status: int | None = None
    reason: str = ""
    answered_by: str = ""  # "upstream", or "gateway" (its own answer: a 429, a 503 of the breaker, ...)
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: str = ""
    body_truncated: bool = False
    took_ms: float = 0.0

    def as_dict(self) -> dict:
        found = dict(self.__dict__)
        found["headers"] = [list(pair) for pair in self.headers]
        return found


class _Recorder:
    """Sits in front of the breaker's ticket: hears each attempt, passes it on."""

    def __init__(self, inner, attempts: list[dict]) -> None:
        self.inner = inner
        self.attempts = attempts

    def attempt_finished(self, *, status, error, elapsed) -> None:
        outcome = f"status {status}" if error is None else f"{type(error).__name__}: {error}"
        self.attempts.append({"attempt": len(self.attempts) + 1, "outcome": outcome, "ms": round(elapsed * 1000, 2)})
        if self.inner is not None:
            self.inner.attempt_finished(status=status, error=error, elapsed=elapsed)

    def may_continue(self) -> bool:
        return self.inner is None or self.inner.may_continue()


class _Traced:
    """The end of the tester's pipeline: records attempts, then the real proxy view."""

    def __init__(self, view) -> None:
        self.view = view

    def __call__(self, request):
        ctx = request.gateway
        ctx.attempt_observer = _Recorder(ctx.attempt_observer, ctx.log.setdefault("_attempts", []))
        return self.view(request)


_pipeline = None
_pipeline_lock = threading.Lock()


def _the_pipeline():
    """GATEWAY_PIPELINE in front of the proxy view, as proxy.middleware builds it; once per process."""
    global _pipeline
    with _pipeline_lock:
        if _pipeline is None:
            handler = _Traced(ProxyView.from_settings())
            for path in reversed(settings.GATEWAY_PIPELINE):
                handler = import_string(path)(handler)
            _pipeline = handler
        return _pipeline


def default_host(route) -> str:
    """The Host a client of `route` would send: its host (a wildcard's www), else the gateway's listen address."""
    if route.host:
        return route.host.replace("*", "www")
    host, port = settings.GATEWAY_LISTEN
    return host if port == 80 else f"{host}:{port}"


def _environ(method: str, path: str, host: str, headers: dict[str, str], body: bytes, client_ip: str) -> dict:
    raw_path, _, query = path.partition("?")
    name, port = split_domain_port(host)
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": raw_path,
        "RAW_URI": path,
        "QUERY_STRING": query,
        "SERVER_NAME": name or "localhost",
        "SERVER_PORT": port or "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": client_ip,
        "HTTP_HOST": host,
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
    for key, value in headers.items():
        upper = key.upper().replace("-", "_")
        if upper in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[upper] = value
        elif upper != "HOST":
            environ[f"HTTP_{upper}"] = value
    return environ


_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def check_header(name: str, value: str, where: str) -> None:
    if not name or not set(name) <= _TOKEN:
        raise TestRequestError(f"{where}: {name!r} is not a header name")
    if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
        raise TestRequestError(f"{where}: the value holds a control character")


def parse_headers(text: str) -> dict[str, str]:
    """'Name: value' lines, as an operator types them."""
    found = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise TestRequestError(f"header line {number} is not 'Name: value'")
        check_header(name.strip(), value.strip(), f"header line {number}")
        found[name.strip()] = value.strip()
    return found


def _why(route, hostname: str, path: str, method: str) -> str:
    host = f"host {hostname} is {route.host}" if route.host else f"any host ({hostname})"
    methods = f"method {method} is one of {', '.join(sorted(route.methods))}" if route.methods else "any method"
    return f"{host}; path {path} is under prefix {route.prefix} (the longest prefix that matches); {methods}"


def run(
    *,
    route_name: str,
    method: str,
    path: str,
    host: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    client_ip: str,
    dry_run: bool,
    actor: Actor,
) -> Trace:
    """Send one request through the pipeline of this process and return its trace. A request that would not
    reach `route_name` (another route matches, or none) is not sent: the trace says what matched instead."""
    method = method.upper()
    if method not in METHODS:
        raise TestRequestError(f"method must be one of {', '.join(METHODS)}")
    if not path.startswith("/"):
        raise TestRequestError("the path must start with '/'")
    if len(body) > MAX_BODY:
        raise TestRequestError(f"the body may hold at most {MAX_BODY} bytes here")
    try:
        ipaddress.ip_address(client_ip)
    except ValueError:
        raise TestRequestError(f"{client_ip!r} is not an IP address") from None
    for name, value in (headers or {}).items():
        check_header(name, value, f"header {name!r}")
    if not host or any(ord(c) <= 32 or ord(c) >= 127 for c in host) or any(ord(c) <= 32 or ord(c) >= 127 for c in path):
        raise TestRequestError("the host and the path must be printable ASCII without spaces")
    started = time.perf_counter()
    environ = _environ(method, path, host, headers or {}, body, client_ip)
    trace = Trace(route=route_name, method=method, url=f"http://{host}{path}", client_ip=client_ip, dry_run=dry_run)
    request = WSGIRequest(environ)
    ctx = request.gateway = RequestContext(request_id(environ), client_ip, False, started)
    ctx.dry_run = dry_run
    try:
        target = parse_target(environ)
    except BadPath as exc:
        raise TestRequestError(f"the gateway refuses this path: {exc}") from None
    try:
        hostname = split_domain_port(request.get_host())[0]
    except DisallowedHost:
        raise TestRequestError(f"the Host {host!r} is not one this gateway serves (ALLOWED_HOSTS)") from None
    ctx.snapshot = snapshot = runtime.current()
    match = snapshot["routes"].match(hostname, target.path, method)
    if match is None:
        trace.why = "No route matches this host and path: a client would get 404 no_route."
        return _done(trace, started)
    if isinstance(match, MethodNotAllowed):
        allowed = ", ".join(match.allowed)
        trace.why = f"The path matches, but not the method: a client would get 405 (allowed: {allowed})."
        return _done(trace, started)
    if target.folded is not None and snapshot["routes"].match(hostname, target.folded, method) is not match:
        trace.why = "The path normalizes to another route's path: a client would get 400 bad_path."
        return _done(trace, started)
    trace.matched = match.name
    trace.why = _why(match, hostname, target.path, method)
    if match.name != route_name:
        trace.why += f". This request goes to route {match.name}, not {route_name}: not sent."
        return _done(trace, started)
    ctx.route, ctx.route_label, ctx.target = match, match.name, target
    response = _the_pipeline()(request)
    try:
        _read_answer(trace, ctx, response)
    finally:
        _release(response)
    upstream = match.upstream
    if trace.attempts or ctx.log.get("target"):
        sent = match.forward_path(target.raw_path) + (f"?{target.query}" if target.query else "")
        trace.target = ctx.log.get("target")
        trace.upstream_url = f"{upstream.scheme}://{trace.target or upstream.host_header}{sent}"
    trace.breaker = str(ctx.log.get("breaker", "not reached: the request was answered before the breaker"))
    outcome = ctx.ratelimit
    if outcome is not None:
        for result in outcome.results:
            policy = result.policy
            trace.ratelimit.append(
                {
                    "policy": policy.name,
                    "limit": f"{policy.limit} per {policy.window} s",
                    "decision": result.decision,
                    "remaining": result.remaining,
                    "retry_after": result.retry_after,
                    "shadow": policy.shadow,
                }
            )
        trace.ratelimit_note = (
            "dry run: checked, nothing counted" if dry_run else "counted as a client's request would be"
        )
    else:
        trace.ratelimit_note = "no policy applies" if trace.answered_by else ""
    if not dry_run:
        audit.record(
            actor=actor,
            action="test",
            object_type="route",
            object_name=route_name,
            note=f"{method} {path}: {trace.status} from the {trace.answered_by}",
        )
    return _done(trace, started)


def _read_answer(trace: Trace, ctx, response) -> None:
    trace.attempts = ctx.log.pop("_attempts", [])
    trace.status = response.status_code
    trace.reason = response.reason_phrase
    trace.answered_by = "gateway" if getattr(response, "gateway_error", None) else "upstream"
    trace.headers = list(response.items())
    if response.streaming:
        data = b""
        for chunk in response.streaming_content:
            data += chunk
            if len(data) > BODY_SHOWN:
                break
    else:
        data = response.content
    trace.body_truncated = len(data) > BODY_SHOWN
    trace.body = data[:BODY_SHOWN].decode("utf-8", errors="replace")


def _release(response) -> None:
    """What response.close() does for the upstream's connection, without its request_finished signal: that
    would close the admin request's database connection in the middle of it."""
    for closer in response._resource_closers:
        closer()
    response._resource_closers.clear()
    response.closed = True


def _done(trace: Trace, started: float) -> Trace:
    trace.took_ms = round((time.perf_counter() - started) * 1000, 2)
    return trace
