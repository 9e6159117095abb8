"""Choosing an upstream's target for each attempt, and taking failing targets out of the rotation.

Everything here is per worker and in memory: a pick is a few comparisons, with no Redis and no lock (a gevent
worker runs one greenlet at a time, and nothing here yields). The compiled `Balancer` is rebuilt with each
configuration revision; each target's `TargetState` (busy count, failures, ejection) outlives revisions, so a
configuration change never lets an ejected target back early.

- Weighted round robin is nginx's smooth algorithm (ngx_http_upstream_round_robin.c): weights 5, 1, 1 give
  a a b a c a a, spreading the heavy target's turns instead of sending it five in a row.
- Least requests draws two targets at random and takes the one with fewer unfinished requests per unit of
  weight (the power of two choices, as Envoy's LEAST_REQUEST): near-best balance without scanning every target,
  and no herd on the one that happens to look idle.
- Passive health is Envoy's outlier detection: consecutive failures eject a target for the base time times
  the number of its recent ejections (capped), never more than a set share of the targets at once (one always
  may be). When every target is out, the pick ignores health (Envoy's panic mode): an upstream is never made
  unreachable by its own health checks; its circuit breaker decides about the upstream as a whole.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any

ROUND_ROBIN, LEAST_REQUESTS = "round_robin", "least_requests"


class TargetState:
    """What this worker knows about one target, kept across configuration revisions."""

    __slots__ = ("active_healthy", "consecutive", "ejected_until", "ejections", "outstanding", "total_ejections")

    def __init__(self) -> None:
        self.outstanding = 0  # attempts sent and not finished (least requests)
        self.consecutive = 0  # failed attempts in a row
        self.ejected_until = 0.0  # monotonic time the current ejection ends
        self.ejections = 0  # recent ejections: the next one lasts this many + 1 base times
        self.total_ejections = 0
        self.active_healthy = True  # the instance's active health check says so (proxy.health)

    def ejected(self, now: float) -> bool:
        return self.ejected_until > now

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "ejected_for": round(self.ejected_until - now, 3) if self.ejected(now) else 0.0,
            "consecutive_failures": self.consecutive,
            "ejections": self.total_ejections,
            "outstanding": self.outstanding,
        }


_states: dict[tuple[int, str], TargetState] = {}
_states_lock = threading.Lock()


def state_of(upstream_id: int, address: str) -> TargetState:
    """The worker's state of a target, created on first use; the same object across revisions."""
    key = (upstream_id, address)
    found = _states.get(key)
    if found is None:
        with _states_lock:
            found = _states.setdefault(key, TargetState())
    return found


def states() -> dict[tuple[int, str], TargetState]:
    return dict(_states)


@dataclass(frozen=True, slots=True)
class CompiledTarget:
    """One target, compiled: where to connect, and its weight. `address` is its label in logs and metrics."""

    address: str
    host: str
    port: int
    weight: int
    pool_kwargs: dict[str, Any] | None
    state: TargetState = field(compare=False)


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    consecutive: int = 5  # 0: never eject
    base_seconds: float = 30.0
    max_seconds: float = 300.0
    max_percent: int = 10
    statuses: frozenset[int] = frozenset({502, 503, 504})


class Balancer:
    """Picks a target for each attempt and hears how each attempt went."""

    __slots__ = ("_current", "algorithm", "checked", "policy", "random", "targets")

    def __init__(
        self,
        targets: tuple[CompiledTarget, ...],
        *,
        algorithm: str = ROUND_ROBIN,
        policy: OutlierPolicy | None = None,
        rng: random.Random | None = None,
        checked: bool = True,
    ) -> None:
        self.targets = targets
        self.algorithm = algorithm
        # Whether the upstream has active health checks: without them a target's `active_healthy` is not
        # consulted, whatever a verdict of an earlier configuration left in its (longer-lived) state.
        self.checked = checked
        self.policy = policy or OutlierPolicy()
        self.random = rng or random.Random()  # noqa: S311 - spreading load, not security
        self._current = [0] * len(targets)  # smooth round robin's current weights

    def pick(self, now: float, tried: tuple[CompiledTarget, ...] = ()) -> CompiledTarget:
        """A target for the next attempt: a healthy one not tried yet by this request if there is one, else a
        healthy one, else any (panic)."""
        targets = self.targets
        if len(targets) == 1:
            return targets[0]
        if self.checked:
            healthy = [i for i, t in enumerate(targets) if t.state.active_healthy and not t.state.ejected(now)]
        else:
            healthy = [i for i, t in enumerate(targets) if not t.state.ejected(now)]
        candidates = [i for i in healthy if targets[i] not in tried] if tried else healthy
        if not candidates:
            candidates = healthy or list(range(len(targets)))
        if len(candidates) == 1:
            return targets[candidates[0]]
        if self.algorithm == LEAST_REQUESTS:
            return self._two_choices(candidates)
        return self._smooth_round_robin(candidates)

    def _smooth_round_robin(self, candidates: list[int]) -> CompiledTarget:
        current, targets = self._current, self.targets
        best, total = -1, 0
        for i in candidates:
            weight = targets[i].weight
            current[i] += weight
            total += weight
            if best < 0 or current[i] > current[best]:
                best = i
        current[best] -= total
        return targets[best]

    def _two_choices(self, candidates: list[int]) -> CompiledTarget:
        a, b = self.random.sample(candidates, 2)
        first, second = self.targets[a], self.targets[b]
        # Fewer unfinished requests per unit of weight wins: cross-multiplied to stay in integers.
        if second.state.outstanding * first.weight < first.state.outstanding * second.weight:
            return second
        return first

    def succeeded(self, target: CompiledTarget) -> None:
        target.state.consecutive = 0

    def failed(self, target: CompiledTarget, now: float) -> bool:
        """Count a failed attempt; True when it ejects the target."""
        state, policy = target.state, self.policy
        state.consecutive += 1
        if not policy.consecutive or state.consecutive < policy.consecutive or len(self.targets) < 2:
            return False
        if state.ejected(now):
            return False
        ejected = sum(1 for t in self.targets if t.state.ejected(now))
        if ejected >= max(1, len(self.targets) * policy.max_percent // 100):
            return False
        if state.ejections:
            # Time back in service pays ejections off: one per base time since the last one ended.
            state.ejections = max(0, state.ejections - int((now - state.ejected_until) / policy.base_seconds))
        state.ejections += 1
        state.total_ejections += 1
        state.ejected_until = now + min(policy.base_seconds * state.ejections, policy.max_seconds)
        state.consecutive = 0
        return True
