"""The breaker as the proxy uses it: `check()` before forwarding, then the ticket hears every attempt.

Cost on the hot path: each worker keeps a view of every breaker's shared state in memory. Other workers'
changes arrive by Redis pub/sub (milliseconds), and a background thread re-reads the views of the breakers
in use every second, in case a message was lost. So a request to a healthy upstream costs no Redis round trip:

- closed breaker, success: counted in memory; a background thread adds the counts to the shared
  failure-rate window once a second (one call per upstream per worker per second);
- a failure: one script call (counts it, may open the breaker, publishes the change);
- the first success after failures: one call (resets the consecutive count);
- open breaker: rejected from memory until probing may start; then one call per request to take a probe.

When Redis fails (refused, reset, silent past the hot-path timeout; never because this worker is busy, see
gateway_project.redis_pipe), each worker uses its own breaker for that upstream (local_storage; logged and
counted) instead of failing requests, starting from the shared state it last knew, and goes back to the shared
state when Redis answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from redis.exceptions import RedisError

from breakers.events import DecidedLocally, Event, RedisFailed, Rejected, StateSeen, Transitioned
from breakers.local_storage import LocalStorage
from breakers.policy import CLOSED, DISABLED, FORCED_OPEN, OPEN, SHADOW, BreakerSettings
from breakers.redis_storage import RedisStorage
from breakers.storage import BreakerId, BreakerStorage, View
from gateway_project.degraded import DegradedLog

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Timing:
    """The gate's clocks, from the settings (configure())."""

    fallback_for: float = 1.0  # after Redis fails, decide locally this long before trying Redis again
    active_for: float = 60.0  # breakers used this recently are re-read by the background sync
    stale_after: float = 0.2  # without the change feed, a view older than this is read again before use


timing = Timing()
#: Whether this worker hears the change feed (pub/sub). None: this process runs no background sync
#: (management commands, in-process tests) and takes views as they are. False: the feed is not (yet) connected,
#: so a view older than timing.stale_after is read again before it is used.
feed_live: bool | None = None


def configure(*, fallback_for: float, active_for: float) -> None:
    """Take the gate's timing from the settings; the breaker middleware calls it when it is built."""
    timing.fallback_for = fallback_for
    timing.active_for = active_for


shared: BreakerStorage = RedisStorage()
local = LocalStorage()
_fallback_log = DegradedLog(logger, "Redis unavailable for circuit breakers; using this worker's own breaker")

Operation = Callable[[BreakerStorage], View]


@dataclass(frozen=True, slots=True)
class Refusal:
    upstream: str
    retry_after: float
    reason: str


