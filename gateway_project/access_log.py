"""The access log: one line per request, written when the response is closed (after the last byte sent)."""

from __future__ import annotations

import time

from gateway_project.context import RequestContext
from gateway_project.logging import access_logger

_MAX_LOGGED_PATH = 2048


class AccessLog:
    def __init__(self, *, log_query: bool) -> None:
        self.log_query = log_query
        self.logger = access_logger()

    def write(self, ctx: RequestContext, request, status: int, sent: int) -> None:
        path = request.path
        query = request.META.get("QUERY_STRING")
        if self.log_query and query:
            path = f"{path}?{query}"
        route = ctx.route
        self.logger.info(
            "request",
            method=request.method,
            path=path[:_MAX_LOGGED_PATH],
            status=status,
            duration_ms=round((time.perf_counter() - ctx.started) * 1000, 3),
            route=route.name if route is not None else None,
            upstream=route.upstream.name if route is not None else None,
            client_ip=ctx.client_ip,
            bytes_in=ctx.bytes_in,
            bytes_out=sent,
            **ctx.log,
        )
