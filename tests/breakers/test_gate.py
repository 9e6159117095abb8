"""breakers.gate, in this process, on the suite's real Redis (a private key prefix per test).

No sync or subscriber thread runs here: what other workers would learn by pub/sub is read from Redis directly.
"""

from __future__ import annotations

import itertools
import time

import pytest

from breakers import gate, redis_storage
from breakers.events import DecidedLocally, RedisFailed, Rejected, StateSeen, Transitioned
from breakers.policy import CLOSED, DISABLED, FORCED_OPEN, HALF_OPEN, OPEN, SHADOW, BreakerSettings
from breakers.redis_storage import RedisStorage
from breakers.storage import BreakerId, View
from gateway_project import store
from tests.support.servers import free_port

_ids = itertools.count(1)


@pytest.fixture(autouse=True)
def _fresh(redis_prefix):
    gate.forget()
    yield
    gate.forget()


@pytest.fixture
def redis_calls(monkeypatch) -> list[str]:
    """The ops of every breaker script call the service makes."""
    calls: list[str] = []
    real = RedisStorage._run

    def counting(self, op, *args, **kwargs):
        calls.append(str(op))
        return real(self, op, *args, **kwargs)

    monkeypatch.setattr(RedisStorage, "_run", counting)
    return calls


@pytest.fixture
def events():
    """What the listeners hear."""
    heard: list = []
    gate.listeners.append(heard.append)
    yield heard
    gate.listeners.remove(heard.append)


class Upstream:
    def __init__(self, **fields) -> None:
        self.id = next(_ids)
        self.name = f"svc{self.id}"
        self.policy = BreakerSettings(**{"failure_rate": 0, "open_seconds": 30.0, **fields})

    def check(self) -> gate.Ticket | gate.Refusal:
        return gate.check(self.id, self.name, self.policy)

    def ticket(self) -> gate.Ticket:
        decision = self.check()
        assert isinstance(decision, gate.Ticket), decision
        return decision

    def shared(self) -> View:
        return RedisStorage().view(BreakerId(self.id, self.name), self.policy)


def fail(ticket: gate.Ticket, status: int = 503) -> None:
    ticket.attempt_finished(status=status, error=None, elapsed=0.01)


def succeed(ticket: gate.Ticket, status: int = 200, elapsed: float = 0.01) -> None:
    ticket.attempt_finished(status=status, error=None, elapsed=elapsed)


def test_a_closed_breaker_costs_no_redis_call_after_the_first_view(redis_calls):
    up = Upstream()
    tickets = [up.ticket() for _ in range(20)]
    assert redis_calls == ["view"]
    assert len({(t.gen, t.probe, t.state) for t in tickets}) == 1
    assert (tickets[0].probe, tickets[0].state) == (False, CLOSED)
    for t in tickets:
        succeed(t)
        assert t.may_continue()
    assert redis_calls == ["view"]
    assert gate.entry(up.id, up.name, up.policy).pending == 20  # left for the sync thread to flush


def test_a_failing_attempt_is_recorded_and_opens_at_the_threshold(redis_calls):
    up = Upstream(consecutive_failures=2)
    ticket = up.ticket()
    fail(ticket)
    assert redis_calls == ["view", "fail"]
    assert (up.shared().state, up.shared().consec) == (CLOSED, 1)
    assert ticket.may_continue()
    fail(ticket)  # a retry of the same request fails too
    assert up.shared().state == OPEN
    assert not ticket.may_continue()

    del redis_calls[:]
    rejections = [up.check() for _ in range(5)]
    assert redis_calls == []  # rejected from memory
    for rejected in rejections:
        assert isinstance(rejected, gate.Refusal)
        assert rejected.reason == OPEN
        assert rejected.upstream == up.name
        assert 0 < rejected.retry_after <= 30


def test_a_connection_error_is_a_failure():
    up = Upstream(consecutive_failures=1)
    up.ticket().attempt_finished(status=None, error=ConnectionRefusedError(), elapsed=0.001)
    assert up.shared().state == OPEN
    events = redis_storage.pop_events(up.id)
    assert [e[4] for e in events] == ["1 consecutive failures (last: ConnectionRefusedError)"]


