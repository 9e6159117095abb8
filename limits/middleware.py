"""Gateway pipeline middleware of the limits app: who the consumer is, and whether the request may pass.

Both run only for proxied requests (GATEWAY_PIPELINE), after proxy.middleware.RouteMiddleware matched a route.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase

from gateway_project.http import environ_key
from gateway_project.responses import json_error
from limits import limiter
from limits.limiter import PolicyResult


class ApiKeyMiddleware:
    """Identifies the consumer from its API key; answers 401 on routes that require one and got none valid."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.header = settings.GATEWAY_API_KEY_HEADER
        self.environ_key = environ_key(self.header)

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        ctx = request.gateway
        presented = request.META.get(self.environ_key)
        consumer = ctx.snapshot["limits"].consumer_for_key(presented) if presented else None
        ctx.consumer = consumer
        if consumer is None and ctx.route.require_api_key:
            message = f"This route needs a valid API key in the {self.header} header."
            response = json_error(request, 401, "unauthorized" if presented else "api_key_required", message)
            response["WWW-Authenticate"] = f'ApiKey header="{self.header}"'
            ctx.log["auth"] = "invalid_key" if presented else "missing_key"
            return response
        if consumer is not None:
            ctx.log["consumer"] = consumer.name
        return self.get_response(request)


class RateLimitMiddleware:
    """Checks every applicable policy in one Redis call; 429 when one rejects, RateLimit headers otherwise."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        limiter.configure(
            ipv4_prefix=settings.GATEWAY_RATELIMIT_IPV4_PREFIX, ipv6_prefix=settings.GATEWAY_RATELIMIT_IPV6_PREFIX
        )

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        ctx = request.gateway
        route, consumer = ctx.route, ctx.consumer
        policies = ctx.snapshot["limits"].policies_for(route.id, consumer)
        if not policies:
            return self.get_response(request)
        started = time.perf_counter()
        outcome = limiter.check(
            policies,
            client_ip=ctx.client_ip,
            consumer=consumer,
            route_id=route.id,
            environ=request.META,
            dry_run=ctx.dry_run,
        )
        ctx.timings["ratelimit"] = time.perf_counter() - started
        ctx.ratelimit = outcome
        ctx.log["ratelimit"] = outcome.summary()
        if outcome.rejected is not None:
            return self._rejected(request, outcome.rejected)
        if outcome.unavailable is not None:
            response = json_error(
                request,
                503,
                "ratelimit_unavailable",
                "The rate limiter is unavailable and this route fails closed; try again shortly.",
                policy=outcome.unavailable.policy.name,
            )
            response["Retry-After"] = "1"
            return response
        response = self.get_response(request)
        result = outcome.most_restrictive()
        if result is not None:
            _set_headers(response, result)
        return response

    def _rejected(self, request: HttpRequest, result: PolicyResult) -> HttpResponseBase:
        wait = max(1, result.retry_after)
        response = json_error(
            request,
            429,
            "rate_limited",
            f"Too many requests: the {result.policy.name} limit is {result.policy.limit} per {result.policy.window} s.",
            policy=result.policy.name,
            retry_after=wait,
        )
        response["Retry-After"] = str(wait)
        _set_headers(response, result)
        return response


def _set_headers(response: HttpResponseBase, result: PolicyResult) -> None:
    policy = result.policy
    reset = max(result.reset, result.retry_after, 0)
    # draft-ietf-httpapi-ratelimit-headers: structured-field lists, the policy named by a string.
    response["RateLimit-Policy"] = policy.policy_field
    response["RateLimit"] = f'"{policy.name}";r={result.remaining};t={reset}'
    if policy.legacy_headers:
        response["X-RateLimit-Limit"] = str(policy.limit)
        response["X-RateLimit-Remaining"] = str(result.remaining)
        response["X-RateLimit-Reset"] = str(int(time.time()) + reset)
