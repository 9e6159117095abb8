"""The proxy view: forward the matched request to its upstream and stream the answer back.

Bodies stream in both directions in 64 KiB pieces. A request body small enough to replay
(GATEWAY_RETRY_BUFFER_BYTES) is read first so that retries can resend it; a larger one streams straight
through and only a refused connection is retried. A response with a short, known length is read whole and
its connection returned to the pool at once; anything else streams.
"""

from __future__ import annotations

import http.client
import logging
import time

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from urllib3.exceptions import HTTPError, ReadTimeoutError

from gateway_project import metrics
from gateway_project.responses import json_error
from proxy import forwarding, headers, upgrade
from proxy.client_body import ClientBodyTimeout, TimedInput
from proxy.disconnect import gone_check
from proxy.forwarding import BodyTooLarge, ClientBodyError, ClientGone, UpstreamFailed
from proxy.routing import KEYED_METHODS
from proxy.upstream_response import HEADER_DEADLINE, HeaderDeadline

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024
SMALL_RESPONSE = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})


class _UpstreamHeaders:
    """Relays the upstream's header lines as they came (repeated Set-Cookie included) after the gateway's, except
    its copies of fields the gateway set."""

    upstream_headers: list[tuple[str, str]]

    def items(self):
        return headers.merge_response_headers(self.headers, self.upstream_headers)


class UpstreamResponse(_UpstreamHeaders, HttpResponse):
    pass


class UpstreamStreamingResponse(_UpstreamHeaders, StreamingHttpResponse):
    pass


class UpstreamBody:
    """Iterates the upstream body without decoding it; returns or closes the connection when done.

    The first piece is read by the view (`start`), so that an answer that breaks before any of its body is a 502
    like any other, not a server error after the fact: nothing has gone to the client until then anyway (the
    worker sends the header block with the first body bytes)."""

    __slots__ = ("complete", "first", "on_close", "response", "sent")

    def __init__(self, response, on_close) -> None:
        self.response = response
        self.on_close = on_close
        self.complete = False
        self.first = b""
        self.sent = 0

    def start(self) -> None:
        self.first = self.response.read1(CHUNK, decode_content=False)
        if not self.first:
            self.complete = True

    def __iter__(self):
        if self.complete:
            return
        chunk, self.first = self.first, b""
        read1 = self.response.read1
        while chunk:
            self.sent += len(chunk)
            yield chunk
            chunk = read1(CHUNK, decode_content=False)
        self.complete = True

    def close(self) -> None:
        response = self.response
        if not self.complete:
            # The client went away or the upstream broke off: this connection cannot be reused.
            response.close()
        response.release_conn()
        self.on_close()


