"""Sending one client request to its upstream: a target per attempt, pooled connections per target, urllib3
`Retry`, a retry budget and a deadline.

The retry loop is ours so that every attempt gets a timeout cut to the time left, goes to a target the
balancer picks (a retry to a healthy target this request has not tried yet, when there is one), and reports its
outcome to the target's passive health and to the circuit breaker (which counts the upstream as a whole); and so
that the deadline bounds the whole exchange. The decisions themselves are urllib3's: `Retry.increment` (what
may be retried: connection errors for any method, read errors and listed statuses only for idempotent methods,
within the counters), `get_backoff_time` (exponential backoff with jitter) and `get_retry_after`. Each retry
also takes a token from the upstream's retry budget (proxy.budget); once it is spent, the last answer stands.
"""

from __future__ import annotations

import errno
import http.client
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import urllib3
from django.conf import settings
from urllib3.connection import (
    _CONTAINS_CONTROL_CHAR_RE,
    HTTPConnection,
    HTTPSConnection,
    _get_default_user_agent,
    _ResponseOptions,
)
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    InvalidHeader,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.response import BaseHTTPResponse
from urllib3.util import SKIP_HEADER, SKIPPABLE_HEADERS, Retry
from urllib3.util.request import _METHODS_NOT_EXPECTING_BODY
from urllib3.util.url import _encode_target

from gateway_project import metrics
from gateway_project.context import AttemptObserver
from gateway_project.http import send_all, still_open
from proxy.balancing import CompiledTarget
from proxy.routing import CompiledUpstream
from proxy.upstream_response import HEADER_DEADLINE, DirectResponse, HeaderDeadline, UpstreamHTTPResponse


class UpstreamFailed(Exception):
    """No usable response: `timeout` is True when time ran out (504), False when the upstream failed (502).

    `target` is the address of the last target tried (None if none was)."""

    def __init__(self, message: str, *, timeout: bool, retry_reasons: list[str], target: str | None = None) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.retry_reasons = retry_reasons
        self.target = target

    @property
    def retries(self) -> int:
        return len(self.retry_reasons)


class ClientGone(Exception):
    """The client closed its connection while the retries waited; nothing more is sent upstream."""

    def __init__(self, *, retry_reasons: list[str], target: str | None) -> None:
        super().__init__("the client closed its connection during the retries")
        self.retry_reasons = retry_reasons
        self.target = target

    @property
    def retries(self) -> int:
        return len(self.retry_reasons)


class ClientBodyError(Exception):
    """Reading the client's request body failed: it disconnected, or sent more than it announced."""


class BodyTooLarge(ClientBodyError):
    """A body without Content-Length grew past the route's limit while it was being forwarded."""


@dataclass(slots=True)
class Exchange:
    response: BaseHTTPResponse
    retry_reasons: list[str]  # why each retry happened: connect, read_timeout, protocol, status_503, ...
    upstream_seconds: float
    target: CompiledTarget  # the target that gave the response
    finished: bool = False

    @property
    def retries(self) -> int:
        return len(self.retry_reasons)

    def finish(self) -> None:
        """The response is relayed (or abandoned): the target has one unfinished request fewer."""
        if not self.finished:
            self.finished = True
            self.target.state.outstanding -= 1


#: What http.client's putheader() refuses: a field name that is empty, starts with a blank or holds a colon or a
#: line break; a value with a line break that is no folding.
_LEGAL_NAME = re.compile(r"[^: \t\n\r\f\v][^:\r\n]*").fullmatch
_ILLEGAL_VALUE = re.compile(r"\n(?![ \t])|\r(?![ \t\n])").search
#: Field names that passed the name check: the same few come with every request. Bounded; never a refused one.
_CHECKED_NAMES: set[str] = set()
_CHECKED_NAMES_MAX = 4096
#: A request body up to this size goes out in the same send(2) as the head.
_WITH_HEAD = 64 * 1024
#: One attempt, no retries or redirects inside urllib3 (the loop in send() retries): one object for every call.
_ONE_ATTEMPT = Retry(False, redirect=False)


