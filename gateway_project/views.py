"""The gateway's own endpoints: liveness, readiness, and JSON error pages."""

from __future__ import annotations

import hmac
import json

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST

from gateway_project import metrics, runtime, store
from gateway_project.blocking import Stalled, bounded
from gateway_project.client_ip import in_networks
from gateway_project.responses import json_error


def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness: the process answers. No I/O, so a slow dependency never gets a worker restarted."""
    return HttpResponse(b'{"status":"ok"}', content_type="application/json")


def readyz(request: HttpRequest) -> HttpResponse:
    """Readiness: what serving needs, checked; 503 names what failed (see readiness())."""
    checks = readiness()
    ready = all(not value.startswith("error") for value in checks.values())
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    return HttpResponse(json.dumps(body), status=200 if ready else 503, content_type="application/json")


def readiness() -> dict[str, str]:
    """Each dependency's check: 'ok' (or the revision served), or 'error: ...' naming what failed.

    - database: it answers (within GATEWAY_DB_TIMEOUT), and says which configuration is current;
    - redis: what the hot path needs, through this worker's own pipes (a script runs on every node it writes
      to; on a cluster, every slot has a primary), not only a PING;
    - config: loaded, and not older than the database's for longer than a lost message can explain.
    """
    checks: dict[str, str] = {}
    change = None
    try:
        change = bounded(settings.GATEWAY_DB_TIMEOUT, runtime.db_change)
        checks["database"] = "ok"
    except (DatabaseError, Stalled) as exc:  # the message says which
        checks["database"] = f"error: {type(exc).__name__}"
        connection.close()
    checks["redis"] = store.readiness()
    if change is not None:
        checks["config"] = runtime.freshness(*change)
    else:
        snapshot = runtime.current()
        checks["config"] = (
            runtime.describe(snapshot.revision, snapshot.token) if snapshot.loaded_at else "error: not loaded"
        )
    return checks


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition. Not public: loopback (GATEWAY_METRICS_ALLOWED_NETWORKS) or a bearer token."""
    token = settings.GATEWAY_METRICS_TOKEN
    presented = request.META.get("HTTP_AUTHORIZATION", "")
    allowed = in_networks(request.gateway.client_ip, settings.GATEWAY_METRICS_ALLOWED_NETWORKS) or (
        token and hmac.compare_digest(presented.encode(), f"Bearer {token}".encode())
    )
    if not allowed:
        response = json_error(request, 403, "forbidden", "Metrics are not available to this client.")
        if token:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(metrics.render(), content_type=CONTENT_TYPE_LATEST)


def not_found(request: HttpRequest, exception=None) -> HttpResponse:
    return json_error(request, 404, "not_found", "Nothing is served at this path.")


def server_error(request: HttpRequest) -> HttpResponse:
    return json_error(request, 500, "internal_error", "The gateway failed to handle this request.")
