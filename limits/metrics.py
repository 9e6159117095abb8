"""The rate limiter's Prometheus metrics, fed by the limiter's listener (registered in apps.py)."""

from __future__ import annotations

from prometheus_client import Counter

from gateway_project import metrics

ratelimit_decisions = Counter(
    "gateway_ratelimit_decisions",
    "Rate-limit decisions by policy: allowed, rejected, shadow_rejected, fallback (Redis unavailable).",
    ["policy", "decision"],
)


def on_outcome(outcome) -> None:
    for result in outcome.results:
        metrics.child(ratelimit_decisions, result.policy.name, result.decision).inc()
    if outcome.redis_error:
        metrics.redis_error("ratelimit")