class Entry:
    """One upstream's breaker, as this worker sees it."""

    __slots__ = (
        "drain",
        "id",
        "last_used",
        "local_until",
        "name",
        "on_local",
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
        self.on_local = False
        self.local_until = 0.0
        self.last_used = 0.0
        self.drain = False
        self.viewed_at = 0.0

    @property
    def ref(self) -> BreakerId:
        return BreakerId(self.id, self.name)

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
            _notify(StateSeen(self.name, view.state))

    def call(self, operation: Operation) -> View:
        """Run `operation` on the shared state, or on this worker's own breaker while Redis is unavailable."""
        now = time.monotonic()
        if now >= self.local_until:
            try:
                view = operation(shared)
            except RedisError as exc:
                self.local_until = now + timing.fallback_for
                _notify(RedisFailed(self.name))
                _fallback_log.note(upstream=self.name, error=str(exc) or type(exc).__name__)
            else:
                if self.on_local:
                    # The local breaker counted its own generations: take the shared view whatever its number.
                    logger.info("breaker back on shared state", extra={"upstream": self.name})
                    self.on_local = False
                    local.forget(self.ref)
                    self._set(view)
                self.adopt(view)
                if view.transitioned:
                    _notify(Transitioned(self.name, view.from_state, view.state))
                return view
        return self._local_call(operation)

    def _local_call(self, operation: Operation) -> View:
        if not self.on_local:
            self.on_local = True
            # Start from the last shared state this worker knew: an open breaker stays open until its own timer
            # runs out, a half-open one lets at most one probe through from this worker, and tickets issued
            # from the shared state keep their generation.
            view = self.view
            if view is not None and view.state == OPEN:
                view = replace(view, open_remaining=max(0.0, self.open_until - time.monotonic()))
            local.seed(self.ref, self.policy, view)
        view = operation(local)
        _notify(DecidedLocally(self.name))
        self._set(view)
        if view.transitioned:
            _notify(Transitioned(self.name, view.from_state, view.state))
        return view

    def current(self, policy: BreakerSettings) -> View:
        view = self.view
        now = time.monotonic()
        if (
            view is None
            or (self.on_local and now >= self.local_until)
            or (feed_live is False and now - self.viewed_at > timing.stale_after and now >= self.local_until)
        ):
            view = self.call(lambda storage: storage.view(self.ref, policy))
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
            entry, gen = self.entry, self.gen
            entry.call(lambda storage: storage.release(entry.ref, self.policy, gen=gen))

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
        entry, gen = self.entry, self.gen
        view = entry.call(lambda storage: storage.failed(entry.ref, policy, gen=gen, what=what))
        self.gen = view.gen
        self.probe = False

    def _success(self) -> None:
        entry, gen = self.entry, self.gen
        entry.pending += 1
        view = entry.view
        if self.probe or (view is not None and view.state == CLOSED and view.consec > 0):
            entry.call(lambda storage: storage.succeeded(entry.ref, self.policy, gen=gen))

    def may_continue(self) -> bool:
        """False once the breaker is open: retries stop."""
        view = self.entry.view
        return view is None or view.state != OPEN or self.policy.mode in (DISABLED, SHADOW)


_entries: dict[int, Entry] = {}
_entries_lock = threading.Lock()
#: Called with every breakers.events event; metrics subscribe (apps.py).
listeners: list[Callable[[Event], None]] = []


def _notify(event: Event) -> None:
    for listener in listeners:
        listener(event)


def entry(upstream_id: int, name: str, policy: BreakerSettings) -> Entry:
    found = _entries.get(upstream_id)
    if found is None or found.name != name:
        with _entries_lock:
            found = _entries.get(upstream_id)
            if found is None or found.name != name:
                found = _entries[upstream_id] = Entry(upstream_id, name, policy)
    found.policy = policy
    return found


def check(upstream_id: int, name: str, policy: BreakerSettings) -> Ticket | Refusal:
    """May a request go to this upstream now?"""
    found = entry(upstream_id, name, policy)
    if policy.mode == FORCED_OPEN:
        return _refused(found, policy.open_seconds, FORCED_OPEN)
    found.last_used = time.monotonic()
    if policy.mode == DISABLED:
        view = found.view
        return Ticket(found, policy, view.gen if view is not None else None, False, DISABLED)
    view = found.current(policy)
    if view.state == CLOSED:
        return Ticket(found, policy, view.gen, False, CLOSED)
    if view.state == OPEN and (now := time.monotonic()) < found.open_until:
        if policy.mode == SHADOW:
            return Ticket(found, policy, view.gen, False, "shadow:open")
        return _refused(found, found.open_until - now, OPEN)
    view = found.call(lambda storage: storage.acquire(found.ref, policy))
    if view.granted or policy.mode == SHADOW:
        return Ticket(found, policy, view.gen, view.probe, "probe" if view.probe else view.state)
    return _refused(found, view.open_remaining or 1.0, view.state)


def _refused(found: Entry, retry_after: float, state: str) -> Refusal:
    _notify(Rejected(found.name))
    return Refusal(found.name, retry_after, state)


def entries() -> list[Entry]:
    return list(_entries.values())


def forget() -> None:
    """Drop every view (tests; and after the pub/sub connection was lost, views are re-read)."""
    with _entries_lock:
        _entries.clear()
        local.breakers.clear()
