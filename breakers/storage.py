"""Where a breaker's state lives: one interface, two implementations.

- `redis_storage.RedisStorage`: the shared state of every worker and instance, each operation one atomic
  Lua call (lua/breaker.lua), time from Redis.
- `local_storage.LocalStorage`: one worker's own state in memory, the same state machine on the worker's
  clock, used while Redis is unavailable.

tests/breakers/test_storage_contract.py runs one suite over both.

Every transition increments the breaker's generation. Results reported with `gen` of an earlier cycle change
nothing (`gen=None`: not tied to a cycle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

from breakers.policy import BreakerSettings, State


class BreakerId(NamedTuple):
    """Which breaker: one per upstream, known by the upstream's id and name."""

    id: int
    name: str


@dataclass(frozen=True, slots=True)
class View:
    """The state as one operation left it."""

    state: State
    gen: int
    consec: int
    open_remaining: float  # seconds until probing may start
    granted: bool = True
    transitioned: bool = False
    probe: bool = False
    from_state: str = ""


class BreakerStorage(Protocol):
    def view(self, breaker: BreakerId, policy: BreakerSettings) -> View:
        """The current state; writes nothing."""

    def acquire(self, breaker: BreakerId, policy: BreakerSettings) -> View:
        """Ask to send a request: granted when closed, or as one of the probes once the open time is over."""

    def failed(self, breaker: BreakerId, policy: BreakerSettings, *, gen: int | None, what: str) -> View:
        """Count a failed attempt (`what` failed); may open the breaker."""

    def succeeded(self, breaker: BreakerId, policy: BreakerSettings, *, gen: int | None) -> View:
        """Count a successful probe, or end a run of consecutive failures."""

    def flush(self, breaker: BreakerId, policy: BreakerSettings, *, successes: int) -> View:
        """Add successes counted meanwhile to the failure-rate window, and judge the rate."""

    def reset(self, breaker: BreakerId, policy: BreakerSettings, *, actor: str) -> View:
        """Close the breaker and forget its counts (an operator's action)."""

    def release(self, breaker: BreakerId, policy: BreakerSettings, *, gen: int | None) -> View:
        """Give back a probe that never reached the upstream."""
