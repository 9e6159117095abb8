"""The breaker as the proxy uses it: `check()` before forwarding, then the ticket hears every attempt.

Cost on the hot path: each worker keeps a view of every breaker's shared state in memory. Other workers'
changes arrive by Redis pub/sub (milliseconds), and a background thread re-reads the views of the breakers
in use every second, in case a message was lost. So a request to a healthy upstream costs no Redis round trip:

- closed breaker, success: counted in memory; a background thread adds the counts to the shared
  failure-rate window once a second (one call per upstream per worker per second);
- a failure: one script call (counts it, may open the breaker, publishes the change);
- the first success after failures: one call (resets the consecutive count);
- open breaker: rejected from memory until probing may start; then one call per request to take a probe.

When Redis does not answer, each worker uses its own LocalBreaker for that upstream (logged and counted)
instead of failing requests, and goes back to the shared state when Redis answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import RedisError

from breakers import storage
from breakers.local import LocalBreaker
from breakers.policy import CLOSED, DISABLED, FORCED_OPEN, OPEN, SHADOW, BreakerSettings
from breakers.storage import View

logger = logging.getLogger(__name__)

#: After Redis fails, decide locally for this long before trying Redis again (no per-request timeouts).
LOCAL_FOR = 1.0
#: Views of breakers used within this many seconds are re-read by the background sync.
ACTIVE_FOR = 60.0
#: Whether this worker hears the change feed (pub/sub). None: this process runs no background sync
#: (management commands, in-process tests) and takes views as they are. False: the feed is not (yet) connected,
#: so a view older than STALE_AFTER seconds is read again before it is used.
feed_live: bool | None = None
STALE_AFTER = 0.2


@dataclass(frozen=True, slots=True)
class Rejected:
    upstream: str
    retry_after: float
    reason: str


class Entry:
    """One upstream's breaker, as this worker sees it."""

    __slots__ = (
        "drain",
        "id",
        "last_used",
        "local",
        "local_until",
        "name",
        "open_until",
        "pending",
        "policy",
        "view",
        "viewed_at",
    )

    def __init__(self, upstream_id: int, name: str, policy: BreakerSettings) -> None:
        self.id = upstream_id
        self.name = name
        self.policy = policy
        self.view: View | None = None
        self.open_until = 0.0
        self.pending = 0
        self.local: LocalBreaker | None = None
        self.local_until = 0.0
        self.last_used = 0.0
        self.drain = False
        self.viewed_at = 0.0

    def adopt(self, view: View) -> None:
        """Take a newer view of the shared state (replies and messages may arrive out of order)."""
        current = self.view
        if current is None or view.gen >= current.gen:
            self._set(view)
        if view.transitioned:
            self.drain = True

    def _set(self, view: View) -> None:
        previous = self.view
        self.view = view
        self.viewed_at = now = time.monotonic()
        self.open_until = now + view.open_remaining if view.state == OPEN else 0.0
        if previous is None or previous.state != view.state:
            _notify("state", self, view)

    def call(self, op: str, policy: BreakerSettings, *, gen: int | None = None, extra: str = "") -> View:
        """Run `op` on the shared state, or on this worker's own breaker while Redis is unavailable."""
        now = time.monotonic()
        if now >= self.local_until:
            try:
                view = storage.run(op, self.id, self.name, policy, gen=gen, extra=extra)
            except RedisError as exc:
                self.local_until = now + LOCAL_FOR
                _notify("redis_error", self, None)
                _note_fallback(self, exc)
            else:
                if self.local is not None:
                    # The local breaker counted its own generations: take the shared view whatever its number.
                    logger.info("breaker back on shared state", extra={"upstream": self.name})
                    self.local = None
                    self._set(view)
                self.adopt(view)
                if view.transitioned:
                    _notify("transition", self, view, view.from_state)
                return view
        return self._local_call(op, policy, gen)

    def _local_call(self, op: str, policy: BreakerSettings, gen: int | None) -> View:
        if self.local is None:
            self.local = LocalBreaker()
        local = self.local
        # The local breaker counts its own cycles; generations from the shared state do not apply to it.
        if op == "acquire":
            view = local.acquire(policy)
        elif op == "fail":
            view = local.fail(policy, None)
        elif op == "ok":
            view = local.ok(policy, None, probe=True)
        elif op == "release":
            view = local.release(policy)
        else:
            view = local.view(policy)
        _notify("fallback", self, view)
        previous = self.view.state if self.view is not None else ""
        self._set(view)
        if view.transitioned:
            _notify("transition", self, view, previous)
        return view

    def current(self, policy: BreakerSettings) -> View:
        view = self.view
        now = time.monotonic()
        if (
            view is None
            or (self.local is not None and now >= self.local_until)
            or (feed_live is False and now - self.viewed_at > STALE_AFTER and now >= self.local_until)
        ):
            view = self.call("view", policy)
        return view


