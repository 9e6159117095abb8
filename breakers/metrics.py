"""The breakers' Prometheus metrics, fed by the breaker events (registered in apps.py)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from gateway_project import metrics

_STATES = ("closed", "open", "half_open")

breaker_state = Gauge(
    "gateway_breaker_state",
    "1 for each upstream's current breaker state (closed, open, half_open), 0 for the others.",
    ["upstream", "state"],
    multiprocess_mode="livemostrecent",
)
breaker_transitions = Counter(
    "gateway_breaker_transitions", "Breaker transitions.", ["upstream", "from_state", "to_state"]
)
breaker_rejections = Counter("gateway_breaker_rejections", "Requests refused by an open breaker.", ["upstream"])
breaker_fallbacks = Counter(
    "gateway_breaker_fallbacks", "Breaker decisions taken by a worker alone, Redis being unavailable.", ["upstream"]
)


def on_event(event: str, entry, view, previous: str | None = None) -> None:
    name = entry.name
    if event == "state":
        for state in _STATES:
            metrics.child(breaker_state, name, state).set(1 if view.state == state else 0)
    elif event == "transition":
        metrics.child(breaker_transitions, name, previous or "unknown", view.state).inc()
    elif event == "rejected":
        metrics.child(breaker_rejections, name).inc()
    elif event == "fallback":
        metrics.child(breaker_fallbacks, name).inc()
    elif event == "redis_error":
        metrics.redis_error("breaker")
