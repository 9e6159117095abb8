"""breakers.local.LocalBreaker: a worker's own breaker while Redis is unavailable, on an injected clock."""

from __future__ import annotations

import pytest

from breakers.local import LocalBreaker
from breakers.policy import CLOSED, DISABLED, HALF_OPEN, OPEN, BreakerSettings


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
        breaker.fail(p, None)


# consecutive failures


def test_opens_at_the_consecutive_threshold(breaker):
    p = policy(consecutive_failures=3)
    views = [breaker.fail(p, None) for _ in range(3)]
    assert [(v.state, v.consec, v.transitioned) for v in views] == [
        (CLOSED, 1, False),
        (CLOSED, 2, False),
        (OPEN, 0, True),
    ]
    assert views[-1].gen == 1
    assert views[-1].open_remaining == 10.0


def test_a_success_resets_the_consecutive_count(breaker):
    p = policy(consecutive_failures=3)
    breaker.fail(p, None)
    breaker.fail(p, None)
    assert breaker.ok(p, None, probe=False).consec == 0
    assert [breaker.fail(p, None).state for _ in range(3)] == [CLOSED, CLOSED, OPEN]


def test_a_consecutive_threshold_of_zero_is_off(breaker):
    p = policy(consecutive_failures=0)
    assert {breaker.fail(p, None).state for _ in range(50)} == {CLOSED}


def test_a_result_of_an_earlier_generation_changes_nothing(breaker):
    p = policy(consecutive_failures=2)
    breaker.fail(p, 0)
    assert breaker.fail(p, 7).consec == 1
    assert breaker.ok(p, 7, probe=False).consec == 1
    assert len(breaker.calls) == 1


# open and half-open


def test_open_rejects_for_the_open_time(breaker, clock):
    p = policy(consecutive_failures=1)
    assert breaker.acquire(p).granted  # closed
    open_it(breaker, p)
    denied = breaker.acquire(p)
    assert (denied.state, denied.granted, denied.open_remaining) == (OPEN, False, 10.0)
    clock.advance(9.5)
    denied = breaker.acquire(p)
    assert (denied.state, denied.granted, denied.open_remaining) == (OPEN, False, 0.5)


def test_after_the_open_time_exactly_the_probes_are_granted_and_their_successes_close(breaker, clock):
    p = policy(consecutive_failures=1, half_open_probes=3)
    open_it(breaker, p)
    clock.advance(10)
    first = breaker.acquire(p)
    assert (first.state, first.granted, first.probe, first.transitioned, first.gen) == (HALF_OPEN, True, True, True, 2)
    rest = [breaker.acquire(p) for _ in range(4)]
    assert [(v.granted, v.probe) for v in rest] == [(True, True), (True, True), (False, False), (False, False)]
    assert not any(v.transitioned for v in rest)
    assert breaker.ok(p, 2, probe=False).state == HALF_OPEN  # not a probe: does not count
    assert [breaker.ok(p, 2, probe=True).state for _ in range(3)] == [HALF_OPEN, HALF_OPEN, CLOSED]
    assert breaker.gen == 3
    assert breaker.acquire(p).granted


def test_a_probe_failure_reopens(breaker, clock):
    p = policy(consecutive_failures=1, half_open_probes=2)
    open_it(breaker, p)
    clock.advance(10)
    probe = breaker.acquire(p)
    clock.advance(1)
    reopened = breaker.fail(p, probe.gen)
    assert (reopened.state, reopened.gen, reopened.transitioned, reopened.open_remaining) == (OPEN, 3, True, 10.0)
    assert not breaker.acquire(p).granted


def test_probes_that_never_report_are_issued_again_after_the_open_time(breaker, clock):
    p = policy(consecutive_failures=1, half_open_probes=1)
    open_it(breaker, p)
    clock.advance(10)
    assert breaker.acquire(p).probe
    clock.advance(9.9)
    assert not breaker.acquire(p).granted
    clock.advance(0.1)
    again = breaker.acquire(p)
    assert (again.state, again.gen, again.granted, again.probe, again.transitioned) == (HALF_OPEN, 2, True, True, False)
    assert not breaker.acquire(p).granted
    assert breaker.ok(p, 2, probe=True).state == CLOSED


# failure rate


def test_the_failure_rate_opens_only_with_the_minimum_calls(breaker):
    p = policy(consecutive_failures=0, failure_rate=50, minimum_calls=10, window_seconds=60)
    assert [breaker.fail(p, None).state for _ in range(9)] == [CLOSED] * 9  # 100% of 9 calls
    assert breaker.fail(p, None).state == OPEN


def test_the_failure_rate_opens_at_the_threshold_not_below(breaker):
    p = policy(consecutive_failures=0, failure_rate=50, minimum_calls=10, window_seconds=60)
    for _ in range(6):
        breaker.ok(p, None, probe=False)
    assert [breaker.fail(p, None).state for _ in range(5)] == [CLOSED] * 5  # 4 of 10, then 5 of 11
    assert breaker.fail(p, None).state == OPEN  # 6 of 12


def test_calls_older_than_the_window_do_not_count(breaker, clock):
    p = policy(consecutive_failures=0, failure_rate=50, minimum_calls=10, window_seconds=60)
    for _ in range(9):
        breaker.fail(p, None)
    clock.advance(61)
    assert breaker.fail(p, None).state == CLOSED
    assert len(breaker.calls) == 1
    for _ in range(9):
        breaker.fail(p, None)
    assert breaker.state == OPEN


def test_a_failure_rate_of_zero_never_opens(breaker):
    p = policy(consecutive_failures=0, failure_rate=0, minimum_calls=1)
    assert {breaker.fail(p, None).state for _ in range(30)} == {CLOSED}


def test_closing_forgets_the_counted_calls(breaker, clock):
    p = policy(consecutive_failures=1, failure_rate=50, minimum_calls=2, half_open_probes=1)
    open_it(breaker, p)
    clock.advance(10)
    breaker.acquire(p)
    assert breaker.ok(p, None, probe=True).state == CLOSED
    assert not breaker.calls
    assert breaker.ok(p, None, probe=False).state == CLOSED


def test_disabled_counts_but_never_transitions_as_the_script_does(breaker):
    p = policy(consecutive_failures=2, mode=DISABLED)
    views = [breaker.fail(p, None) for _ in range(5)]
    assert [v.state for v in views] == [CLOSED] * 5
