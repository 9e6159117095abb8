"""The proxy view: forward the matched request to its upstream and stream the answer back.

Bodies stream in both directions in 64 KiB pieces. A request body small enough to replay
(GATEWAY_RETRY_BUFFER_BYTES) is read first so that retries can resend it; a larger one streams straight
through and only a refused connection is retried. A response with a short, known length is read whole and
its connection returned to the pool at once; anything else streams.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from urllib3.exceptions import HTTPError

from gateway_project import metrics
from gateway_project.responses import json_error
from proxy import forwarding, headers
from proxy.client_body import ClientBodyTimeout, TimedInput
from proxy.disconnect import gone_check
from proxy.forwarding import BodyTooLarge, ClientBodyError, ClientGone, UpstreamFailed

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
    """Iterates the upstream body without decoding it; returns or closes the connection when done."""

    __slots__ = ("complete", "response", "sent")

    def __init__(self, response) -> None:
        self.response = response
        self.complete = False
        self.sent = 0

    def __iter__(self):
        read1 = self.response.read1
        while True:
            chunk = read1(CHUNK, decode_content=False)
            if not chunk:
                break
            self.sent += len(chunk)
            yield chunk
        self.complete = True

    def close(self) -> None:
        response = self.response
        if not self.complete:
            # The client went away or the upstream broke off: this connection cannot be reused.
            response.close()
        response.release_conn()


class ProxyView:
    """The end of the gateway pipeline, built once per worker with its settings."""

    def __init__(
        self, *, retry_buffer: int, via: str, consumer_header: str, body_timeout: float, body_min_rate: float
    ) -> None:
        self.retry_buffer = retry_buffer
        self.via = via
        self.consumer_header = consumer_header
        self.body_timeout = body_timeout
        self.body_min_rate = body_min_rate

    @classmethod
    def from_settings(cls) -> ProxyView:
        return cls(
            retry_buffer=settings.GATEWAY_RETRY_BUFFER_BYTES,
            via=settings.GATEWAY_VIA,
            consumer_header=settings.GATEWAY_CONSUMER_HEADER,
            body_timeout=settings.GATEWAY_CLIENT_BODY_TIMEOUT,
            body_min_rate=settings.GATEWAY_CLIENT_BODY_MIN_RATE,
        )

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        ctx = request.gateway
        route = ctx.route
        upstream = route.upstream
        if not upstream.enabled:
            return json_error(request, 503, "upstream_disabled", "This upstream is disabled.", upstream=upstream.name)

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
        consumer = ctx.consumer
        upstream_headers = headers.upstream_request_headers(
            request.environ,
            drop=route.drop_keys,
            host_header=upstream.host_header,
            client_ip=ctx.client_ip,
            peer_trusted=ctx.peer_trusted,
            scheme=request.environ.get("wsgi.url_scheme", "http"),
            request_id=ctx.id,
            via=self.via,
            prefix=route.prefix if route.strip_prefix and route.depth else None,
            consumer=(self.consumer_header, consumer.name) if consumer is not None else None,
        )
        if not replayable and not chunked:
            upstream_headers["Content-Length"] = request.environ["CONTENT_LENGTH"]

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
                client_gone=gone_check(request.environ),
            )
        except ClientGone as exc:
            elapsed = ctx.timings["upstream"] = time.perf_counter() - started
            metrics.observe_upstream(upstream=upstream.name, seconds=elapsed, retry_reasons=exc.retry_reasons)
            ctx.log.update(retries=exc.retries, upstream_ms=round(elapsed * 1000, 3), client_error=str(exc))
            # nginx's 499 "client closed request": for the access log and metrics; the client reads nothing.
            return json_error(request, 499, "client_closed_request", "The client closed its connection.")
        except UpstreamFailed as exc:
            elapsed = ctx.timings["upstream"] = time.perf_counter() - started
            metrics.observe_upstream(upstream=upstream.name, seconds=elapsed, retry_reasons=exc.retry_reasons)
            ctx.log.update(retries=exc.retries, upstream_ms=round(elapsed * 1000, 3), upstream_error=str(exc))
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
        ctx.log.update(retries=exchange.retries, upstream_ms=round(elapsed * 1000, 3))
        return _relay(request, ctx, exchange.response)

    def _request_body(self, request: HttpRequest, ctx, limit: int):
        """(body, replayable, chunked) for urllib3, or an error response for a body we will not forward."""
        environ = request.environ
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


def _relay(request: HttpRequest, ctx, upstream_response) -> HttpResponseBase:
    status = upstream_response.status
    lines = headers.client_response_headers(upstream_response.headers)
    length = upstream_response.length_remaining
    if request.method == "HEAD" or status in _NO_BODY_STATUSES or (length is not None and length <= SMALL_RESPONSE):
        try:
            content = (
                b""
                if request.method == "HEAD" or status in _NO_BODY_STATUSES
                else upstream_response.read(decode_content=False)
            )
        except (HTTPError, OSError):
            upstream_response.close()
            upstream_response.release_conn()
            logger.warning("upstream response broke off", exc_info=True)
            return json_error(
                request,
                502,
                "upstream_unavailable",
                "The upstream broke off its response.",
                upstream=ctx.route.upstream.name,
            )
        upstream_response.release_conn()
        response: HttpResponseBase = UpstreamResponse(content, status=status, reason=upstream_response.reason)
    else:
        body = UpstreamBody(upstream_response)
        response = UpstreamStreamingResponse(body, status=status, reason=upstream_response.reason)
        ctx.body = body
    del response.headers["Content-Type"]
    response.upstream_headers = lines
    return response
