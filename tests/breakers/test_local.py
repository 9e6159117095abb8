"""breakers.local_storage on an injected clock: the timing rules the contract suite can only sleep through.

The state machine itself is held to the Lua script's by tests/breakers/test_storage_contract.py.
"""

from __future__ import annotations

import pytest

from breakers.local_storage import LocalBreaker, LocalStorage
from breakers.policy import CLOSED, HALF_OPEN, OPEN, BreakerSettings
from breakers.storage import BreakerId


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock) -> LocalBreaker:
    return LocalBreaker(clock=clock)


def policy(**fields) -> BreakerSettings:
    return BreakerSettings(**{"failure_rate": 0, "open_seconds": 10.0, **fields})


def open_it(breaker: LocalBreaker, p: BreakerSettings) -> None:
    while breaker.state != OPEN:
        breaker.failed(p, None)


def test_open_rejects_for_exactly_the_open_time(breaker, clock):
    p = policy(consecutive_failures=1)
    assert breaker.acquire(p).granted  # closed
    open_it(breaker, p)
    denied = breaker.acquire(p)
    assert (denied.state, denied.granted, denied.open_remaining) == (OPEN, False, 10.0)
    clock.advance(9.5)
    denied = breaker.acquire(p)
    assert (denied.state, denied.granted, denied.open_remaining) == (OPEN, False, 0.5)
    clock.advance(0.5)
    assert breaker.acquire(p).state == HALF_OPEN


def test_unreported_probes_are_issued_again_after_exactly_the_open_time(breaker, clock):
    p = policy(consecutive_failures=1, half_open_probes=1)
    open_it(breaker, p)
    clock.advance(10)
    assert breaker.acquire(p).probe
    clock.advance(9.9)
    assert not breaker.acquire(p).granted
    clock.advance(0.1)
    again = breaker.acquire(p)
    assert (again.state, again.gen, again.granted, again.probe, again.transitioned) == (HALF_OPEN, 2, True, True, False)
    assert breaker.succeeded(p, 2).state == CLOSED


def test_the_failure_rate_is_judged_once_the_buckets_ended_a_second_ago(breaker, clock):
    p = policy(consecutive_failures=0, failure_rate=50, minimum_calls=10, window_seconds=60)
    breaker.flush(p, 5)
    assert [breaker.failed(p, None).state for _ in range(5)] == [CLOSED] * 5  # too young to judge
    clock.advance(1.5)
    assert breaker.flush(p, 0).state == CLOSED  # its bucket ended half a second ago
    clock.advance(1.5)
    opened = breaker.flush(p, 0)
    assert (opened.state, opened.transitioned) == (OPEN, True)  # 5 failures of 10 calls


def test_calls_older_than_the_window_do_not_count(breaker, clock):
    p = policy(consecutive_failures=0, failure_rate=50, minimum_calls=10, window_seconds=60)
    for _ in range(9):
        breaker.failed(p, None)
    clock.advance(61)
    breaker.failed(p, None)
    clock.advance(3)
    assert breaker.flush(p, 0).state == CLOSED  # 1 failure in the window: too few calls
    for _ in range(9):
        breaker.failed(p, None)
    clock.advance(3)
    assert breaker.flush(p, 0).state == OPEN  # 10 of 10


def test_old_buckets_are_dropped_so_memory_stays_bounded(breaker, clock):
    p = policy(consecutive_failures=0, failure_rate=50, minimum_calls=1_000_000, window_seconds=10)
    for _ in range(100):
        breaker.flush(p, 3)
        clock.advance(1)
    assert len(breaker.buckets) <= 13


def test_storage_keeps_one_breaker_per_upstream_and_forgets_on_request(clock):
    storage = LocalStorage(clock=clock)
    a, b = BreakerId(1, "a"), BreakerId(2, "b")
    p = policy(consecutive_failures=1)
    storage.failed(a, p, gen=None, what="x")
    assert (storage.view(a, p).state, storage.view(b, p).state) == (OPEN, CLOSED)
    storage.forget(a)
    assert storage.view(a, p).state == CLOSED