def test_404_and_a_fast_200_are_successes(redis_calls):
    up = Upstream(consecutive_failures=3)
    fail(up.ticket())
    assert up.shared().consec == 1
    succeed(up.ticket(), status=404)
    assert redis_calls[-1] == "ok"  # the first success after failures resets the shared count
    assert up.shared().consec == 0
    calls = len(redis_calls)
    succeed(up.ticket(), status=200)
    succeed(up.ticket(), status=404)
    assert len(redis_calls) == calls  # nothing left to reset
    for _ in range(2):
        fail(up.ticket())
        succeed(up.ticket(), status=404)
    assert up.shared().state == CLOSED


def test_a_slow_call_is_a_failure_when_slow_call_ms_is_set():
    up = Upstream(consecutive_failures=2, slow_call_ms=100)
    succeed(up.ticket(), elapsed=0.099)
    assert up.shared().consec == 0
    succeed(up.ticket(), elapsed=0.15)
    assert up.shared().consec == 1
    succeed(up.ticket(), elapsed=0.2)
    assert up.shared().state == OPEN
    (event,) = redis_storage.pop_events(up.id)
    assert event[4] == "2 consecutive failures (last: slow call 200 ms)"

    unlimited = Upstream(consecutive_failures=1, slow_call_ms=0)
    succeed(unlimited.ticket(), elapsed=30.0)
    assert unlimited.shared().state == CLOSED


def test_forced_open_rejects_without_redis(redis_calls):
    up = Upstream(mode=FORCED_OPEN, open_seconds=12.0)
    rejected = up.check()
    assert isinstance(rejected, gate.Refusal)
    assert (rejected.reason, rejected.retry_after) == (FORCED_OPEN, 12.0)
    assert redis_calls == []


def test_disabled_never_rejects_but_counts():
    up = Upstream(mode=DISABLED, consecutive_failures=2)
    for _ in range(6):
        ticket = up.ticket()
        assert ticket.state == DISABLED
        fail(ticket)
        assert ticket.may_continue()
    shared = up.shared()
    assert (shared.state, shared.consec) == (CLOSED, 6)


def test_shadow_never_rejects_but_the_shared_state_opens():
    up = Upstream(mode=SHADOW, consecutive_failures=2)
    for _ in range(6):
        ticket = up.ticket()
        fail(ticket)
        assert ticket.may_continue()
    assert up.shared().state == OPEN
    # In normal mode, the same shared state rejects.
    normal = gate.check(up.id, up.name, BreakerSettings(failure_rate=0, open_seconds=30.0))
    assert isinstance(normal, gate.Refusal)


def test_after_the_open_time_one_probe_goes_and_its_success_closes(redis_calls):
    up = Upstream(consecutive_failures=1, open_seconds=0.1, half_open_probes=1)
    fail(up.ticket())
    assert isinstance(up.check(), gate.Refusal)
    time.sleep(0.12)
    probe = up.ticket()
    assert (probe.probe, probe.state) == (True, "probe")
    assert redis_calls[-1] == "acquire"
    denied = up.check()
    assert isinstance(denied, gate.Refusal)
    assert denied.reason == HALF_OPEN
    succeed(probe)
    assert redis_calls[-1] == "ok"
    assert up.shared().state == CLOSED
    assert not up.ticket().probe


def test_a_failed_probe_reopens():
    up = Upstream(consecutive_failures=1, open_seconds=0.1, half_open_probes=1)
    fail(up.ticket())
    time.sleep(0.12)
    probe = up.ticket()
    fail(probe)
    assert up.shared().state == OPEN
    assert not probe.may_continue()
    assert isinstance(up.check(), gate.Refusal)


def test_a_view_older_than_the_one_held_is_not_adopted():
    up = Upstream()
    found = gate.entry(up.id, up.name, up.policy)
    found.adopt(View(OPEN, 3, 0, 30.0, transitioned=True))
    found.adopt(View(CLOSED, 2, 0, 0.0, transitioned=True))
    assert (found.view.state, found.view.gen) == (OPEN, 3)
    assert found.drain


