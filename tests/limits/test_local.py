"""The per-worker fallback limiter (limits.local.LocalLimiter), driven by a fake clock."""

from __future__ import annotations

import pytest

from limits.local import LocalLimiter


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def limiter(clock):
    return LocalLimiter(clock=clock)


def log_hit(limiter, key="k", *, limit=3, window=10):
    return limiter.hit(key, algorithm="L", limit=limit, window=window, burst=limit)


def gcra_hit(limiter, key="k", *, limit=10, window=10, burst=3):
    return limiter.hit(key, algorithm="G", limit=limit, window=window, burst=burst)


# sliding log


def test_sliding_log_allows_exactly_the_limit(limiter):
    assert [log_hit(limiter) for _ in range(5)] == [
        (True, 2, 0.0),
        (True, 1, 0.0),
        (True, 0, 0.0),
        (False, 0, 10.0),
        (False, 0, 10.0),
    ]


def test_sliding_log_retry_after_is_when_the_oldest_counted_request_leaves(limiter, clock):
    for _ in range(3):
        log_hit(limiter)
        clock.advance(1)
    # Counted at 1000, 1001, 1002; now 1003.
    assert log_hit(limiter) == (False, 0, 7.0)
    clock.advance(6.5)
    assert log_hit(limiter) == (False, 0, 0.5)


def test_sliding_log_window_expiry_is_exact(limiter, clock):
    for _ in range(3):
        log_hit(limiter)
        clock.advance(1)
    clock.now = 1009.999
    assert log_hit(limiter)[0] is False
    clock.now = 1010.0  # the request counted at 1000 leaves the window exactly now (as in check.lua)
    assert log_hit(limiter) == (True, 0, 0.0)
    assert log_hit(limiter)[0] is False
    clock.now = 1011.0
    assert log_hit(limiter) == (True, 0, 0.0)


def test_sliding_log_rejected_requests_are_not_counted(limiter, clock):
    for _ in range(3):
        log_hit(limiter)
    for _ in range(50):
        clock.advance(0.1)
        assert log_hit(limiter)[0] is False
    clock.now = 1010.0
    assert [log_hit(limiter)[0] for _ in range(4)] == [True, True, True, False]


def test_sliding_log_counts_each_key_separately(limiter):
    for _ in range(3):
        log_hit(limiter, "a")
    assert log_hit(limiter, "a")[0] is False
    assert log_hit(limiter, "b") == (True, 2, 0.0)


# GCRA


def test_gcra_burst_then_steady_rate(limiter, clock):
    """10 per 10 s is one per second, with bursts of 3."""
    assert [gcra_hit(limiter) for _ in range(4)] == [
        (True, 2, 0.0),
        (True, 1, 0.0),
        (True, 0, 0.0),
        (False, 0, 1.0),
    ]
    clock.advance(1)
    assert gcra_hit(limiter) == (True, 0, 0.0)
    assert gcra_hit(limiter) == (False, 0, 1.0)
    clock.advance(0.25)
    assert gcra_hit(limiter) == (False, 0, 0.75)
    allowed = 0
    for _ in range(100):  # 10 s at 10 requests per second: one per second gets through
        clock.advance(0.1)
        allowed += gcra_hit(limiter)[0]
    assert allowed == 10


def test_gcra_quiet_period_restores_the_burst(limiter, clock):
    for _ in range(5):
        gcra_hit(limiter)
    clock.advance(60)
    assert [gcra_hit(limiter)[0] for _ in range(4)] == [True, True, True, False]


def test_gcra_burst_defaults_to_the_limit(limiter):
    results = [gcra_hit(limiter, limit=5, window=60, burst=5) for _ in range(6)]
    assert [r[1] for r in results] == [4, 3, 2, 1, 0, 0]
    assert results[-1] == (False, 0, 12.0)


# memory bound


def test_least_recently_used_key_is_dropped_past_max_keys(clock):
    limiter = LocalLimiter(clock=clock, max_keys=2)
    for key in ("a", "b"):
        for _ in range(3):
            log_hit(limiter, key)
    log_hit(limiter, "a")  # a rejected request still uses "a": "b" is now the least recently used
    log_hit(limiter, "c")
    assert len(limiter._state) == 2
    assert log_hit(limiter, "a")[0] is False  # kept, still full
    assert log_hit(limiter, "b") == (True, 2, 0.0)  # forgotten: counts from zero


def test_gcra_keys_are_bounded_too(clock):
    limiter = LocalLimiter(clock=clock, max_keys=3)
    for index in range(10):
        gcra_hit(limiter, f"k{index}")
    assert list(limiter._state) == ["k7", "k8", "k9"]


def test_gcra_rejected_key_counts_as_recently_used(clock):
    limiter = LocalLimiter(clock=clock, max_keys=2)
    for _ in range(3):
        gcra_hit(limiter, "abuser")
    gcra_hit(limiter, "idle")
    assert gcra_hit(limiter, "abuser")[0] is False  # still active, just rejected
    gcra_hit(limiter, "newcomer")
    assert gcra_hit(limiter, "abuser")[0] is False
