"""A breaker's settings as the hot path sees them: one immutable object per upstream, built at config load."""

from __future__ import annotations

from dataclasses import dataclass

NORMAL, FORCED_OPEN, DISABLED, SHADOW = "normal", "forced_open", "disabled", "shadow"
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
MODES = (NORMAL, FORCED_OPEN, DISABLED, SHADOW)


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    mode: str = NORMAL
    consecutive_failures: int = 5  # 0: off
    failure_rate: int = 50  # percent; 0: off
    window_seconds: int = 60
    minimum_calls: int = 20
    slow_call_ms: int = 0  # 0: off
    open_seconds: float = 30.0
    half_open_probes: int = 1
    failure_statuses: frozenset[int] = frozenset({502, 503, 504})

    def script_args(self) -> list[str]:
        """The settings as the Lua scripts take them (see lua/record.lua)."""
        return [
            str(self.consecutive_failures),
            str(self.failure_rate),
            str(self.window_seconds),
            str(self.minimum_calls),
            str(int(self.open_seconds * 1000)),
            str(self.half_open_probes),
            "0" if self.mode == DISABLED else "1",
        ]


def settings_from(upstream) -> BreakerSettings:
    """Compile an upstream's breaker fields (proxy.models.Upstream, read by attribute name)."""
    statuses = frozenset(int(s) for s in upstream.breaker_failure_statuses.split(",") if s.strip())
    return BreakerSettings(
        mode=upstream.breaker_mode,
        consecutive_failures=upstream.breaker_consecutive_failures,
        failure_rate=upstream.breaker_failure_rate,
        window_seconds=upstream.breaker_window_seconds,
        minimum_calls=upstream.breaker_minimum_calls,
        slow_call_ms=upstream.breaker_slow_call_ms,
        open_seconds=upstream.breaker_open_seconds,
        half_open_probes=upstream.breaker_half_open_probes,
        failure_statuses=statuses,
    )
