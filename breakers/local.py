"""A worker's own breaker for an upstream, used while Redis is unavailable.

The same state machine as lua/breaker.lua, on this worker's clock and counts only. It is logged and counted
each time it is used, and dropped once Redis answers again (the shared state wins).
"""

from __future__ import annotations

import time
from collections import deque

from breakers.policy import CLOSED, DISABLED, HALF_OPEN, OPEN, BreakerSettings
from breakers.storage import View


class LocalBreaker:
    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.state = CLOSED
        self.gen = 0
        self.consec = 0
        self.opened = 0.0
        self.half_opened = 0.0
        self.issued = 0
        self.probe_ok = 0
        self.calls: deque[tuple[float, bool]] = deque()  # (when, failed)

    def view(
        self, policy: BreakerSettings, *, granted: bool = True, transitioned: bool = False, probe: bool = False
    ) -> View:
        remaining = max(0.0, self.opened + policy.open_seconds - self.clock()) if self.state == OPEN else 0.0
        return View(self.state, self.gen, self.consec, remaining, granted, transitioned, probe)

    def _transition(self, to: str) -> None:
        self.state = to
        self.gen += 1
        self.consec = self.issued = self.probe_ok = 0
        now = self.clock()
        if to == OPEN:
            self.opened = now
        elif to == HALF_OPEN:
            self.half_opened = now
        else:
            self.calls.clear()

    def _rate_exceeded(self, policy: BreakerSettings) -> bool:
        if policy.failure_rate <= 0:
            return False
        horizon = self.clock() - policy.window_seconds
        while self.calls and self.calls[0][0] < horizon:
            self.calls.popleft()
        total = len(self.calls)
        failed = sum(1 for _, f in self.calls if f)
        return total >= policy.minimum_calls and failed * 100 >= policy.failure_rate * total

    def acquire(self, policy: BreakerSettings) -> View:
        now = self.clock()
        transitioned = False
        if self.state == OPEN and policy.mode != DISABLED and now >= self.opened + policy.open_seconds:
            self._transition(HALF_OPEN)
            transitioned = True
        if self.state == HALF_OPEN:
            if self.issued < policy.half_open_probes or now - self.half_opened >= policy.open_seconds:
                if self.issued >= policy.half_open_probes:
                    self.issued, self.probe_ok, self.half_opened = 0, 0, now
                self.issued += 1
                return self.view(policy, transitioned=transitioned, probe=True)
            return self.view(policy, granted=False, transitioned=transitioned)
        return self.view(policy, granted=self.state == CLOSED, transitioned=transitioned)

    def fail(self, policy: BreakerSettings, gen: int | None) -> View:
        if gen is not None and gen != self.gen:
            return self.view(policy)
        self.calls.append((self.clock(), True))
        transitioned = False
        may_transition = policy.mode != DISABLED  # disabled: count, as the shared breaker does, never trip
        if self.state == CLOSED:
            self.consec += 1
            threshold = policy.consecutive_failures
            if may_transition and ((threshold and self.consec >= threshold) or self._rate_exceeded(policy)):
                self._transition(OPEN)
                transitioned = True
        elif self.state == HALF_OPEN and may_transition:
            self._transition(OPEN)
            transitioned = True
        return self.view(policy, transitioned=transitioned)

    def ok(self, policy: BreakerSettings, gen: int | None, *, probe: bool) -> View:
        if gen is not None and gen != self.gen:
            return self.view(policy)
        self.calls.append((self.clock(), False))
        transitioned = False
        if self.state == CLOSED:
            self.consec = 0
        elif self.state == HALF_OPEN and probe:
            self.probe_ok += 1
            if self.probe_ok >= policy.half_open_probes and policy.mode != DISABLED:
                self._transition(CLOSED)
                transitioned = True
        return self.view(policy, transitioned=transitioned)

    def release(self, policy: BreakerSettings) -> View:
        if self.state == HALF_OPEN and self.issued > 0:
            self.issued -= 1
        return self.view(policy)
