"""One contract for breakers.storage: the Lua script on a real Redis and on the embedded store (fakeredis with
Lua), and the worker's own LocalStorage, driven through the same interface.

Time is the backend's (Redis TIME, or the wall clock for LocalStorage); tests that need the open time to pass
sleep (open_seconds=0.2), and failure-rate tests that need old buckets write them into the window themselves
(for Redis, the layout documented at the top of the script: per bucket, i<slot> holds the bucket number,
c<slot> its calls and f<slot> its failures). What only Redis does (transition events, TTLs, messages) is tested
on the two Redis backends only.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable

import fakeredis
import pytest
import redis

from breakers import redis_storage
from breakers.local_storage import LocalStorage
from breakers.policy import CLOSED, DISABLED, HALF_OPEN, OPEN, BreakerSettings
from breakers.redis_storage import RedisStorage
from breakers.storage import BreakerId, View
from gateway_project import store
from tests.support.config import storage_op

_ids = itertools.count(1000)


class Breaker:
    """One upstream's breaker on one backend."""

    def __init__(self, backend, **fields) -> None:
        self.backend = backend
        self.storage = backend.storage
        self.client = backend.client  # None for LocalStorage
        self.id = next(_ids)
        self.name = f"up{self.id}"
        self.ref = BreakerId(self.id, self.name)
        self.policy = BreakerSettings(**{"failure_rate": 0, **fields})

    def __call__(self, op: str, *, gen: int | None = None, extra: str = "", **overrides) -> View:
        policy = BreakerSettings(**{**_fields(self.policy), **overrides}) if overrides else self.policy
        return storage_op(self.storage, self.ref, policy, op, extra, gen=gen)

    @property
    def base(self) -> int:
        """Where this breaker's generations start: 0 in a worker's memory; in Redis, the Redis time (ms) when
        its state was first written (a lifetime; see lua/breaker.lua)."""
        if self.client is None:
            return 0
        return int(self.client.hget(self.keys[0], "base"))

    def g(self, n: int) -> int:
        """The n-th generation of this breaker's lifetime."""
        return self.base + n

    def rel(self, gen: int) -> int:
        """Which generation of the lifetime `gen` is."""
        return gen - self.base

    @property
    def keys(self) -> list[str]:
        return redis_storage.keys(self.id)

    def state(self) -> dict:
        """Everything the backend holds about this breaker besides its window."""
        if self.client is None:
            local = self.storage.breakers.get(self.id)
            fields = ("state", "gen", "consec", "opened", "half_opened", "issued", "probe_ok")
            return {} if local is None else {f: getattr(local, f) for f in fields}
        return {k.decode(): v.decode() for k, v in self.client.hgetall(self.keys[0]).items()}

    def window(self) -> dict[str, int]:
        if self.client is None:
            local = self.storage.breakers.get(self.id)
            slots = self.geometry()[1]
            window = {}
            for bucket, (calls, failures) in (local.buckets if local else {}).items():
                slot = bucket % slots
                window.update({f"i{slot}": bucket, f"c{slot}": calls, f"f{slot}": failures})
            return window
        return {k.decode(): int(v) for k, v in self.client.hgetall(self.keys[1]).items()}

    def geometry(self) -> tuple[int, int]:
        """(bucket width in seconds, number of slots), as the script computes them."""
        window = self.policy.window_seconds
        width = max(1, math.ceil(window / 60))
        return width, math.ceil(window / width) + 2

    def now(self) -> float:
        if self.client is None:
            return self.storage.clock()
        seconds, micros = self.client.time()
        return seconds + micros / 1e6

    def current_bucket(self) -> int:
        return int(self.now() // self.geometry()[0])

    def seed(self, age: int, calls: int, failures: int) -> None:
        """Write counts into the bucket `age` buckets before the current one."""
        bucket = self.current_bucket() - age
        if self.client is None:
            self.storage.breaker(self.ref).buckets[bucket] = [calls, failures]
            return
        slot = bucket % self.geometry()[1]
        self.client.hset(self.keys[1], mapping={f"i{slot}": bucket, f"c{slot}": calls, f"f{slot}": failures})
        self.client.pexpire(self.keys[1], 60_000)


def _fields(policy: BreakerSettings) -> dict:
    return {name: getattr(policy, name) for name in policy.__dataclass_fields__}


def in_one_bucket(make: Callable[[], Breaker], action: Callable[[Breaker], object]):
    """Run `action` on a fresh breaker within one bucket; again on another one if a bucket ended meanwhile."""
    for _ in range(3):
        breaker = make()
        before = breaker.current_bucket()
        result = action(breaker)
        if breaker.current_bucket() == before:
            return breaker, result
    raise AssertionError("the bucket changed during every attempt")


class Backend:
    def __init__(self, storage, client) -> None:
        self.storage = storage
        self.client = client


def _redis_backend(kind: str, request, monkeypatch) -> Backend:
    """redis-py's client on the suite's real Redis, or fakeredis; pop_events (the operations client) reads it."""
    if kind == "redis":
        client = redis.Redis.from_url(request.getfixturevalue("redis_server").url)
    else:
        client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    monkeypatch.setattr(store, "ops_client", lambda: client)
    request.addfinalizer(client.close)
    return Backend(RedisStorage(client), client)


@pytest.fixture(params=["redis", "fakeredis", "local"])
def backend(request, redis_prefix, monkeypatch) -> Backend:
    if request.param == "local":
        return Backend(LocalStorage(clock=time.time), None)
    return _redis_backend(request.param, request, monkeypatch)


@pytest.fixture(params=["redis", "fakeredis"])
def redis_backend(request, redis_prefix, monkeypatch) -> Backend:
    """For what only the shared state does: transition events, key TTLs, messages."""
    return _redis_backend(request.param, request, monkeypatch)


# consecutive failures


def test_opens_at_the_consecutive_threshold(backend):
    b = Breaker(backend, consecutive_failures=3, open_seconds=30)
    first, second = b("fail", extra="status 503"), b("fail", extra="status 503")
    assert [(v.state, v.consec, v.transitioned) for v in (first, second)] == [(CLOSED, 1, False), (CLOSED, 2, False)]
    opened = b("fail", extra="status 502")
    assert (opened.state, b.rel(opened.gen), opened.consec, opened.transitioned) == (OPEN, 1, 0, True)
    assert 29 < opened.open_remaining <= 30
    assert b("view").state == OPEN


def test_a_success_resets_the_consecutive_count(backend):
    b = Breaker(backend, consecutive_failures=3)
    b("fail", extra="x")
    assert b("fail", extra="x").consec == 2
    reset = b("ok")
    assert (reset.state, reset.consec, b.rel(reset.gen), reset.transitioned) == (CLOSED, 0, 0, False)
    assert [b("fail", extra="x").state for _ in range(2)] == [CLOSED, CLOSED]
    assert b("fail", extra="x").state == OPEN


def test_a_result_of_an_earlier_generation_changes_nothing(backend):
    b = Breaker(backend, consecutive_failures=1, open_seconds=0, half_open_probes=1)
    assert b.rel(b("fail", gen=0, extra="x").gen) == 1  # open
    probing = b("acquire")
    assert (probing.state, b.rel(probing.gen), probing.probe) == (HALF_OPEN, 2, True)
    state_before, window_before = b.state(), b.window()
    for stale in (b.g(0), b.g(1)):
        failed = b("fail", gen=stale, extra="late")
        assert (failed.state, b.rel(failed.gen), failed.transitioned) == (HALF_OPEN, 2, False)
        assert b("ok", gen=stale).state == HALF_OPEN  # a late success is no probe success either
    assert b.state() == state_before
    assert b.window() == window_before
    closed = b("ok", gen=b.g(2))
    assert (closed.state, b.rel(closed.gen), closed.transitioned) == (CLOSED, 3, True)
    # Closed again: a failure of the open cycle is not counted.
    assert b("fail", gen=b.g(1), extra="late").consec == 0


# open and half-open


def test_acquire_while_open_is_denied_with_the_time_left(backend):
    b = Breaker(backend, consecutive_failures=1, open_seconds=30)
    closed = b("acquire")
    assert (closed.state, closed.granted, closed.probe) == (CLOSED, True, False)
    b("fail", extra="x")
    for _ in range(3):
        denied = b("acquire")
        assert (denied.state, denied.granted, denied.probe, denied.transitioned) == (OPEN, False, False, False)
        assert 0 < denied.open_remaining <= 30


def test_after_the_open_time_exactly_the_probes_are_granted_and_their_successes_close(backend):
    b = Breaker(backend, consecutive_failures=1, open_seconds=0.2, half_open_probes=2)
    b("fail", extra="x")
    assert not b("acquire").granted
    time.sleep(0.22)
    first = b("acquire")
    assert (first.state, first.granted, first.probe, first.transitioned) == (HALF_OPEN, True, True, True)
    assert b.rel(first.gen) == 2
    second = b("acquire")
    assert (second.state, second.granted, second.probe, second.transitioned) == (HALF_OPEN, True, True, False)
    assert [(v.granted, v.probe) for v in (b("acquire"), b("acquire"))] == [(False, False), (False, False)]
    one = b("ok", gen=b.g(2))
    assert (one.state, one.transitioned) == (HALF_OPEN, False)
    closed = b("ok", gen=b.g(2))
    assert (closed.state, b.rel(closed.gen), closed.transitioned) == (CLOSED, 3, True)
    assert b("acquire").granted


def test_a_probe_failure_reopens(backend):
    b = Breaker(backend, consecutive_failures=1, open_seconds=0.2, half_open_probes=2)
    b("fail", extra="x")
    time.sleep(0.22)
    probe = b("acquire")
    assert probe.state == HALF_OPEN
    reopened = b("fail", gen=probe.gen, extra="status 503")
    assert (reopened.state, reopened.gen, reopened.transitioned) == (OPEN, probe.gen + 1, True)
    assert 0.1 < reopened.open_remaining <= 0.2
    denied = b("acquire")
    assert (denied.state, denied.granted) == (OPEN, False)


def test_probes_that_never_report_are_issued_again_after_the_open_time(backend):
    b = Breaker(backend, consecutive_failures=1, open_seconds=0.2, half_open_probes=1)
    b("fail", extra="x")
    time.sleep(0.22)
    probe = b("acquire")
    assert (probe.granted, probe.probe) == (True, True)
    assert not b("acquire").granted
    time.sleep(0.22)  # the probe never reported
    again = b("acquire")
    assert (again.state, again.gen, again.granted, again.probe, again.transitioned) == (
        HALF_OPEN,
        probe.gen,
        True,
        True,
        False,
    )
    assert not b("acquire").granted
    assert b("ok", gen=probe.gen).state == CLOSED


# reset and events


def test_reset_closes_from_any_state(backend):
    b = Breaker(backend, consecutive_failures=1, open_seconds=0, half_open_probes=1)
    views = [b(op, extra=extra) for op, extra in RESET_STEPS]
    assert [(v.state, b.rel(v.gen)) for v in views] == [
        (CLOSED, 1),
        (OPEN, 2),
        (CLOSED, 3),
        (OPEN, 4),
        (HALF_OPEN, 5),
        (CLOSED, 6),
    ]
    assert all(v.transitioned for v in views)
    assert b("view").consec == 0
    assert b.window() == {}  # closing clears the window


RESET_STEPS = [
    ("reset", "cli:alice"),
    ("fail", "status 503"),
    ("reset", "admin:bob"),
    ("fail", "ConnectTimeoutError"),
    ("acquire", ""),
    ("reset", "admin:carol"),
]


def test_every_shared_transition_is_an_event_with_its_reason_and_actor(redis_backend):
    b = Breaker(redis_backend, consecutive_failures=1, open_seconds=0, half_open_probes=1)
    for op, extra in RESET_STEPS:
        b(op, extra=extra)
    events = redis_storage.pop_events(b.id)
    assert [e[1:] for e in events] == [
        (CLOSED, CLOSED, "cli:alice", "reset by cli:alice"),
        (CLOSED, OPEN, "", "1 consecutive failures (last: status 503)"),
        (OPEN, CLOSED, "admin:bob", "reset by admin:bob"),
        (CLOSED, OPEN, "", "1 consecutive failures (last: ConnectTimeoutError)"),
        (OPEN, HALF_OPEN, "", "open for 0.0 s"),
        (HALF_OPEN, CLOSED, "admin:carol", "reset by admin:carol"),
    ]
    stamps = [e[0] for e in events]
    assert stamps == sorted(stamps)
    assert abs(stamps[-1] / 1000 - b.now()) < 5  # the server's clock, in milliseconds
    assert redis_storage.pop_events(b.id) == []  # taken off the list


def test_reset_clears_the_consecutive_count_and_the_window(backend):
    b = Breaker(backend, consecutive_failures=5)
    b("flush", extra="4")
    b("fail", extra="x")
    b("fail", extra="x")
    assert b("view").consec == 2
    assert b.window() != {}
    reset = b("reset", extra="me")
    assert (reset.state, reset.consec) == (CLOSED, 0)
    assert b.window() == {}


# failure rate


def test_flush_adds_calls_to_the_current_bucket(backend):
    def make():
        return Breaker(backend, failure_rate=50, minimum_calls=1, window_seconds=10, consecutive_failures=0)

    b = make()
    assert b("flush", extra="0").state == CLOSED
    assert b.window() == {}  # nothing to count, nothing written

    def count(b):
        b("flush", extra="7")
        b("fail", extra="x")
        b("flush", extra="2")
        return b.current_bucket()

    b, bucket = in_one_bucket(make, count)
    slot = bucket % b.geometry()[1]
    assert b.window() == {f"i{slot}": bucket, f"c{slot}": 10, f"f{slot}": 1}
    # 1 failure of 10 calls, and too young to be judged anyway.
    assert b("view").state == CLOSED


def test_the_failure_rate_judges_only_buckets_that_ended_a_second_ago(backend):
    def judge(b):
        b.seed(0, 10, 10)  # the current bucket
        b.seed(1, 10, 10)  # ended less than a second ago
        young = b("flush", extra="0")
        b.seed(2, 10, 6)
        return young, b("flush", extra="0")

    b, (young, opened) = in_one_bucket(
        lambda: Breaker(backend, failure_rate=50, minimum_calls=10, window_seconds=10, consecutive_failures=0), judge
    )
    assert young.state == CLOSED
    assert (opened.state, opened.transitioned) == (OPEN, True)
    if b.client is not None:
        (event,) = redis_storage.pop_events(b.id)
        assert event[1:] == (CLOSED, OPEN, "", "failure rate 60% of 10 calls")


def test_a_failure_judges_the_rate_too_and_names_the_last_failure(backend):
    b = Breaker(backend, failure_rate=50, minimum_calls=10, window_seconds=10, consecutive_failures=0)
    b.seed(3, 10, 5)
    opened = b("fail", extra="status 504")
    assert (opened.state, opened.transitioned) == (OPEN, True)
    if b.client is not None:
        (event,) = redis_storage.pop_events(b.id)
        assert event[4] == "failure rate 50% of 10 calls (last: status 504)"


def test_the_failure_rate_needs_the_minimum_calls(backend):
    b = Breaker(backend, failure_rate=50, minimum_calls=10, window_seconds=10, consecutive_failures=0)
    b.seed(2, 9, 9)
    assert b("flush", extra="0").state == CLOSED
    assert b("fail", extra="x").state == CLOSED  # the current bucket does not count yet
    b.seed(4, 1, 0)  # (not the slot of the first seed, should a second have passed meanwhile)
    assert b("flush", extra="0").state == OPEN  # 9 failures of 10 calls


def test_the_failure_rate_opens_at_the_threshold_not_below(backend):
    below = Breaker(backend, failure_rate=50, minimum_calls=10, window_seconds=10, consecutive_failures=0)
    below.seed(2, 10, 4)
    assert below("flush", extra="0").state == CLOSED
    at = Breaker(backend, failure_rate=50, minimum_calls=10, window_seconds=10, consecutive_failures=0)
    at.seed(2, 10, 5)
    assert at("flush", extra="0").state == OPEN


def test_buckets_older_than_the_window_do_not_count(backend):
    def judge(b):
        b.seed(11, 10, 10)  # before the window
        gone = b("flush", extra="0")
        b.seed(10, 10, 10)  # the oldest bucket of the window
        return gone, b("flush", extra="0")

    _, (gone, oldest) = in_one_bucket(
        lambda: Breaker(backend, failure_rate=50, minimum_calls=10, window_seconds=10, consecutive_failures=0), judge
    )
    assert (gone.state, oldest.state) == (CLOSED, OPEN)


def test_a_reused_slot_holding_an_old_bucket_does_not_count(backend):
    """12 slots for a 10 s window: the current bucket's slot may still hold the bucket of 12 s ago."""
    b = Breaker(backend, failure_rate=50, minimum_calls=10, window_seconds=10, consecutive_failures=0)
    assert b.geometry() == (1, 12)
    b.seed(12, 100, 100)
    b.seed(13, 100, 100)
    b.seed(14, 100, 100)
    assert b("flush", extra="0").state == CLOSED


def test_a_failure_rate_of_zero_never_opens(backend):
    b = Breaker(backend, failure_rate=0, minimum_calls=1, window_seconds=10, consecutive_failures=0)
    b.seed(2, 50, 50)
    assert b("flush", extra="0").state == CLOSED
    assert [b("fail", extra="x").state for _ in range(20)] == [CLOSED] * 20
    assert b("view").consec == 20


def test_a_large_window_uses_wider_buckets(backend):
    """window 120 s: 2-second buckets; the rate still counts only buckets that ended a second ago."""
    b = Breaker(backend, failure_rate=50, minimum_calls=10, window_seconds=120, consecutive_failures=0)
    assert b.geometry() == (2, 62)
    b.seed(2, 10, 10)
    assert b("flush", extra="0").state == OPEN


# disabled: counts, never transitions


def test_disabled_counts_but_never_transitions(backend):
    b = Breaker(backend, consecutive_failures=2, failure_rate=50, minimum_calls=1, window_seconds=10, mode=DISABLED)
    views = [b("fail", extra="x") for _ in range(5)]
    assert [(v.state, v.consec, v.transitioned) for v in views] == [(CLOSED, n, False) for n in range(1, 6)]
    b.seed(2, 10, 10)
    assert b("flush", extra="3").state == CLOSED
    assert sum(v for k, v in b.window().items() if k.startswith("f")) == 15

    # Opened in normal mode, then disabled: stays open however long, a probe result changes nothing.
    other = Breaker(backend, consecutive_failures=1, open_seconds=0, half_open_probes=1)
    other("fail", extra="x")
    assert other("acquire", mode=DISABLED).state == OPEN
    probing = other("acquire")
    assert probing.state == HALF_OPEN
    assert other("fail", gen=probing.gen, extra="x", mode=DISABLED).state == HALF_OPEN
    assert other("ok", gen=probing.gen, mode=DISABLED).state == HALF_OPEN
    if b.client is not None:
        assert redis_storage.pop_events(b.id) == []


# keys and messages


def test_a_view_of_an_unknown_breaker_writes_nothing(backend):
    b = Breaker(backend)
    view = b("view")
    assert (view.state, view.consec, view.open_remaining) == (CLOSED, 0, 0.0)
    assert b("view").gen >= view.gen  # never lower than a generation seen before
    assert b("acquire").granted
    assert b("ok").state == CLOSED
    assert b.window() == {}
    if b.client is not None:
        assert not any(b.client.exists(k) for k in b.keys)


def test_every_key_written_has_a_ttl(redis_backend, redis_prefix):
    client = redis_backend.client
    b = Breaker(
        redis_backend, consecutive_failures=2, failure_rate=50, window_seconds=10, open_seconds=0, minimum_calls=5
    )
    b("flush", extra="3")
    b("fail", extra="x")
    b("fail", extra="x")
    b("acquire")
    b("fail", gen=2, extra="x")
    b("flush", extra="1")
    written = sorted(k.decode() for k in client.scan_iter(match=f"{{{redis_prefix}:br:*"))
    assert written == sorted(b.keys)
    limits = {
        b.keys[0]: 0 + 10_000 + 3_600_000,  # open + window + an hour
        b.keys[1]: (10 + 2 + 5) * 1000,
        b.keys[2]: 7 * 86_400_000,
    }
    for key, limit in limits.items():
        assert 0 < client.pttl(key) <= limit, key


def test_transitions_and_consecutive_count_changes_are_published(redis_backend):
    client = redis_backend.client
    b = Breaker(redis_backend, consecutive_failures=2, open_seconds=30)
    pubsub = client.pubsub()
    pubsub.subscribe(redis_storage.channel())
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    b("view")
    b("fail", extra="x")  # consec 1
    b("ok")  # consec 0
    b("ok")  # nothing changed
    b("flush", extra="5")  # counts only
    b("fail", extra="x")
    b("fail", extra="x")  # opens
    b("acquire")  # denied: nothing changed
    b("reset", extra="me")
    messages = []
    while (message := pubsub.get_message(timeout=0.2)) is not None:
        messages.append(redis_storage.parse_message(message["data"]))
    pubsub.close()
    assert {upstream_id for upstream_id, _ in messages} == {b.id}
    views = [v for _, v in messages]
    assert [(v.state, b.rel(v.gen), v.consec, v.transitioned) for v in views] == [
        (CLOSED, 0, 1, False),
        (CLOSED, 0, 0, False),
        (CLOSED, 0, 1, False),
        (OPEN, 1, 0, True),
        (CLOSED, 2, 0, True),
    ]
    assert 29 < views[3].open_remaining <= 30


def test_a_malformed_message_parses_to_none():
    assert redis_storage.parse_message(b"1|open|2|0|100|1") == (1, View(OPEN, 2, 0, 0.1, True, True))
    for garbage in (b"", b"hello", b"x|open|1|0|0|1", b"1|open|1|0|0", b"\xff\xfe"):
        assert redis_storage.parse_message(garbage) is None


def test_the_reply_names_the_state_before_the_call(backend):
    b = Breaker(backend, consecutive_failures=1, open_seconds=0, half_open_probes=1)
    views = [b("view"), b("fail", extra="x"), b("acquire"), b("ok", gen=b.g(2)), b("reset", extra="me")]
    assert [(v.from_state, v.state) for v in views] == [
        (CLOSED, CLOSED),
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
        (CLOSED, CLOSED),
    ]
