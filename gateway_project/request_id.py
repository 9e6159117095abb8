"""The outermost middleware: request ID, client identity, log context, Server-Timing, the access log and the
request metrics.

A client's X-Request-ID is kept when it is short and safe (1-128 of [A-Za-z0-9._-]); otherwise the gateway
makes one. It goes upstream, onto every response (errors included) and into every log line of the request.

The access log line and the request metrics are written when the response is closed, after the last byte of
a streamed body, so they hold the full duration and the bytes sent.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase

from gateway_project import client_ip, metrics
from gateway_project.logging import access_logger

_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_MAX_LOGGED_PATH = 2048
_PHASES = ("ratelimit", "breaker", "upstream")


class RequestIdMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.server_timing = settings.GATEWAY_SERVER_TIMING
        self.log_query = settings.GATEWAY_LOG_QUERY
        self.access_log = access_logger()

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        environ = request.META
        request_id = environ.get("HTTP_X_REQUEST_ID")
        if not request_id or not _SAFE_ID.fullmatch(request_id):
            request_id = uuid.uuid4().hex
        request.id = request_id
        address, trusted, scheme = client_ip.identify(environ)
        request.client_ip = address
        request.peer_trusted = trusted
        if scheme != environ.get("wsgi.url_scheme"):
            environ["wsgi.url_scheme"] = scheme
        request.gateway_route = None
        request.route_label = metrics.NO_ROUTE
        request.log = {}
        request.timings = {}
        request.bytes_in = 0
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)

        response = self.get_response(request)

        response["X-Request-ID"] = request_id
        headers_after = time.perf_counter() - started
        if self.server_timing:
            timings = request.timings
            phases = [f"{name};dur={timings[name] * 1000:.3f}" for name in _PHASES if name in timings]
            phases.append(f"total;dur={headers_after * 1000:.3f}")
            response["Server-Timing"] = ", ".join(phases)
        response._resource_closers.append(lambda: self._finish(request, response, started, headers_after))
        return response

    def _finish(self, request: HttpRequest, response: HttpResponseBase, started: float, headers_after: float) -> None:
        body = getattr(response, "gateway_body", None)
        if body is not None:
            sent = body.sent
        elif response.streaming:
            sent = 0
        else:
            sent = len(response.content)
        route = request.gateway_route
        status = response.status_code
        metrics.observe_request(
            route=request.route_label,
            method=request.method,
            status=status,
            seconds=headers_after,
            body_in=request.bytes_in,
            body_out=sent,
        )
        path = request.path
        if self.log_query and request.META.get("QUERY_STRING"):
            path = f"{path}?{request.META['QUERY_STRING']}"
        self.access_log.info(
            "request",
            method=request.method,
            path=path[:_MAX_LOGGED_PATH],
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            route=route.name if route is not None else None,
            upstream=route.upstream.name if route is not None else None,
            client_ip=request.client_ip,
            bytes_in=request.bytes_in,
            bytes_out=sent,
            **request.log,
        )