class Ticket:
    """Permission to forward one request; hears every attempt's outcome (retries included)."""

    __slots__ = ("entry", "gen", "policy", "probe", "reported", "state")

    def __init__(self, entry: Entry, policy: BreakerSettings, gen: int | None, probe: bool, state: str) -> None:
        self.entry = entry
        self.policy = policy
        self.gen = gen
        self.probe = probe
        self.state = state  # for the access log: the state (or mode) the request was let through in
        self.reported = False

    def finish(self) -> None:
        """After the request: a probe whose request never reached the upstream gives its slot back."""
        if self.probe and not self.reported:
            self.entry.call("release", self.policy, gen=self.gen)

    def attempt_finished(self, *, status: int | None, error: Exception | None, elapsed: float) -> None:
        self.reported = True
        policy = self.policy
        if error is not None:
            what = type(error).__name__
        elif status in policy.failure_statuses:
            what = f"status {status}"
        elif policy.slow_call_ms and elapsed * 1000 >= policy.slow_call_ms:
            what = f"slow call {elapsed * 1000:.0f} ms"
        else:
            self._success()
            return
        view = self.entry.call("fail", policy, gen=self.gen, extra=what)
        self.gen = view.gen
        self.probe = False

    def _success(self) -> None:
        entry = self.entry
        entry.pending += 1
        view = entry.view
        if self.probe or (view is not None and view.state == CLOSED and view.consec > 0):
            entry.call("ok", self.policy, gen=self.gen)

    def may_continue(self) -> bool:
        """False once the breaker is open: retries stop."""
        view = self.entry.view
        return view is None or view.state != OPEN or self.policy.mode in (DISABLED, SHADOW)


_entries: dict[int, Entry] = {}
_entries_lock = threading.Lock()
#: Called with (event, entry, view[, previous state]); metrics subscribe. Events: state (this worker's view
#: of a breaker changed state), transition (this worker's call moved the shared state; with the state before),
#: rejected, fallback (decided without Redis), redis_error.
listeners: list[Callable[..., None]] = []


def _notify(event: str, found: Entry, view: View | None, *previous: str) -> None:
    for listener in listeners:
        listener(event, found, view, *previous)


def entry(upstream_id: int, name: str, policy: BreakerSettings) -> Entry:
    found = _entries.get(upstream_id)
    if found is None or found.name != name:
        with _entries_lock:
            found = _entries.get(upstream_id)
            if found is None or found.name != name:
                found = _entries[upstream_id] = Entry(upstream_id, name, policy)
    found.policy = policy
    return found


def check(upstream_id: int, name: str, policy: BreakerSettings) -> Ticket | Rejected:
    """May a request go to this upstream now?"""
    found = entry(upstream_id, name, policy)
    if policy.mode == FORCED_OPEN:
        return _rejected(found, policy.open_seconds, FORCED_OPEN)
    found.last_used = now = time.monotonic()
    if policy.mode == DISABLED:
        view = found.view
        return Ticket(found, policy, view.gen if view is not None else None, False, DISABLED)
    view = found.current(policy)
    if view.state == CLOSED:
        return Ticket(found, policy, view.gen, False, CLOSED)
    if view.state == OPEN and (now := time.monotonic()) < found.open_until:
        if policy.mode == SHADOW:
            return Ticket(found, policy, view.gen, False, "shadow:open")
        return _rejected(found, found.open_until - now, OPEN)
    view = found.call("acquire", policy)
    if view.granted or policy.mode == SHADOW:
        return Ticket(found, policy, view.gen, view.probe, "probe" if view.probe else view.state)
    return _rejected(found, view.open_remaining or 1.0, view.state)


def _rejected(found: Entry, retry_after: float, state: str) -> Rejected:
    _notify("rejected", found, found.view)
    return Rejected(found.name, retry_after, state)


_fallback_log = {"last": 0.0, "count": 0}


def _note_fallback(found: Entry, error: RedisError) -> None:
    state = _fallback_log
    state["count"] += 1
    now = time.monotonic()
    if now - state["last"] >= 5.0:
        logger.warning(
            "Redis unavailable for circuit breakers; using this worker's own breaker",
            extra={
                "upstream": found.name,
                "error": str(error) or type(error).__name__,
                "fallbacks_since_last_line": state["count"],
            },
        )
        state["last"] = now
        state["count"] = 0


def entries() -> list[Entry]:
    return list(_entries.values())


def forget() -> None:
    """Drop every view (tests; and after the pub/sub connection was lost, views are re-read)."""
    with _entries_lock:
        _entries.clear()
