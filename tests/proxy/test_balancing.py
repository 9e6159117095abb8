"""Picking targets and passive health (proxy.balancing): pure logic, time given by the test."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from proxy.balancing import LEAST_REQUESTS, Balancer, CompiledTarget, OutlierPolicy, TargetState


def targets(*weights: int) -> tuple[CompiledTarget, ...]:
    return tuple(
        CompiledTarget(f"10.0.0.{i}:80", f"10.0.0.{i}", 80, weight, None, TargetState())
        for i, weight in enumerate(weights, start=1)
    )


def names(picks) -> str:
    return "".join("abcdefgh"[int(t.host.rsplit(".", 1)[1]) - 1] for t in picks)


def test_smooth_weighted_round_robin_spreads_the_heavy_targets_turns_as_nginx_does():
    balancer = Balancer(targets(5, 1, 1))
    assert names(balancer.pick(0.0) for _ in range(14)) == "aabacaa" * 2


def test_round_robin_matches_the_weights_exactly_over_a_cycle():
    balancer = Balancer(targets(50, 30, 20))
    assert Counter(names(balancer.pick(0.0) for _ in range(1000))) == {"a": 500, "b": 300, "c": 200}


def test_least_requests_sends_to_the_less_busy_of_two_per_unit_of_weight():
    group = targets(1, 1, 2)
    a, b, c = group
    a.state.outstanding, b.state.outstanding, c.state.outstanding = 5, 1, 3
    balancer = Balancer(group, algorithm=LEAST_REQUESTS, rng=random.Random(7))
    picks = Counter(names(balancer.pick(0.0) for _ in range(3000)))
    # a (5 per weight) loses every draw it is in; b (1) wins every draw; c (1.5) wins only against a.
    assert picks["a"] == 0
    assert picks["b"] == pytest.approx(2000, rel=0.1)
    assert picks["c"] == pytest.approx(1000, rel=0.15)


def test_a_retry_avoids_the_targets_this_request_tried():
    balancer = Balancer(targets(1, 1, 1))
    first = balancer.pick(0.0)
    second = balancer.pick(0.0, (first,))
    third = balancer.pick(0.0, (first, second))
    assert len({first, second, third}) == 3
    # Every target tried: any healthy one will do again.
    assert balancer.pick(0.0, (first, second, third)) in (first, second, third)


def test_consecutive_failures_eject_a_target_for_the_base_time_then_let_it_back():
    group = targets(1, 1, 1)
    balancer = Balancer(group, policy=OutlierPolicy(consecutive=3, base_seconds=10, max_percent=50))
    bad = group[0]
    assert not balancer.failed(bad, 100.0)
    balancer.succeeded(bad)  # a success in between starts the count again
    assert [balancer.failed(bad, 100.0) for _ in range(3)] == [False, False, True]
    assert bad not in {balancer.pick(105.0) for _ in range(20)}
    assert bad in {balancer.pick(110.0) for _ in range(20)}


def test_repeated_ejections_last_longer_up_to_the_maximum_and_time_in_service_pays_them_off():
    group = targets(1, 1)
    policy = OutlierPolicy(consecutive=1, base_seconds=10, max_seconds=25, max_percent=50)
    balancer = Balancer(group, policy=policy)
    bad = group[0]
    balancer.failed(bad, 0.0)
    assert bad.state.ejected_until == 10.0
    balancer.failed(bad, 10.0)  # back, and failing at once: twice the time
    assert bad.state.ejected_until == 30.0
    balancer.failed(bad, 30.0)  # three times, capped at 25 s
    assert bad.state.ejected_until == 55.0
    balancer.failed(bad, 55.0 + 25.0)  # 25 s in service paid two ejections off: 2 x 10 s
    assert bad.state.ejected_until == 80.0 + 20.0
    assert bad.state.total_ejections == 4


def test_at_most_the_set_share_of_targets_is_ejected_and_one_always_may_be():
    group = targets(1, 1, 1, 1)
    balancer = Balancer(group, policy=OutlierPolicy(consecutive=1, base_seconds=10, max_percent=10))
    assert balancer.failed(group[0], 0.0)  # 10 % of 4 is 0: one may be ejected all the same
    assert not balancer.failed(group[1], 0.0)
    balancer = Balancer(targets(1, 1, 1, 1), policy=OutlierPolicy(consecutive=1, max_percent=50))
    assert [balancer.failed(t, 0.0) for t in balancer.targets] == [True, True, False, False]


def test_when_every_target_is_out_the_pick_ignores_health():
    group = targets(1, 1)
    for target in group:
        target.state.ejected_until = 100.0
    balancer = Balancer(group)
    assert {balancer.pick(50.0) for _ in range(4)} == set(group)
    group[1].state.active_healthy = False
    group[0].state.ejected_until = 0.0
    assert {balancer.pick(50.0) for _ in range(4)} == {group[0]}


def test_a_single_target_is_never_ejected():
    (only,) = group = targets(1)
    balancer = Balancer(group, policy=OutlierPolicy(consecutive=1))
    assert not any(balancer.failed(only, 0.0) for _ in range(10))
    assert balancer.pick(0.0) is only


def test_ejection_off():
    group = targets(1, 1)
    balancer = Balancer(group, policy=OutlierPolicy(consecutive=0))
    assert not any(balancer.failed(group[0], 0.0) for _ in range(100))


def test_without_active_checks_the_active_flag_is_not_consulted():
    group = targets(1, 1)
    group[1].state.active_healthy = False  # left by a verdict of a configuration that had checks
    unchecked, checked = Balancer(group, checked=False), Balancer(group)
    assert {unchecked.pick(0.0) for _ in range(4)} == set(group)
    assert {checked.pick(0.0) for _ in range(4)} == {group[0]}
