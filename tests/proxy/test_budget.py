"""The retry budget (proxy.budget): retries at most a share of the last 10 seconds' requests, plus a minimum."""

from __future__ import annotations

from proxy.budget import RetryBudget


def retries_allowed(budget: RetryBudget, now: float, percent: int = 20, minimum: int = 3, tries: int = 1000) -> int:
    return sum(budget.try_retry(now, percent, minimum) for _ in range(tries))


def test_the_minimum_is_allowed_without_any_request():
    assert retries_allowed(RetryBudget(), 100.0) == 3


def test_retries_are_at_most_the_share_of_recent_requests():
    budget = RetryBudget()
    for _ in range(100):
        budget.request(100.0)
    assert retries_allowed(budget, 100.5) == 20
    for _ in range(50):
        budget.request(101.0)
    assert retries_allowed(budget, 101.0) == 10  # 20 % of 150 is 30: 10 more


def test_the_window_slides_and_old_requests_stop_counting():
    budget = RetryBudget()
    for _ in range(100):
        budget.request(100.0)
    assert retries_allowed(budget, 100.0) == 20
    assert retries_allowed(budget, 109.9) == 0  # still the same 10 s
    assert retries_allowed(budget, 110.0) == 3  # those requests and retries have left the window
    for _ in range(10):
        budget.request(130.0)
    assert budget.requests == 10


def test_a_bound_over_a_whole_outage():
    """Every request fails and wants two retries: over a minute, retries stay within 20 % plus the minimum."""
    budget, retries, requests = RetryBudget(), 0, 0
    for tick in range(6000):  # 100 requests a second for 60 s
        now = tick / 100
        budget.request(now)
        requests += 1
        retries += sum(budget.try_retry(now, 20, 3) for _ in range(2))
    assert retries <= requests * 0.2 + 3 * 7
    assert retries >= requests * 0.19
