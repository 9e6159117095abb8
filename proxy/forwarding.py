"""Sending one client request to its upstream: pooled connections, per-upstream urllib3 `Retry`, a deadline.

The retry loop is ours so that every attempt gets a timeout cut to the time left, every attempt's outcome
reaches the circuit breaker, and the deadline bounds the whole exchange. The decisions themselves are
urllib3's: `Retry.increment` (what may be retried: connection errors for any method, read errors and
listed statuses only for idempotent methods, within the counters), `get_backoff_time` (exponential backoff
with jitter) and `get_retry_after`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import urllib3
from django.conf import settings
from urllib3.connection import HTTPConnection, HTTPSConnection
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

from gateway_project.context import AttemptObserver
from gateway_project.http import still_open
from proxy.routing import UpstreamTarget
from proxy.upstream_response import HEADER_DEADLINE, HeaderDeadline, UpstreamHTTPResponse


class UpstreamFailed(Exception):
    """No usable response: `timeout` is True when time ran out (504), False when the upstream failed (502)."""

    def __init__(self, message: str, *, timeout: bool, retry_reasons: list[str]) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.retry_reasons = retry_reasons

    @property
    def retries(self) -> int:
        return len(self.retry_reasons)


class ClientGone(Exception):
    """The client closed its connection while the retries waited; nothing more is sent upstream."""

    def __init__(self, *, retry_reasons: list[str]) -> None:
        super().__init__("the client closed its connection during the retries")
        self.retry_reasons = retry_reasons

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

    @property
    def retries(self) -> int:
        return len(self.retry_reasons)


class KeepAliveHTTPConnection(HTTPConnection):
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


class UpstreamHTTPSConnection(HTTPSConnection):
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


def _reason(error: Exception) -> str:
    if isinstance(error, NewConnectionError):
        return "connect"
    if isinstance(error, ConnectTimeoutError):
        return "connect_timeout"
    if isinstance(error, ReadTimeoutError):
        return "read_timeout"
    if isinstance(error, ProtocolError):
        return "protocol"
    return "other"


def _is_timeout(error: Exception) -> bool:
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
    upstream: UpstreamTarget,
    method: str,
    url: str,
    headers: dict[str, str],
    body,
    *,
    replayable: bool,
    chunked: bool = False,
    observer: AttemptObserver | None = None,
    client_gone: Callable[[], bool] | None = None,
    sleep=time.sleep,
    clock=time.monotonic,
) -> Exchange:
    """Send the request, retrying as the upstream's policy allows, until a response or the deadline."""
    pool = pool_manager().connection_from_host(
        upstream.host, upstream.port, upstream.scheme, pool_kwargs=upstream.pool_kwargs or None
    )
    retry = upstream.retry if replayable else upstream.retry.new(read=0, status=0)
    started = clock()
    deadline = started + upstream.deadline
    # Read by UpstreamHTTPResponse.begin(): the head must arrive by then, however slowly its bytes drip in.
    header_deadline = HeaderDeadline(time.monotonic() + upstream.deadline)
    HEADER_DEADLINE.set(header_deadline)
    if not replayable and body is not None:
        body = header_deadline.excluding_client(body)
    sent = False
    reasons: list[str] = []
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            raise UpstreamFailed("deadline exceeded", timeout=True, retry_reasons=reasons)
        if sent and client_gone is not None and client_gone():
            raise ClientGone(retry_reasons=reasons)
        sent = True
        attempt_started = clock()
        try:
            response = pool.urlopen(
                method,
                url,
                body=body,
                headers=headers,
                retries=False,
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
            raise
        except HTTPError as error:
            if observer is not None:
                observer.attempt_finished(status=None, error=error, elapsed=clock() - attempt_started)
            failed = UpstreamFailed(str(error), timeout=_is_timeout(error), retry_reasons=reasons)
            try:
                retry = retry.increment(method, url, error=error)
            except (MaxRetryError, HTTPError):
                raise failed from error
            wait = retry.get_backoff_time()
            if clock() + wait >= deadline or (observer is not None and not observer.may_continue()):
                raise failed from error
            reasons.append(_reason(error))
            sleep(wait)
            continue

        status = response.status
        if observer is not None:
            observer.attempt_finished(status=status, error=None, elapsed=clock() - attempt_started)
        if status in retry.status_forcelist and retry.is_retry(method, status):
            try:
                next_retry = retry.increment(method, url, response=response)
            except MaxRetryError:
                return Exchange(response, reasons, clock() - started)
            try:
                wait = next_retry.get_retry_after(response)
            except InvalidHeader:
                wait = None
            if wait is None:
                wait = next_retry.get_backoff_time()
            # A Retry-After (or backoff) longer than the time left ends the retries: relay this answer.
            if clock() + wait >= deadline or (observer is not None and not observer.may_continue()):
                return Exchange(response, reasons, clock() - started)
            discard(response)
            reasons.append(f"status_{status}")
            retry = next_retry
            sleep(wait)
            continue
        return Exchange(response, reasons, clock() - started)