class ProxyView:
    """The end of the gateway pipeline, built once per worker with its settings."""

    def __init__(
        self,
        *,
        retry_buffer: int,
        via: str,
        consumer_header: str,
        body_timeout: float,
        body_min_rate: float,
        upgrade_idle: float = 300.0,
        upgrade_limit: int = 500,
    ) -> None:
        self.retry_buffer = retry_buffer
        self.via = via
        self.consumer_header = consumer_header
        self.body_timeout = body_timeout
        self.body_min_rate = body_min_rate
        self.upgrade_idle = upgrade_idle
        self.upgrade_slots = upgrade.Slots(upgrade_limit)

    @classmethod
    def from_settings(cls) -> ProxyView:
        return cls(
            retry_buffer=settings.GATEWAY_RETRY_BUFFER_BYTES,
            via=settings.GATEWAY_VIA,
            consumer_header=settings.GATEWAY_CONSUMER_HEADER,
            body_timeout=settings.GATEWAY_CLIENT_BODY_TIMEOUT,
            body_min_rate=settings.GATEWAY_CLIENT_BODY_MIN_RATE,
            upgrade_idle=settings.GATEWAY_UPGRADE_IDLE_TIMEOUT,
            upgrade_limit=settings.GATEWAY_UPGRADE_MAX_CONNECTIONS,
        )

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        ctx = request.gateway
        route = ctx.route
        upstream = route.upstream
        if not upstream.enabled:
            return json_error(request, 503, "upstream_disabled", "This upstream is disabled.", upstream=upstream.name)
        if not upstream.targets:
            return json_error(
                request, 503, "no_target", "Every target of this upstream is disabled.", upstream=upstream.name
            )
        environ = request.environ
        deadline = None
        if route.deadline_key is not None:
            deadline = _client_deadline(environ.get(route.deadline_key))
        if route.upgrade_protocols:
            protocol = upgrade.requested_protocol(environ)
            if protocol is not None and upgrade.allowed(protocol, route.upgrade_protocols):
                return self._upgrade(request, ctx, route, deadline)

        try:
            body, replayable, chunked = self._request_body(request, ctx, route.max_body_bytes)
        except ClientBodyTimeout as exc:
            return _body_timeout(request, ctx, exc)
        except ClientBodyError as exc:
            ctx.log.update(client_error=str(exc))
            return json_error(request, 400, "bad_request", "The request body could not be read.")
        if isinstance(body, HttpResponseBase):
            return body
        if isinstance(body, bytes):
            ctx.bytes_in = len(body)

        target = ctx.target
        url = route.forward_path(target.raw_path)
        if target.query:
            url = f"{url}?{target.query}"
        upstream_headers = self._headers(request, ctx, route)
        if not replayable and not chunked:
            upstream_headers["Content-Length"] = environ["CONTENT_LENGTH"]

        started = time.perf_counter()
        try:
            exchange = forwarding.send(
                upstream,
                request.method,
                url,
                upstream_headers,
                body,
                replayable=replayable,
                chunked=chunked,
                observer=ctx.attempt_observer,
                client_gone=gone_check(environ),
                idempotency_key=route.retry_idempotency_key
                and request.method in KEYED_METHODS
                and bool(environ.get("HTTP_IDEMPOTENCY_KEY")),
                deadline=deadline,
                deadline_header=route.deadline_header,
            )
        except ClientGone as exc:
            elapsed = ctx.timings["upstream"] = time.perf_counter() - started
            metrics.observe_upstream(upstream=upstream.name, seconds=elapsed, retry_reasons=exc.retry_reasons)
            ctx.log.update(
                retries=exc.retries, upstream_ms=round(elapsed * 1000, 3), client_error=str(exc), target=exc.target
            )
            # nginx's 499 "client closed request": for the access log and metrics; the client reads nothing.
            return json_error(request, 499, "client_closed_request", "The client closed its connection.")
        except UpstreamFailed as exc:
            elapsed = ctx.timings["upstream"] = time.perf_counter() - started
            metrics.observe_upstream(upstream=upstream.name, seconds=elapsed, retry_reasons=exc.retry_reasons)
            ctx.log.update(
                retries=exc.retries, upstream_ms=round(elapsed * 1000, 3), upstream_error=str(exc), target=exc.target
            )
            if exc.timeout:
                return json_error(
                    request, 504, "upstream_timeout", "The upstream did not answer in time.", upstream=upstream.name
                )
            return json_error(
                request, 502, "upstream_unavailable", "The upstream could not be reached.", upstream=upstream.name
            )
        except BodyTooLarge:
            return _too_large(request, route.max_body_bytes)
        except ClientBodyTimeout as exc:
            return _body_timeout(request, ctx, exc)
        except ClientBodyError as exc:
            ctx.log.update(client_error=str(exc))
            return json_error(request, 400, "bad_request", "The request body could not be read.")

        elapsed = ctx.timings["upstream"] = exchange.upstream_seconds
        metrics.observe_upstream(upstream=upstream.name, seconds=elapsed, retry_reasons=exchange.retry_reasons)
        ctx.log.update(retries=exchange.retries, upstream_ms=round(elapsed * 1000, 3), target=exchange.target.address)
        return _relay(request, ctx, exchange.response, exchange.finish)

    def _headers(self, request: HttpRequest, ctx, route) -> dict[str, str]:
        consumer = ctx.consumer
        return headers.upstream_request_headers(
            request.environ,
            drop=route.drop_keys,
            host_header=route.upstream.host_header,
            client_ip=ctx.client_ip,
            peer_trusted=ctx.peer_trusted,
            scheme=request.environ.get("wsgi.url_scheme", "http"),
            request_id=ctx.id,
            via=self.via,
            prefix=route.prefix if route.strip_prefix and route.depth else None,
            consumer=(self.consumer_header, consumer.name) if consumer is not None else None,
        )

    def _upgrade(self, request: HttpRequest, ctx, route, deadline: float | None) -> HttpResponseBase:
        """Send an upgrade request to one target; relay its 101 as an UpgradedResponse, or its refusal."""
        environ = request.environ
        upstream = route.upstream
        if environ.get("SERVER_PROTOCOL") != "HTTP/1.1" or "gunicorn.socket" not in environ:
            return json_error(request, 400, "bad_upgrade", "Upgrades need HTTP/1.1.")
        if environ.get("CONTENT_LENGTH", "0") not in ("", "0") or environ.get("HTTP_TRANSFER_ENCODING"):
            return json_error(request, 400, "bad_upgrade", "An upgrade request cannot carry a body.")
        if not self.upgrade_slots.take():
            metrics.child(metrics.upgrades_refused, route.name).inc()
            return json_error(
                request, 503, "too_many_upgrades", "The gateway holds too many upgraded connections.", retry_after=1
            )
        target = upstream.balancer.pick(time.monotonic())
        ctx.log["target"] = target.address
        url = route.forward_path(ctx.target.raw_path)
        if ctx.target.query:
            url = f"{url}?{ctx.target.query}"
        upstream_headers = self._headers(request, ctx, route)
        # The one exception to the hop-by-hop rule: the handshake's own Connection and Upgrade.
        upstream_headers["Connection"] = "Upgrade"
        upstream_headers["Upgrade"] = environ["HTTP_UPGRADE"]
        allowed = upstream.deadline if deadline is None else min(deadline, upstream.deadline)
        if route.deadline_header is not None:
            upstream_headers[route.deadline_header] = str(int(allowed * 1000))
        conn = upgrade.connect(upstream, target, min(upstream.connect_timeout, allowed))
        observer = ctx.attempt_observer
        started = time.perf_counter()
        token = HEADER_DEADLINE.set(HeaderDeadline(time.monotonic() + allowed))
        try:
            conn.request(request.method, url, headers=upstream_headers, preload_content=False, decode_content=False)
            conn.sock.settimeout(min(upstream.read_timeout, allowed))
            response = conn.getresponse()
        except (HTTPError, OSError, http.client.HTTPException) as error:
            # urllib3 wraps connecting; writing the request and reading the head raise OSErrors and http.client's
            # own exceptions (a refused 101, a head cut off) as they are.
            conn.close()
            self.upgrade_slots.give_back()
            elapsed = ctx.timings["upstream"] = time.perf_counter() - started
            forwarding.attempted(upstream, target, forwarding.reason_of(error), failed=True, now=time.monotonic())
            if observer is not None:
                observer.attempt_finished(status=None, error=error, elapsed=elapsed)
            ctx.log.update(upstream_ms=round(elapsed * 1000, 3), upstream_error=str(error))
            if forwarding.is_timeout(error) or isinstance(error, TimeoutError):
                return json_error(
                    request, 504, "upstream_timeout", "The upstream did not answer in time.", upstream=upstream.name
                )
            return json_error(
                request, 502, "upstream_unavailable", "The upstream could not be reached.", upstream=upstream.name
            )
        finally:
            HEADER_DEADLINE.reset(token)
        elapsed = ctx.timings["upstream"] = time.perf_counter() - started
        status = response.status
        forwarding.attempted(
            upstream, target, status, failed=status in upstream.balancer.policy.statuses, now=time.monotonic()
        )
        if observer is not None:
            observer.attempt_finished(status=status, error=None, elapsed=elapsed)
        metrics.observe_upstream(upstream=upstream.name, seconds=elapsed, retry_reasons=[])
        ctx.log["upstream_ms"] = round(elapsed * 1000, 3)
        switched_to = (response.headers.get("Upgrade") or "").split(",")[0].strip().lower()
        if status != 101:
            self.upgrade_slots.give_back()
            response._connection = conn  # closed with the response: never pooled
            return _relay(request, ctx, response, conn.close)
        if not switched_to or not upgrade.allowed(switched_to, route.upgrade_protocols):
            conn.close()
            self.upgrade_slots.give_back()
            ctx.log["upstream_error"] = f"101 to {switched_to or 'nothing'}, which the client did not ask for"
            return json_error(
                request, 502, "upstream_unavailable", "The upstream switched to a protocol nobody asked for."
            )
        try:
            headers.check_field("Upgrade", response.headers["Upgrade"])
            lines = headers.client_response_headers(response.headers)
        except headers.InvalidUpstreamHeader as error:
            conn.close()
            self.upgrade_slots.give_back()
            ctx.log["upstream_error"] = str(error)
            return json_error(
                request, 502, "upstream_unavailable", "The upstream sent a response header that is not valid HTTP."
            )
        tunnel = upgrade.Tunnel(self.upgrade_idle)
        relayed = upgrade.UpgradedResponse(
            reason=headers.relayable_reason(response.reason) or "Switching Protocols",
            ctx=ctx,
            conn=conn,
            leftover=upgrade.buffered(response._fp.fp, conn.sock),
            tunnel=tunnel,
            slots=self.upgrade_slots,
        )
        relayed.upstream_headers = [("Connection", "Upgrade"), ("Upgrade", response.headers["Upgrade"]), *lines]
        ctx.body = tunnel
        return relayed

    def _request_body(self, request: HttpRequest, ctx, limit: int):
        """(body, replayable, chunked) for urllib3, or an error response for a body we will not forward."""
        environ = request.environ
        coding = environ.get("HTTP_TRANSFER_ENCODING")
        if coding is not None and [c.strip().lower() for c in coding.split(",") if c.strip()] != ["chunked"]:
            # The server takes the chunked framing off and nothing else: a body in any other coding (gzip, ...)
            # would reach the upstream as if it were plain. nginx answers 501 as well.
            ctx.log["client_error"] = f"unsupported Transfer-Encoding {coding!r}"
            return (
                json_error(request, 501, "not_implemented", "Only the chunked transfer coding is supported."),
                False,
                False,
            )
        length_header = environ.get("CONTENT_LENGTH")
        if length_header:
            stream = self._timed_input(environ)
            try:
                length = int(length_header)
            except ValueError:
                length = -1
            if length < 0:
                return json_error(request, 400, "bad_request", "Content-Length is not a valid length."), False, False
            if limit and length > limit:
                return _too_large(request, limit), False, False
            if length <= self.retry_buffer:
                data = _read_exactly(stream, length)
                if data is None:
                    return json_error(request, 400, "bad_request", "The request body ended early."), False, False
                return data, True, False
            return _stream_fixed(ctx, stream, length), False, False
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            stream = self._timed_input(environ)
            head = _read(stream, self.retry_buffer + 1)
            if limit and len(head) > limit:
                return _too_large(request, limit), False, False
            if len(head) <= self.retry_buffer:
                return head, True, False
            return _stream_chunked(ctx, stream, head, limit), False, True
        return None, True, False

    def _timed_input(self, environ: dict) -> TimedInput:
        return TimedInput(environ, idle=self.body_timeout, min_rate=self.body_min_rate)


