"""Route matching: decides, per request, whether the gateway serves it itself or proxies it.

Paths the gateway serves (admin, health, metrics, API, demo) continue down Django's middleware and URLconf.
Every other request is matched against the compiled route table and, when a route matches, handed to the
gateway pipeline: the middleware named in GATEWAY_PIPELINE (rate limits, circuit breaker), then the proxy
view. Django's own middleware (sessions, CSRF, security and clickjacking headers) never touches a proxied
request or its upstream's response.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponseBase
from django.http.request import split_domain_port
from django.utils.module_loading import import_string

from gateway_project import runtime
from gateway_project.client_ip import in_networks
from gateway_project.context import OWN
from gateway_project.http import under
from gateway_project.responses import json_error
from proxy import health
from proxy.paths import BadPath, parse_target
from proxy.routing import MethodNotAllowed
from proxy.views import ProxyView

logger = logging.getLogger(__name__)


def build_pipeline(paths: list[str], endpoint):
    handler = endpoint
    for path in reversed(paths):
        handler = import_string(path)(handler)
    return handler


class AdminSide:
    """Where the admin lives when the operator gives it its own host name (GATEWAY_ADMIN_HOST) and/or listener
    (GATEWAY_ADMIN_LISTEN): the admin answers only where every one given matches, and no route is served where
    any one matches."""

    __slots__ = ("host", "listener")

    def __init__(self, host: str | None, listen: tuple[str, int] | None) -> None:
        self.host = host
        self.listener = None if listen is None else (listen[0], str(listen[1]))

    @classmethod
    def from_settings(cls) -> AdminSide | None:
        host, listen = settings.GATEWAY_ADMIN_HOST, settings.GATEWAY_ADMIN_LISTEN
        return None if host is None and listen is None else cls(host, listen)

    def _matches(self, environ: dict) -> tuple[bool | None, bool | None]:
        host = listener = None
        if self.host is not None:
            # The name as Django reads it: lower case, without port or trailing dot.
            host = split_domain_port(environ.get("HTTP_HOST", ""))[0] == self.host
        if self.listener is not None:
            # gunicorn names the listener that accepted the connection in SERVER_NAME and SERVER_PORT.
            listener = (environ.get("SERVER_NAME"), environ.get("SERVER_PORT")) == self.listener
        return host, listener

    def is_admin(self, environ: dict) -> bool:
        return all(match is not False for match in self._matches(environ))

    def refuses_routes(self, environ: dict) -> bool:
        return any(match is True for match in self._matches(environ))


#: Host as the client sent it -> the name Django validated from it. Bounded: a client sending a new name with
#: each request only costs validating each, as before. Emptied when a setting it depends on changes (tests).
_hostnames: dict[str, str] = {}
_HOSTNAMES_KEPT = 1024


def validated_hostname(request: HttpRequest) -> str | None:
    """The host name a request is for, as Django validates it against ALLOWED_HOSTS (`request.get_host()`): lower
    case, without port or trailing dot ("api.example.com." is that host); None for a name this gateway does not
    serve. Remembered per Host value: validating (two regular expressions and the ALLOWED_HOSTS patterns) cost
    about 2 % of a proxied request, and every request of a client names the same host."""
    raw = request._get_raw_host()
    hostname = _hostnames.get(raw)
    if hostname is not None:
        return hostname
    try:
        hostname = split_domain_port(request.get_host())[0]
    except DisallowedHost:
        return None
    if len(_hostnames) >= _HOSTNAMES_KEPT:
        _hostnames.clear()
    _hostnames[raw] = hostname
    return hostname


@receiver(setting_changed)
def _forget_hostnames(*, setting, **kwargs) -> None:
    if setting in ("ALLOWED_HOSTS", "USE_X_FORWARDED_HOST", "USE_X_FORWARDED_PORT", "DEBUG"):
        _hostnames.clear()


class RouteMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.reserved = settings.GATEWAY_RESERVED_PREFIXES
        self.admin_prefixes = settings.GATEWAY_ADMIN_PREFIXES
        self.admin_networks = settings.GATEWAY_ADMIN_ALLOWED_NETWORKS
        self.admin_side = AdminSide.from_settings()
        self.demo = settings.GATEWAY_DEMO
        self.pipeline = build_pipeline(settings.GATEWAY_PIPELINE, ProxyView.from_settings())
        runtime.start()
        if settings.GATEWAY_CONFIG_WATCH:
            health.start(settings.GATEWAY_RUN_DIR)

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        ctx = request.gateway
        environ = request.META
        if not environ.get("HTTP_HOST") and environ.get("SERVER_PROTOCOL") != "HTTP/1.0" and "RAW_URI" in environ:
            # RFC 9112 §3.2: an HTTP/1.1 request without a Host (or with an empty one, which names no
            # authority for an http URI) is a 400; gunicorn already refuses a repeated Host. (RAW_URI: a
            # request read off a connection by gunicorn, not one built by Django's test client.)
            return json_error(request, 400, "bad_host", "The request needs exactly one Host header.")
        path = request.path_info
        own = under(path, self.reserved)
        if own is not None:
            ctx.route_label = OWN
            if under(path, self.admin_prefixes):
                if self.admin_side is not None and not self.admin_side.is_admin(environ):
                    return json_error(request, 404, "not_found", "Nothing is served at this path.")
                if not in_networks(ctx.client_ip, self.admin_networks):
                    return json_error(request, 403, "forbidden", "The admin is not reachable from this address.")
            if own == "/_demo" and not self.demo:
                return json_error(request, 404, "no_route", "No route matches this request.")
            return self.get_response(request)

        if self.admin_side is not None and self.admin_side.refuses_routes(request.META):
            return json_error(request, 404, "no_route", "No route matches this request.")
        try:
            target = parse_target(request.environ)
        except BadPath as exc:
            return json_error(request, 400, "bad_path", f"The request path cannot be forwarded: {exc}.")
        hostname = validated_hostname(request)
        if hostname is None:
            return json_error(request, 400, "bad_host", "The Host header is not one this gateway serves.")
        ctx.snapshot = snapshot = runtime.current()
        match = snapshot["routes"].match(hostname, target.path, request.method)
        if match is None:
            return json_error(request, 404, "no_route", "No route matches this request.")
        if isinstance(match, MethodNotAllowed):
            response = json_error(request, 405, "method_not_allowed", f"This route accepts {', '.join(match.allowed)}.")
            response["Allow"] = ", ".join(match.allowed)
            return response
        if target.folded is not None and snapshot["routes"].match(hostname, target.folded, request.method) is not match:
            # An upstream that normalizes would read the path of another route (or of none) than the one matched.
            return json_error(
                request, 400, "bad_path", "The request path cannot be forwarded: it normalizes to another route's path."
            )
        ctx.route = match
        ctx.route_label = match.name
        ctx.target = target
        try:
            return self.pipeline(request)
        except Exception:
            logger.exception("unhandled error while proxying")
            return json_error(request, 500, "internal_error", "The gateway failed to handle this request.")
