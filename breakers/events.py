"""What a worker's breakers tell their listeners (metrics subscribe in apps.py). Typed, so a listener matches
on the class instead of decoding a string."""

from __future__ import annotations

from dataclasses import dataclass

from breakers.policy import State


@dataclass(frozen=True, slots=True)
class StateSeen:
    """This worker's view of a breaker is now in `state` (after a call, a message or a local decision)."""

    upstream: str
    state: State


@dataclass(frozen=True, slots=True)
class Transitioned:
    """A call of this worker moved the breaker from one state to another."""

    upstream: str
    from_state: str
    to_state: State


@dataclass(frozen=True, slots=True)
class Rejected:
    """A request was refused because the breaker is open (or forced open)."""

    upstream: str


@dataclass(frozen=True, slots=True)
class DecidedLocally:
    """Redis was unavailable: this worker's own breaker decided."""

    upstream: str


@dataclass(frozen=True, slots=True)
class RedisFailed:
    """A breaker call to Redis failed or timed out."""

    upstream: str


Event = StateSeen | Transitioned | Rejected | DecidedLocally | RedisFailed