def _client_deadline(value: str | None) -> float | None:
    """A client's own deadline, in the route's deadline header (milliseconds); None when absent or not a number."""
    if value and value.isascii() and value.isdigit() and len(value) <= 10:
        return int(value) / 1000
    return None


def _body_timeout(request: HttpRequest, ctx, exc: ClientBodyTimeout) -> HttpResponse:
    ctx.log.update(client_error=str(exc))
    return json_error(request, 408, "request_timeout", "The request body did not arrive in time.")


def _too_large(request: HttpRequest, limit: int) -> HttpResponse:
    return json_error(
        request, 413, "body_too_large", f"The request body is larger than this route accepts ({limit} bytes)."
    )


def _read(stream, size: int) -> bytes:
    """Read from the client's body. Whatever fails here is the client's doing (a reset, broken chunking) and
    must never count against the upstream: it is raised as ClientBodyError, which urllib3 passes through."""
    try:
        return stream.read(size)
    except ClientBodyTimeout:
        raise
    except Exception as exc:  # gunicorn raises OSErrors and its own parse errors here; none may pass as-is
        raise ClientBodyError(f"reading the request body failed ({type(exc).__name__})") from exc


def _read_exactly(stream, length: int) -> bytes | None:
    if length == 0:
        return b""
    parts, remaining = [], length
    while remaining:
        data = _read(stream, min(remaining, CHUNK))
        if not data:
            return None
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts)


