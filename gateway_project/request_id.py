"""The outermost middleware: request ID, client identity, log context, and the access log line.

A client's X-Request-ID is kept when it is short and safe (1-128 of [A-Za-z0-9._-]); otherwise the gateway
makes one. It goes upstream, onto every response (errors included) and into every log line of the request.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from django.http import HttpRequest, HttpResponseBase

from proxy import client_ip

_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

access_log = structlog.get_logger("gateway.access")


class RequestIdMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

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
        request.log = {}
        request.timings = {}
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)

        response = self.get_response(request)

        response["X-Request-ID"] = request_id
        response._resource_closers.append(lambda: _log_access(request, response, started))
        return response


def _log_access(request: HttpRequest, response: HttpResponseBase, started: float) -> None:
    route = request.gateway_route
    access_log.info(
        "request",
        method=request.method,
        path=request.path,
        status=response.status_code,
        duration_ms=round((time.perf_counter() - started) * 1000, 3),
        route=route.name if route is not None else None,
        upstream=route.upstream.name if route is not None else None,
        client_ip=request.client_ip,
        **request.log,
    )
