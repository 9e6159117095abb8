"""WSGI entry point for gunicorn (see gunicorn.conf.py).

Proxied requests take a shorter path through Django's handler (`GatewayHandler`). A response that takes the
client's connection over (an upgraded connection: proxy/upgrade.py) is not handed to gunicorn to write: its
`take_over(environ)` writes to the socket itself, and gunicorn's async workers get their ALREADY_HANDLED marker,
on which they write nothing and go on to the connection's end.
"""

import contextlib
import os
from functools import partial

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

import django
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler, get_path_info
from gunicorn.workers.base_async import ALREADY_HANDLED

from gateway_project.http import under


def _close_proxied(response) -> None:
    """HttpResponseBase.close without the request_finished signal, whose receivers close the request's
    database connections: a proxied request opened none."""
    for closer in response._resource_closers:
        with contextlib.suppress(Exception):  # as in Django's close(): one closer's failure stops no other
            closer()
    response._resource_closers.clear()
    response.closed = True


def _needs_length(response) -> bool:
    """Whether a response is the gateway's own whole answer (a 404, 429 or 503 of its own, say) with no
    Content-Length yet. Without one, gunicorn frames it chunked: the body and the last chunk in two writes, about
    6 % more CPU per answer. The upstream's answers keep their own framing, and a 204 or 304 never has a body to
    count."""
    return (
        not response.streaming
        and not hasattr(response, "upstream_headers")
        and response.status_code not in (204, 304)
        and response.status_code >= 200
        and "Content-Length" not in response.headers
    )


class GatewayHandler(WSGIHandler):
    """Django's WSGI handler, with a shorter path for requests the gateway proxies.

    Those run only the gateway's own middleware (GatewayMiddleware, then RouteMiddleware, which hands them to the
    pipeline and never to the rest of MIDDLEWARE) and touch no database, so they skip what Django does around a
    request for its views: the request_started and request_finished signals (whose receivers reset and close
    the database connections), the URLconf and script prefix (nothing on the path reverses a URL), and the
    warning Django logs for each 4xx and 5xx (the access log has every answer). That was about 8 % of a worker's
    time per proxied request. The gateway's own paths (admin, API, health, metrics, demo) go through Django's
    handler unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reserved = settings.GATEWAY_RESERVED_PREFIXES

    def _own(self, path: str) -> bool:
        return under(path, self.reserved) is not None

    def __call__(self, environ, start_response):
        # Decided on the environ as the server gave it: making a request object first would rewrite PATH_INFO
        # to the decoded path, which Django's handler then cannot decode again (a path outside latin-1 was a 500).
        if self._own(get_path_info(environ)):
            return super().__call__(environ, start_response)
        request = self.request_class(environ)
        response = self._middleware_chain(request)
        response.close = partial(_close_proxied, response)
        if _needs_length(response):
            response.headers["Content-Length"] = str(len(response.content))
        try:
            start_response(
                f"{response.status_code} {response.reason_phrase}",
                [*response.items(), *(("Set-Cookie", c.output(header="")) for c in response.cookies.values())],
            )
        except Exception:
            # The server refused the response (the view checks what it relays, so this is a bug): free what it
            # holds (an upstream connection, an upgrade's slot) and write its access line before the server's 500.
            response.close()
            raise
        return response


django.setup(set_prefix=False)
django_application = GatewayHandler()


def application(environ, start_response):
    response = django_application(environ, start_response)
    take_over = getattr(response, "take_over", None)
    if take_over is None:
        if environ["REQUEST_METHOD"] == "HEAD" and not getattr(response, "streaming", True):
            # Its headers (the GET's Content-Length among them) have gone to gunicorn; its body must not go out,
            # and handed to gunicorn it would be dropped with a warning logged per response. The access line
            # and metrics then count no bytes sent, as none are.
            response.content = b""
        return response
    take_over(environ)
    return ALREADY_HANDLED