def _bodiless_length(method: str) -> int | None:
    """The Content-Length urllib3 gives a request without a body: 0 unless its method expects none (GET, HEAD,
    DELETE, ...; urllib3.util.request.body_to_chunks)."""
    return None if method.upper() in _METHODS_NOT_EXPECTING_BODY else 0


def head_fields(method: str, headers, content_length: int | None) -> tuple[set[str], bytes] | None:
    """The field lines urllib3's `request()` writes after the request line for `headers`, as one block, and the
    lowercased names given; None when the request must take urllib3's own path (it names its own framing, or a
    field that is not a str).

    The fields get http.client's checks (a field name or value that it refuses raises the same ValueError) and
    urllib3's defaults: its User-Agent unless one is given or skipped with SKIP_HEADER, and `Content-Length`
    when `content_length` is not None."""
    keys = {name.lower() for name in headers}
    if "content-length" in keys or "transfer-encoding" in keys:
        return None
    lines = []
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    if "user-agent" not in keys:
        lines.append(f"User-Agent: {_get_default_user_agent()}")
    values = []
    for name, value in headers.items():
        if isinstance(value, int):
            value = str(value)
        elif not isinstance(value, str) or not isinstance(name, str):
            return None
        if value == SKIP_HEADER:
            if name.lower() not in SKIPPABLE_HEADERS:
                _refuse_values(values)  # a bad value before it is refused first, as field by field
                raise ValueError(f"urllib3.util.SKIP_HEADER only supports {sorted(SKIPPABLE_HEADERS)}")
            continue
        if type(name) is not str or name not in _CHECKED_NAMES:
            if not (name.isascii() and _LEGAL_NAME(name)):
                _refuse_values(values)
                raise ValueError(f"Invalid header name {name!r}")
            if type(name) is str and len(_CHECKED_NAMES) < _CHECKED_NAMES_MAX:
                _CHECKED_NAMES.add(name)
        lines.append(f"{name}: {value}")
        values.append(value)
    # One search over all values: a NUL between them neither makes nor hides a match (a value that ends in CR or
    # LF matches alone, at its end, as before a NUL).
    if _ILLEGAL_VALUE("\0".join(values)):
        _refuse_values(values)
    return keys, "\r\n".join(lines).encode("latin-1")


def _refuse_values(values: list[str]) -> None:
    """Raise http.client's error for the first value it refuses, if any."""
    for value in values:
        if _ILLEGAL_VALUE(value):
            raise ValueError(f"Invalid header value {value!r}")


def direct_head(method: str, url: str, headers, body: bytes | None) -> bytes | None:
    """The bytes urllib3 sends before `body` for this request on a pooled connection (`urlopen()`: the target
    encoded as it encodes it, the request line checked by urllib3's and http.client's `putrequest()`); None
    when the request must take urllib3's own path (no Host field, a target that is not a path, or as
    `head_fields` says)."""
    if not url.startswith("/"):
        return None
    if body is not None:
        found = head_fields(method, headers, len(body))
    else:
        found = head_fields(method, headers, _bodiless_length(method))
    if found is None or "host" not in found[0]:
        return None
    keys, block = found
    match = _CONTAINS_CONTROL_CHAR_RE.search(method)
    if match:
        raise ValueError(f"Method cannot contain non-token characters {method!r} (found at least {match.group()!r})")
    # Percent-encoded as urlopen() encodes it: nothing is left that http.client's target check would refuse.
    parts = [f"{method} {_encode_target(url)} HTTP/1.1".encode("ascii")]
    if "accept-encoding" not in keys:
        parts.append(b"Accept-Encoding: identity")
    if block:
        parts.append(block)
    parts += (b"", b"")
    return b"\r\n".join(parts)


