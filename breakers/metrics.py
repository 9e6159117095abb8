"""The breakers' Prometheus metrics, fed by the breaker events (subscribed in apps.py)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from breakers.events import DecidedLocally, Event, RedisFailed, Rejected, StateSeen, Transitioned
from breakers.policy import State
from gateway_project import metrics

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


def on_event(event: Event) -> None:
    match event:
        case StateSeen(upstream, current):
            for state in State:
                metrics.child(breaker_state, upstream, state).set(1 if state == current else 0)
        case Transitioned(upstream, from_state, to_state):
            metrics.child(breaker_transitions, upstream, from_state or "unknown", to_state).inc()
        case Rejected(upstream):
            metrics.child(breaker_rejections, upstream).inc()
        case DecidedLocally(upstream):
            metrics.child(breaker_fallbacks, upstream).inc()
        case RedisFailed():
            metrics.redis_error("breaker")