def _stream_fixed(ctx, stream, length: int):
    remaining = length
    while remaining:
        data = _read(stream, min(remaining, CHUNK))
        if not data:
            raise ClientBodyError("the client closed the request body early")
        remaining -= len(data)
        ctx.bytes_in += len(data)
        yield data


def _stream_chunked(ctx, stream, head: bytes, limit: int):
    ctx.bytes_in += len(head)
    yield head
    while True:
        data = _read(stream, CHUNK)
        if not data:
            return
        ctx.bytes_in += len(data)
        if limit and ctx.bytes_in > limit:
            raise BodyTooLarge(f"the request body exceeded {limit} bytes")
        yield data


def _relay(request: HttpRequest, ctx, upstream_response, on_close) -> HttpResponseBase:
    """The upstream's answer as the client's response; `on_close` runs once the upstream response is done with."""
    status = upstream_response.status
    try:
        lines = headers.client_response_headers(upstream_response.headers)
    except headers.InvalidUpstreamHeader as error:
        upstream_response.close()
        upstream_response.release_conn()
        on_close()
        ctx.log["upstream_error"] = str(error)
        return json_error(
            request,
            502,
            "upstream_unavailable",
            "The upstream sent a response header that is not valid HTTP.",
            upstream=ctx.route.upstream.name,
        )
    reason = headers.relayable_reason(upstream_response.reason)
    length = upstream_response.length_remaining
    no_body = request.method == "HEAD" or status in _NO_BODY_STATUSES
    whole = no_body or (length is not None and length <= SMALL_RESPONSE)
    body = None if whole else UpstreamBody(upstream_response, on_close)
    try:
        if body is not None:
            body.start()
        elif no_body:
            content = b""
        else:
            content = upstream_response.read(decode_content=False)
    except (HTTPError, OSError) as error:
        upstream_response.close()
        upstream_response.release_conn()
        on_close()
        logger.warning("upstream response broke off", exc_info=True)
        if isinstance(error, ReadTimeoutError):
            return json_error(
                request,
                504,
                "upstream_timeout",
                "The upstream did not send its response body in time.",
                upstream=ctx.route.upstream.name,
            )
        return json_error(
            request,
            502,
            "upstream_unavailable",
            "The upstream broke off its response.",
            upstream=ctx.route.upstream.name,
        )
    if body is None:
        upstream_response.release_conn()
        on_close()
        response: HttpResponseBase = UpstreamResponse(content, status=status, reason=reason)
    else:
        response = UpstreamStreamingResponse(body, status=status, reason=reason)
        ctx.body = body
    del response.headers["Content-Type"]
    response.upstream_headers = lines
    return response
