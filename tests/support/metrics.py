"""Reading /metrics in tests."""

from __future__ import annotations

#: Families that count Redis timeouts, which a loaded machine produces whatever the clients send (their labels
#: are fixed names): left out when a test checks that client input adds no series.
DEPENDENCY_HEALTH = ("gateway_redis_errors", "gateway_breaker_fallbacks")


def client_driven(series) -> set:
    """The (name, labels) series a client's requests could add to, without DEPENDENCY_HEALTH's."""
    return {(name, labels) for name, labels in series if not name.startswith(DEPENDENCY_HEALTH)}
