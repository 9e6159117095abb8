"""The per-worker, in-memory limiter used while Redis is unavailable, for policies set to 'local'.

Same algorithms as the Redis script, on this worker's monotonic clock. Each worker counts on its own, so a
fleet allows up to (workers x instances) x limit. Memory is bounded: at most MAX_KEYS counters, least recently
used dropped first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

MAX_KEYS = 100_000


class LocalLimiter:
    def __init__(self, clock=time.monotonic, max_keys: int = MAX_KEYS) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self._state: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def hit(
        self, key: str, *, algorithm: str, limit: int, window: int, burst: int, count: bool = True
    ) -> tuple[bool, int, float]:
        """Check one request, and count it if allowed and `count`: (allowed, remaining, retry_after seconds).

        Checking several policies, call with count=False first and count only if none rejects, as the Redis
        script does.
        """
        now = self.clock()
        with self._lock:
            state = self._state.get(key)
            if algorithm == "L":
                log = state if isinstance(state, deque) else deque()
                while log and log[0] <= now - window:
                    log.popleft()
                if len(log) >= limit:
                    self._touch(key, log)
                    return False, 0, log[len(log) - limit] + window - now
                if count:
                    log.append(now)
                self._touch(key, log)
                return True, limit - len(log) - (0 if count else 1), 0.0
            interval = window / limit
            tolerance = interval * burst
            tat = max(state if isinstance(state, float) else now, now)
            new_tat = tat + interval
            if new_tat - now > tolerance:
                if state is not None:
                    self._touch(key, state)
                return False, 0, new_tat - now - tolerance
            if count:
                self._touch(key, new_tat)
            return True, int((tolerance - (new_tat - now)) // interval), 0.0

    def _touch(self, key: str, value: object) -> None:
        self._state[key] = value
        self._state.move_to_end(key)
        while len(self._state) > self.max_keys:
            self._state.popitem(last=False)
