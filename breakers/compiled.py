"""The breakers' part of the configuration snapshot: each upstream's settings, by upstream id."""

from __future__ import annotations

from breakers.policy import DEFAULT, BreakerSettings, Mode
from gateway_project import runtime
from gateway_project.validation import parse_statuses


def settings_from(config) -> BreakerSettings:
    """Compile a BreakerConfig row (or anything with its fields)."""
    return BreakerSettings(
        mode=Mode(config.mode),
        consecutive_failures=config.consecutive_failures,
        failure_rate=config.failure_rate,
        window_seconds=config.window_seconds,
        minimum_calls=config.minimum_calls,
        slow_call_ms=config.slow_call_ms,
        open_seconds=config.open_seconds,
        half_open_probes=config.half_open_probes,
        failure_statuses=parse_statuses(config.failure_statuses),
    )


class BreakerBook:
    """Every configured breaker's settings; an upstream without a row gets the defaults."""

    __slots__ = ("by_upstream",)

    def __init__(self, by_upstream: dict[int, BreakerSettings] | None = None) -> None:
        self.by_upstream = by_upstream or {}

    def get(self, upstream_id: int) -> BreakerSettings:
        return self.by_upstream.get(upstream_id, DEFAULT)


def load() -> BreakerBook:
    from breakers.models import BreakerConfig

    configs = runtime.in_turns(BreakerConfig.objects.all())
    return BreakerBook({config.upstream_id: settings_from(config) for config in configs})
