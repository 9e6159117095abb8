"""What a breaker is: its states, the operator's modes, and its settings as the hot path sees them.

Settings are one immutable object per upstream, compiled when the configuration loads (`compiled.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Mode(StrEnum):
    """What an operator set: normal operation, or one of the overrides."""

    NORMAL = "normal"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"
    SHADOW = "shadow"


CLOSED, OPEN, HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN
NORMAL, FORCED_OPEN, DISABLED, SHADOW = Mode.NORMAL, Mode.FORCED_OPEN, Mode.DISABLED, Mode.SHADOW
MODES = tuple(Mode)
DEFAULT_FAILURE_STATUSES = frozenset({502, 503, 504})


def label(mode: str, state: str) -> tuple[str, str]:
    """What an operator should read for a breaker: (css class, words). A mode overrides the state it shows:
    a forced-open breaker is "forced open" whatever its counts say."""
    if mode == FORCED_OPEN:
        return "forced", "forced open by an operator"
    if mode == DISABLED:
        return "disabled", "disabled: lets everything through"
    if state == "unknown":
        return "unknown", "unknown (Redis did not answer)"
    words = {CLOSED: "closed", OPEN: "open", HALF_OPEN: "half-open: probing"}.get(state, str(state))
    if mode == SHADOW:
        return "shadow", f"shadow: {words}, never rejects"
    return {CLOSED: "closed", OPEN: "open", HALF_OPEN: "half-open"}.get(state, "unknown"), words


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    mode: Mode = NORMAL
    consecutive_failures: int = 5  # 0: off
    failure_rate: int = 50  # percent; 0: off
    window_seconds: int = 60
    minimum_calls: int = 20
    slow_call_ms: int = 0  # 0: off
    open_seconds: float = 30.0
    half_open_probes: int = 1
    failure_statuses: frozenset[int] = DEFAULT_FAILURE_STATUSES

    @property
    def may_transition(self) -> bool:
        """Disabled breakers count, as the others do, but never change state."""
        return self.mode != DISABLED

    def script_args(self) -> list[str]:
        """The settings as lua/breaker.lua takes them."""
        return [
            str(self.consecutive_failures),
            str(self.failure_rate),
            str(self.window_seconds),
            str(self.minimum_calls),
            str(int(self.open_seconds * 1000)),
            str(self.half_open_probes),
            "1" if self.may_transition else "0",
        ]


DEFAULT = BreakerSettings()