class OnePassRequestHead:
    """urllib3's `request()` for a request without a body, its head built in one pass (`head_fields`).

    urllib3 and http.client add each header with two calls that each check and encode it; for the dozen fields
    of a proxied request that was about 4 % of a worker's time. The bytes are those urllib3 sends. A request
    with a body, or that names its own framing, takes urllib3's path.
    """

    def request(self, method, url, body=None, headers=None, *, chunked=False, **options):
        if body is not None or chunked or headers is None:
            return super().request(method, url, body, headers, chunked=chunked, **options)
        found = head_fields(method, headers, _bodiless_length(method))
        if found is None:
            return super().request(method, url, body, headers, chunked=chunked, **options)
        keys, block = found
        if self.sock is not None:
            self.sock.settimeout(self.timeout)
        self._response_options = _ResponseOptions(
            request_method=method,
            request_url=url,
            preload_content=options.get("preload_content", True),
            decode_content=options.get("decode_content", True),
            enforce_content_length=options.get("enforce_content_length", True),
        )
        self.putrequest(method, url, skip_host="host" in keys, skip_accept_encoding="accept-encoding" in keys)
        if block:
            self._buffer.append(block)
        self.endheaders()
        return None

    def send(self, data) -> None:
        """http.client's send(), a head or a buffered body in one send(2) when it fits (gateway_project.http)."""
        if self.sock is not None and isinstance(data, bytes):
            send_all(self.sock, data)
        else:
            super().send(data)


class KeepAliveHTTPConnection(OnePassRequestHead, HTTPConnection):
    """urllib3's plain-HTTP connection with a cheaper liveness check.

    Before reusing a pooled keep-alive connection, urllib3 asks whether the upstream closed it by polling the
    socket for readability; gateway_project.http.still_open answers with one peek instead.
    """

    response_class = UpstreamHTTPResponse

    @property
    def is_connected(self) -> bool:
        return self.sock is not None and still_open(self.sock)


class KeepAliveHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = KeepAliveHTTPConnection


class UpstreamHTTPSConnection(OnePassRequestHead, HTTPSConnection):
    response_class = UpstreamHTTPResponse


class UpstreamHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = UpstreamHTTPSConnection


_pools_lock = threading.Lock()
_pool_manager: urllib3.PoolManager | None = None


def pool_manager() -> urllib3.PoolManager:
    """The worker's one PoolManager: keep-alive connections per upstream, sized to the worker's concurrency."""
    global _pool_manager
    if _pool_manager is None:
        with _pools_lock:
            if _pool_manager is None:
                manager = urllib3.PoolManager(
                    num_pools=settings.GATEWAY_POOL_NUM_POOLS,
                    maxsize=settings.GATEWAY_POOL_MAXSIZE,
                    block=False,
                    retries=False,
                )
                manager.pool_classes_by_scheme = {
                    "http": KeepAliveHTTPConnectionPool,
                    "https": UpstreamHTTPSConnectionPool,
                }
                _pool_manager = manager
    return _pool_manager


#: (scheme, host, port, the target's pool options) -> the PoolManager's key and context for that pool.
_pool_keys: dict[tuple, tuple] = {}


def _pool(manager: urllib3.PoolManager, scheme: str, target: CompiledTarget):
    """manager.connection_from_host(...) for the target, without normalizing the pool's key on every attempt."""
    kwargs = target.pool_kwargs
    key = (scheme, target.host, target.port, tuple(kwargs.items()) if kwargs else ())
    found = _pool_keys.get(key)
    if found is None:
        if len(_pool_keys) >= 4096:  # targets come and go with the configuration: keep this bounded
            _pool_keys.clear()
        context = manager._merge_pool_kwargs(kwargs)
        context.update(scheme=scheme, host=target.host, port=target.port)
        found = _pool_keys[key] = (manager.key_fn_by_scheme[scheme](context), context)
    pool_key, context = found
    # A copy: the manager takes scheme, host and port out of the context when it makes a pool.
    return manager.connection_from_pool_key(pool_key, request_context=dict(context))


def reason_of(error: Exception) -> str:
    if isinstance(error, NewConnectionError):
        return "connect"
    if isinstance(error, ConnectTimeoutError):
        return "connect_timeout"
    if isinstance(error, ReadTimeoutError):
        return "read_timeout"
    if isinstance(error, ProtocolError):
        return "protocol"
    return "other"


def is_timeout(error: Exception) -> bool:
    return isinstance(error, ReadTimeoutError) or (
        isinstance(error, ConnectTimeoutError) and not isinstance(error, NewConnectionError)
    )


def discard(response: BaseHTTPResponse) -> None:
    """Throw away a response we will not relay; keep its connection only if the body is small and complete."""
    try:
        length = response.length_remaining
        if length is not None and length <= 65536:
            response.drain_conn()
        else:
            response.close()
    finally:
        response.release_conn()


