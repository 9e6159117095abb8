"""The retry budget: retries to an upstream may be at most a share of its recent requests, plus a minimum.

Without it, every retry policy multiplies load exactly when an upstream is failing: three attempts per request
triple the traffic of an outage. Envoy's retry budget caps concurrent retries at 20 % of active requests with a
minimum of 3; Finagle and gRPC's retry throttling count over time instead. This one counts over time, per worker:
in any 10 seconds, retries may be at most `percent` of the requests started in that time, but `minimum` retries
are always allowed. Counting over a window (rather than in flight) gives a bound one can state and test: over a
run, retries <= percent x requests + minimum per window and worker.
"""

from __future__ import annotations

import threading

WINDOW_SECONDS = 10


class RetryBudget:
    """Requests and retries of one upstream in the last WINDOW_SECONDS, in one-second buckets."""

    __slots__ = ("_requests", "_retries", "_second", "requests", "retries")

    def __init__(self) -> None:
        self._requests = [0] * WINDOW_SECONDS
        self._retries = [0] * WINDOW_SECONDS
        self._second = 0
        self.requests = 0  # totals over the window
        self.retries = 0

    def _advance(self, now: float) -> int:
        second = int(now)
        if second != self._second:
            for step in range(min(second - self._second, WINDOW_SECONDS)):
                slot = (self._second + 1 + step) % WINDOW_SECONDS
                self.requests -= self._requests[slot]
                self.retries -= self._retries[slot]
                self._requests[slot] = self._retries[slot] = 0
            self._second = second
        return second % WINDOW_SECONDS

    def request(self, now: float) -> None:
        slot = self._advance(now)
        self._requests[slot] += 1
        self.requests += 1

    def try_retry(self, now: float, percent: int, minimum: int) -> bool:
        """Take a retry from the budget; False (and nothing taken) when it is spent."""
        slot = self._advance(now)
        if self.retries >= minimum and self.retries * 100 >= self.requests * percent:
            return False
        self._retries[slot] += 1
        self.retries += 1
        return True


_budgets: dict[tuple[int, str], RetryBudget] = {}
_lock = threading.Lock()


def budget_of(upstream_id: int, name: str) -> RetryBudget:
    """The worker's budget of an upstream, kept across configuration revisions (a renamed one starts afresh)."""
    key = (upstream_id, name)
    found = _budgets.get(key)
    if found is None:
        with _lock:
            found = _budgets.setdefault(key, RetryBudget())
    return found
