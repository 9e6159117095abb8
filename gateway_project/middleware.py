"""The outermost middleware: it creates the request's context (ID, client identity, log binding) and, once
the response is built, adds the gateway's own headers; when the response is closed it writes the access line
and the request metrics, so they hold the full duration and the bytes sent."""

from __future__ import annotations

import time

import structlog
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase

from gateway_project import client_ip, metrics, status
from gateway_project.access_log import AccessLog
from gateway_project.context import RequestContext
from gateway_project.request_id import request_id

_PHASES = ("ratelimit", "breaker", "upstream")


class GatewayMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.server_timing = settings.GATEWAY_SERVER_TIMING
        self.access_log = AccessLog(log_query=settings.GATEWAY_LOG_QUERY)
        self.trusted = settings.GATEWAY_TRUSTED_PROXIES
        if settings.GATEWAY_CONFIG_WATCH and not settings.GATEWAY_PROMETHEUS_URL:
            # A gunicorn worker (not a command or an in-process test) whose status page reads this instance's
            # figures: keep them sampled. With a Prometheus, the page's history comes from there.
            status.start(settings.GATEWAY_RUN_DIR)

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        environ = request.META
        address, trusted, scheme = client_ip.identify(environ, self.trusted)
        if scheme != environ.get("wsgi.url_scheme"):
            environ["wsgi.url_scheme"] = scheme
        ctx = request.gateway = RequestContext(request_id(environ), address, trusted, started)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=ctx.id)

        response = self.get_response(request)

        response["X-Request-ID"] = ctx.id
        headers_after = time.perf_counter() - started
        if self.server_timing:
            response["Server-Timing"] = _server_timing(ctx.timings, headers_after)
        response._resource_closers.append(lambda: self._finish(ctx, request, response, headers_after))
        return response

    def _finish(self, ctx: RequestContext, request: HttpRequest, response: HttpResponseBase, headers_after: float):
        if ctx.body is not None:
            sent = ctx.body.sent
        elif response.streaming:
            sent = 0
        else:
            sent = len(response.content)
        status = response.status_code
        metrics.observe_request(
            route=ctx.route_label,
            method=request.method,
            status=status,
            seconds=headers_after,
            body_in=ctx.bytes_in,
            body_out=sent,
        )
        error = getattr(response, "gateway_error", None)
        if error is not None:
            metrics.own_error(route=ctx.route_label, status=status, error=error)
        self.access_log.write(ctx, request, status, sent)


def _server_timing(timings: dict[str, float], total: float) -> str:
    phases = [f"{name};dur={timings[name] * 1000:.3f}" for name in _PHASES if name in timings]
    phases.append(f"total;dur={total * 1000:.3f}")
    return ", ".join(phases)
