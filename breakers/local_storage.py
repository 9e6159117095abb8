"""One worker's breakers in memory: the state machine of lua/breaker.lua on the worker's own clock.

A worker uses it while Redis is unavailable (logged and counted each time), and drops it once Redis answers
again: the shared state wins. tests/breakers/test_storage_contract.py holds it to the script's behaviour.
"""

from __future__ import annotations

import math
import time

from breakers.policy import CLOSED, HALF_OPEN, OPEN, BreakerSettings, State
from breakers.storage import BreakerId, View


class LocalBreaker:
    """One upstream's breaker. Times are milliseconds of `clock`; the window is the script's ring of buckets."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.state = CLOSED
        self.gen = 0
        self.consec = 0
        self.opened = 0.0
        self.half_opened = 0.0
        self.issued = 0
        self.probe_ok = 0
        self.buckets: dict[int, list[int]] = {}  # bucket number -> [calls, failures]

    def now(self) -> float:
        return self.clock() * 1000

    @staticmethod
    def geometry(policy: BreakerSettings) -> tuple[int, int]:
        """(bucket width in seconds, buckets in the window), as the script computes them."""
        width = max(1, math.ceil(policy.window_seconds / 60))
        return width, math.ceil(policy.window_seconds / width)

    def _count(self, policy: BreakerSettings, now: float, calls: int, failures: int) -> None:
        if not calls and not failures:
            return
        width, span = self.geometry(policy)
        bucket = math.floor(now / 1000 / width)
        counts = self.buckets.setdefault(bucket, [0, 0])
        counts[0] += calls
        counts[1] += failures
        for old in [b for b in self.buckets if b < bucket - span - 2]:
            del self.buckets[old]

    def _rate_exceeded(self, policy: BreakerSettings, now: float) -> bool:
        """Judged on the buckets that ended at least a second ago, as the script does."""
        if policy.failure_rate <= 0:
            return False
        width, span = self.geometry(policy)
        newest = math.floor((now / 1000 - 1) / width) - 1
        oldest = math.floor(now / 1000 / width) - span
        calls = failures = 0
        for bucket, (c, f) in self.buckets.items():
            if oldest <= bucket <= newest:
                calls += c
                failures += f
        return calls >= policy.minimum_calls and failures * 100 >= policy.failure_rate * calls

    def _transition(self, to: State, now: float) -> None:
        self.state = to
        self.gen += 1
        self.consec = self.issued = self.probe_ok = 0
        if to == OPEN:
            self.opened = now
        elif to == HALF_OPEN:
            self.half_opened = now
        else:
            self.buckets.clear()

    def _stale(self, gen: int | None) -> bool:
        return gen is not None and gen != self.gen

    def _view(self, policy, now, before, *, granted=False, transitioned=False, probe=False) -> View:
        remaining = max(0.0, self.opened + policy.open_seconds * 1000 - now) / 1000 if self.state == OPEN else 0.0
        return View(self.state, self.gen, self.consec, remaining, granted, transitioned, probe, before)

    def view(self, policy: BreakerSettings) -> View:
        return self._view(policy, self.now(), self.state)

    def acquire(self, policy: BreakerSettings) -> View:
        now, before, transitioned = self.now(), self.state, False
        open_ms = policy.open_seconds * 1000
        if self.state == OPEN and policy.may_transition and now >= self.opened + open_ms:
            self._transition(HALF_OPEN, now)
            transitioned = True
        if self.state == HALF_OPEN:
            if self.issued < policy.half_open_probes:
                self.issued += 1
                return self._view(policy, now, before, granted=True, transitioned=transitioned, probe=True)
            if now - self.half_opened >= open_ms:
                # Probes that never reported (a client that went away) are issued again.
                self.issued, self.probe_ok, self.half_opened = 1, 0, now
                return self._view(policy, now, before, granted=True, transitioned=transitioned, probe=True)
        return self._view(policy, now, before, granted=self.state == CLOSED, transitioned=transitioned)

    def failed(self, policy: BreakerSettings, gen: int | None) -> View:
        now, before = self.now(), self.state
        if self._stale(gen):
            return self._view(policy, now, before)
        self._count(policy, now, 1, 1)
        transitioned = False
        if self.state == CLOSED:
            self.consec += 1
            threshold = policy.consecutive_failures
            if policy.may_transition and ((threshold and self.consec >= threshold) or self._rate_exceeded(policy, now)):
                self._transition(OPEN, now)
                transitioned = True
        elif self.state == HALF_OPEN and policy.may_transition:
            self._transition(OPEN, now)
            transitioned = True
        return self._view(policy, now, before, transitioned=transitioned)

    def succeeded(self, policy: BreakerSettings, gen: int | None) -> View:
        now, before = self.now(), self.state
        if self._stale(gen):
            return self._view(policy, now, before)
        transitioned = False
        if self.state == CLOSED:
            self.consec = 0
        elif self.state == HALF_OPEN:
            self.probe_ok += 1
            if self.probe_ok >= policy.half_open_probes and policy.may_transition:
                self._transition(CLOSED, now)
                transitioned = True
        return self._view(policy, now, before, transitioned=transitioned)

    def flush(self, policy: BreakerSettings, successes: int) -> View:
        now, before = self.now(), self.state
        self._count(policy, now, successes, 0)
        transitioned = False
        if self.state == CLOSED and policy.may_transition and self._rate_exceeded(policy, now):
            self._transition(OPEN, now)
            transitioned = True
        return self._view(policy, now, before, transitioned=transitioned)

    def reset(self, policy: BreakerSettings) -> View:
        now, before = self.now(), self.state
        self._transition(CLOSED, now)
        return self._view(policy, now, before, transitioned=True)

    def release(self, policy: BreakerSettings, gen: int | None) -> View:
        now = self.now()
        if not self._stale(gen) and self.state == HALF_OPEN and self.issued > 0:
            self.issued -= 1
        return self._view(policy, now, self.state)


class LocalStorage:
    """BreakerStorage in this worker's memory."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.breakers: dict[int, LocalBreaker] = {}

    def breaker(self, breaker: BreakerId) -> LocalBreaker:
        found = self.breakers.get(breaker.id)
        if found is None:
            found = self.breakers[breaker.id] = LocalBreaker(self.clock)
        return found

    def seed(self, breaker: BreakerId, policy: BreakerSettings, view: View | None) -> LocalBreaker:
        """A new breaker for `breaker` that starts where the shared state `view` (as last seen) left off: open
        for the time it had left, half-open with one probe left for this worker, or closed with its count."""
        found = self.breakers[breaker.id] = LocalBreaker(self.clock)
        if view is None:
            return found
        found.gen, found.state, now = view.gen, view.state, found.now()
        if view.state == OPEN:
            found.opened = now - (policy.open_seconds - view.open_remaining) * 1000
        elif view.state == HALF_OPEN:
            found.half_opened = now
            found.issued = found.probe_ok = max(0, policy.half_open_probes - 1)
        else:
            found.consec = view.consec
        return found

    def forget(self, breaker: BreakerId) -> None:
        self.breakers.pop(breaker.id, None)

    def view(self, breaker: BreakerId, policy: BreakerSettings) -> View:
        return self.breaker(breaker).view(policy)

    def acquire(self, breaker: BreakerId, policy: BreakerSettings) -> View:
        return self.breaker(breaker).acquire(policy)

    def failed(self, breaker: BreakerId, policy: BreakerSettings, *, gen: int | None, what: str) -> View:
        return self.breaker(breaker).failed(policy, gen)

    def succeeded(self, breaker: BreakerId, policy: BreakerSettings, *, gen: int | None) -> View:
        return self.breaker(breaker).succeeded(policy, gen)

    def flush(self, breaker: BreakerId, policy: BreakerSettings, *, successes: int) -> View:
        return self.breaker(breaker).flush(policy, successes)

    def reset(self, breaker: BreakerId, policy: BreakerSettings, *, actor: str) -> View:
        return self.breaker(breaker).reset(policy)

    def release(self, breaker: BreakerId, policy: BreakerSettings, *, gen: int | None) -> View:
        return self.breaker(breaker).release(policy, gen)