def send(
    upstream: CompiledUpstream,
    method: str,
    url: str,
    headers: dict[str, str],
    body,
    *,
    replayable: bool,
    chunked: bool = False,
    observer: AttemptObserver | None = None,
    client_gone: Callable[[], bool] | None = None,
    idempotency_key: bool = False,
    deadline: float | None = None,
    deadline_header: str | None = None,
    sleep=time.sleep,
    clock=time.monotonic,
) -> Exchange:
    """Send the request, retrying as the upstream's policy and budget allow, until a response or the deadline.

    `idempotency_key`: the request carries an Idempotency-Key on a route that lets POST and PATCH be retried.
    `deadline`: seconds the client allows (never more than the upstream's deadline). `deadline_header`: the
    header that tells each attempt the milliseconds left.
    """
    balancer, budget, manager = upstream.balancer, upstream.budget, pool_manager()
    retry = upstream.retry_with_key if idempotency_key else upstream.retry
    if not replayable:
        retry = retry.new(read=0, status=0)
    started = clock()
    budget.request(started)
    allowed = upstream.deadline if deadline is None else min(deadline, upstream.deadline)
    deadline_at = started + allowed
    # Read by UpstreamHTTPResponse.begin(): the head must arrive by then, however slowly its bytes drip in.
    header_deadline = HeaderDeadline(time.monotonic() + allowed)
    HEADER_DEADLINE.set(header_deadline)
    if not replayable and body is not None:
        body = header_deadline.excluding_client(body)
    # A body in memory (or none) on plain HTTP is sent and its answer read without urllib3's request and
    # response objects (_direct); a streamed body, and TLS, take urlopen().
    direct = upstream.scheme == "http" and not chunked and (body is None or type(body) is bytes)
    reasons: list[str] = []
    tried: tuple[CompiledTarget, ...] = ()
    target: CompiledTarget | None = None
    while True:
        now = clock()
        remaining = deadline_at - now
        address = target.address if target is not None else None
        if remaining <= 0 or (deadline_header is not None and int(remaining * 1000) <= 0):
            raise UpstreamFailed("deadline exceeded", timeout=True, retry_reasons=reasons, target=address)
        if tried and client_gone is not None and client_gone():
            raise ClientGone(retry_reasons=reasons, target=address)
        if deadline_header is not None:
            headers[deadline_header] = str(int(remaining * 1000))
        target = balancer.pick(now, tried)
        tried += (target,)
        pool = _pool(manager, upstream.scheme, target)
        # Before the attempt counts: a field http.client refuses raises ValueError here, and nothing was sent.
        message = direct_head(method, url, headers, body) if direct else None
        target.state.outstanding += 1
        attempt_started = clock()
        try:
            if message is not None:
                response = _direct(
                    pool,
                    method,
                    url,
                    message,
                    body,
                    min(upstream.connect_timeout, remaining),
                    min(upstream.read_timeout, remaining),
                )
            else:
                response = pool.urlopen(
                    method,
                    url,
                    body=body,
                    headers=headers,
                    retries=_ONE_ATTEMPT,
                    redirect=False,
                    assert_same_host=False,
                    timeout=upstream.timeout
                    if remaining >= upstream.connect_timeout and remaining >= upstream.read_timeout
                    else urllib3.Timeout(
                        connect=min(upstream.connect_timeout, remaining), read=min(upstream.read_timeout, remaining)
                    ),
                    preload_content=False,
                    decode_content=False,
                    release_conn=False,
                    chunked=chunked,
                )
        except ClientBodyError:
            target.state.outstanding -= 1
            raise
        except HTTPError as error:
            target.state.outstanding -= 1
            ended = clock()
            reason = reason_of(error)
            attempted(upstream, target, reason, failed=True, now=ended)
            if observer is not None:
                observer.attempt_finished(status=None, error=error, elapsed=ended - attempt_started)
            failed = UpstreamFailed(str(error), timeout=is_timeout(error), retry_reasons=reasons, target=target.address)
            try:
                retry = retry.increment(method, url, error=error)
            except (MaxRetryError, HTTPError):
                raise failed from error
            wait = retry.get_backoff_time()
            if not _may_retry(upstream, wait, deadline_at, observer, clock):
                raise failed from error
            reasons.append(reason)
            sleep(wait)
            continue

        status = response.status
        ended = clock()
        attempted(upstream, target, status, failed=status in balancer.policy.statuses, now=ended)
        if observer is not None:
            observer.attempt_finished(status=status, error=None, elapsed=ended - attempt_started)
        exchange = Exchange(response, reasons, 0.0, target)
        if status in retry.status_forcelist and retry.is_retry(method, status):
            try:
                next_retry = retry.increment(method, url, response=response)
            except MaxRetryError:
                exchange.upstream_seconds = clock() - started
                return exchange
            try:
                wait = next_retry.get_retry_after(response)
            except InvalidHeader:
                wait = None
            if wait is None:
                wait = next_retry.get_backoff_time()
            # A Retry-After (or backoff) longer than the time left ends the retries: relay this answer.
            if not _may_retry(upstream, wait, deadline_at, observer, clock):
                exchange.upstream_seconds = clock() - started
                return exchange
            discard(response)
            exchange.finish()
            reasons.append(f"status_{status}")
            retry = next_retry
            sleep(wait)
            continue
        exchange.upstream_seconds = clock() - started
        return exchange