def test_listeners_hear_state_changes_transitions_and_rejections(events):
    up = Upstream(consecutive_failures=1)
    fail(up.ticket())
    assert isinstance(up.check(), gate.Refusal)
    assert events == [
        StateSeen(up.name, CLOSED),  # the first view
        StateSeen(up.name, OPEN),
        Transitioned(up.name, CLOSED, OPEN),
        Rejected(up.name),
    ]


def test_listeners_hear_no_transition_for_a_change_seen_from_elsewhere(events):
    """Another worker's transition changes this worker's view (state) but is not its transition."""
    up = Upstream(consecutive_failures=1)
    up.ticket()
    RedisStorage().failed(BreakerId(up.id, up.name), up.policy, gen=None, what="elsewhere")
    found = gate.entry(up.id, up.name, up.policy)
    found.adopt(up.shared())
    assert events == [StateSeen(up.name, CLOSED), StateSeen(up.name, OPEN)]


def test_without_redis_a_local_breaker_still_opens_quickly(settings, events, redis_calls):
    store.reset_clients()
    settings.GATEWAY_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    try:
        up = Upstream(consecutive_failures=3)
        decisions = []
        for _ in range(5):
            started = time.monotonic()
            decision = up.check()
            if isinstance(decision, gate.Ticket):
                fail(decision)
            decisions.append(decision)
            assert time.monotonic() - started < 0.5
        assert [isinstance(d, gate.Ticket) for d in decisions] == [True, True, True, False, False]
        assert decisions[-1].reason == OPEN
        found = gate.entry(up.id, up.name, up.policy)
        assert found.on_local
        assert gate.local.breakers[up.id].state == OPEN
        assert redis_calls == ["view"]  # one attempt, then local decisions until LOCAL_FOR passes
        assert events[0] == RedisFailed(up.name)
        assert events.count(RedisFailed(up.name)) == 1
        assert DecidedLocally(up.name) in events
        assert Transitioned(up.name, CLOSED, OPEN) in events
        assert events.count(Rejected(up.name)) == 2
    finally:
        store.reset_clients()


@pytest.fixture
def redis_goes_away(settings):
    """Call it to point this process at a port where no Redis answers (as a Redis that died would)."""

    def away() -> None:
        store.reset_clients()
        settings.GATEWAY_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"

    yield away
    store.reset_clients()


def test_the_fallback_of_an_open_breaker_stays_open_until_its_own_timer(monkeypatch, redis_goes_away):
    """Without the change feed a view is read again before use; when that read fails, the worker's own breaker
    starts from the open state it knew, not closed (which let failures through to an upstream known bad)."""
    up = Upstream(consecutive_failures=1, open_seconds=30)
    fail(up.ticket())
    monkeypatch.setattr(gate, "feed_live", False)
    time.sleep(gate.timing.stale_after + 0.05)
    redis_goes_away()
    decisions = [up.check() for _ in range(10)]
    assert all(isinstance(d, gate.Refusal) and d.reason == OPEN for d in decisions), decisions
    assert 29 < decisions[0].retry_after <= 30
    found = gate.entry(up.id, up.name, up.policy)
    assert found.on_local
    assert gate.local.breakers[up.id].state == OPEN


def test_the_fallback_of_a_half_open_breaker_lets_one_probe_through_per_worker(redis_goes_away):
    up = Upstream(consecutive_failures=1, open_seconds=0.1, half_open_probes=3)
    fail(up.ticket())
    time.sleep(0.12)
    assert up.ticket().probe  # the shared breaker is half-open, one of its three probes issued
    redis_goes_away()
    decisions = [up.check() for _ in range(10)]
    tickets = [d for d in decisions if isinstance(d, gate.Ticket)]
    assert len(tickets) == 1
    assert tickets[0].probe
    succeed(tickets[0])
    assert gate.local.breakers[up.id].state == CLOSED
