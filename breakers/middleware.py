"""Gateway pipeline middleware of the breakers app: an open breaker answers 503 at once."""

from __future__ import annotations

import math
import time

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase

from breakers import gate, sync
from breakers.policy import FORCED_OPEN
from gateway_project.responses import json_error


class BreakerMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response
        gate.configure(
            fallback_for=settings.GATEWAY_BREAKER_FALLBACK_SECONDS, active_for=settings.GATEWAY_BREAKER_ACTIVE_SECONDS
        )
        if settings.GATEWAY_CONFIG_WATCH:
            sync.start()

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        ctx = request.gateway
        upstream = ctx.route.upstream
        started = time.perf_counter()
        decision = gate.check(upstream.id, upstream.name, ctx.snapshot["breakers"].get(upstream.id))
        ctx.timings["breaker"] = time.perf_counter() - started
        if isinstance(decision, gate.Refusal):
            ctx.log["breaker"] = decision.reason
            if decision.reason == FORCED_OPEN:
                # An operator's decision, not the upstream's failing: no time would make a retry succeed.
                return json_error(
                    request,
                    503,
                    "circuit_open",
                    "An operator has taken this upstream out of service (its circuit breaker is forced open); "
                    "the gateway sends it no requests until the breaker is set back to normal.",
                    upstream=upstream.name,
                    reason="forced_open",
                )
            wait = max(1, math.ceil(decision.retry_after))
            response = json_error(
                request,
                503,
                "circuit_open",
                "The upstream is failing; the gateway is not sending it requests for now.",
                upstream=upstream.name,
                reason=decision.reason,
                retry_after=wait,
            )
            response["Retry-After"] = str(wait)
            return response
        ctx.attempt_observer = decision
        ctx.log["breaker"] = decision.state
        try:
            return self.get_response(request)
        finally:
            decision.finish()