def _direct(
    pool: KeepAliveHTTPConnectionPool,
    method: str,
    url: str,
    message: bytes,
    body: bytes | None,
    connect_timeout: float,
    read_timeout: float,
) -> DirectResponse:
    """One attempt as `pool.urlopen(...)` makes it with one Retry-less attempt, release_conn=False and
    preload_content=False: a connection from the pool (connected if new), the request written, the answer's head
    read, and the same errors (a connection error as urllib3 raises it, a read timeout as ReadTimeoutError, any
    other failure as ProtocolError("Connection aborted.")), the connection closed after any of them. The answer
    is a DirectResponse; releasing it gives the connection back."""
    pool.num_requests += 1
    conn = pool._get_conn()
    try:
        conn.timeout = connect_timeout
        if conn.sock is None:
            conn.connect()
        sock = conn.sock
        sock.settimeout(connect_timeout)
        try:
            if body and len(body) > _WITH_HEAD:
                send_all(sock, message)
                send_all(sock, body)
            else:
                send_all(sock, message + body if body else message)
        except BrokenPipeError:
            pass  # the upstream may have answered already: read it (urllib3 does the same)
        except OSError as error:
            if error.errno != errno.EPROTOTYPE and error.errno != errno.ECONNRESET:
                raise
        if read_timeout == 0:
            raise ReadTimeoutError(pool, url, f"Read timed out. (read timeout={read_timeout})")
        conn.timeout = read_timeout
        sock.settimeout(read_timeout)
        try:
            return DirectResponse(pool, conn, method)
        except OSError as error:
            pool._raise_timeout(err=error, url=url, timeout_value=read_timeout)
            raise
    except (OSError, http.client.HTTPException) as error:
        conn.close()
        pool._put_conn(None)
        raise ProtocolError("Connection aborted.", error) from error
    except BaseException:
        conn.close()
        pool._put_conn(None)
        raise


def attempted(upstream: CompiledUpstream, target: CompiledTarget, outcome, *, failed: bool, now: float) -> None:
    """One attempt's outcome: the target's passive health, and the attempts metric."""
    if failed:
        if upstream.balancer.failed(target, now):
            metrics.target_ejected(upstream=upstream.name, target=target.address)
    else:
        upstream.balancer.succeeded(target)
    metrics.observe_attempt(upstream=upstream.name, target=target.address, outcome=str(outcome))


def _may_retry(upstream: CompiledUpstream, wait: float, deadline_at: float, observer, clock) -> bool:
    """A retry after `wait` seconds: within the deadline, while the breaker allows, and within the budget."""
    now = clock()
    if now + wait >= deadline_at or (observer is not None and not observer.may_continue()):
        return False
    if not upstream.budget.try_retry(now, upstream.budget_percent, upstream.budget_min):
        metrics.retry_budget_exhausted(upstream=upstream.name)
        return False
    return True
