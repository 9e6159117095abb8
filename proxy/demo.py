"""The demo upstream the gateway serves itself under /_demo/, so a new user can try every feature at once.

Served only when GATEWAY_DEMO is on (the default with DEBUG). The `demo` route (/demo/) forwards to it.

- /_demo/<anything>          echo: method, path, query, headers and body size, as JSON
- /_demo/delay/<seconds>     answer after a delay (at most 30 s)
- /_demo/status/<code>       answer with that status
- POST /_demo/simulate-failure, POST /_demo/simulate-recovery
                             switch every demo answer to 503 and back (shared by all workers via Redis)
"""

from __future__ import annotations

import json
import time

from django.http import HttpRequest, HttpResponse
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from redis.exceptions import RedisError

from gateway_project import store

MAX_DELAY = 30.0
FAILURE_TTL = 3600


def _failure_key() -> str:
    return store.key("demo", "failing")


def _failing() -> bool | None:
    """Whether the failure switch is on; None when Redis cannot say within the page budget."""
    try:
        return bool(store.page_client().exists(_failure_key()))
    except RedisError:
        return None


def _json(body: dict, status: int = 200) -> HttpResponse:
    return HttpResponse(json.dumps(body, indent=2) + "\n", status=status, content_type="application/json")


def _echo(request: HttpRequest, status: int = 200, **extra) -> HttpResponse:
    failing = _failing()
    if failing:
        return _json({"error": "simulated failure", "hint": "POST /_demo/simulate-recovery"}, status=503)
    if failing is None:
        extra["failure_switch"] = "unknown: Redis is unavailable, so the demo answers as if it were off"
    body = request.body
    headers = {k: v for k, v in request.headers.items() if k.lower() != "cookie"}
    return _json(
        {
            "service": "demo",
            "method": request.method,
            "path": request.path,
            "query": request.META.get("QUERY_STRING", ""),
            "headers": headers,
            "body_bytes": len(body),
            **extra,
        },
        status=status,
    )


@csrf_exempt
def echo(request: HttpRequest, rest: str = "") -> HttpResponse:
    return _echo(request)


@csrf_exempt
def delay(request: HttpRequest, seconds: str) -> HttpResponse:
    wait = min(float(seconds), MAX_DELAY)
    time.sleep(wait)
    return _echo(request, delayed_seconds=wait)


@csrf_exempt
def status(request: HttpRequest, code: int) -> HttpResponse:
    if not 200 <= code <= 599:
        return _json({"error": "status must be between 200 and 599"}, status=400)
    return _echo(request, status=code)


@csrf_exempt
@require_POST
def simulate_failure(request: HttpRequest) -> HttpResponse:
    try:
        store.page_client().set(_failure_key(), 1, ex=FAILURE_TTL)
    except RedisError as exc:
        return _redis_unavailable(exc)
    return _json({"failing": True, "note": f"every /_demo/ answer is 503 for up to {FAILURE_TTL} s"})


@csrf_exempt
@require_POST
def simulate_recovery(request: HttpRequest) -> HttpResponse:
    try:
        store.page_client().delete(_failure_key())
    except RedisError as exc:
        return _redis_unavailable(exc)
    return _json({"failing": False})


def _redis_unavailable(exc: RedisError) -> HttpResponse:
    message = f"Redis is unavailable ({type(exc).__name__}); the failure switch did not change."
    return _json({"error": "redis_unavailable", "message": message}, status=503)


urlpatterns = [
    path("simulate-failure", simulate_failure, name="demo-simulate-failure"),
    path("simulate-recovery", simulate_recovery, name="demo-simulate-recovery"),
    re_path(r"^delay/(?P<seconds>[0-9]+(?:\.[0-9]+)?)/?$", delay, name="demo-delay"),
    path("status/<int:code>", status, name="demo-status"),
    re_path(r"^(?P<rest>.*)$", echo, name="demo-echo"),
]
