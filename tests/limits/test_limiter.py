"""limits.limiter: counter buckets, decisions from the real Redis, and the failure modes without it."""

from __future__ import annotations

import hashlib
import re
import time

import pytest

from gateway_project import store
from limits import limiter
from limits.compiled import CompiledPolicy, ConsumerInfo, compile_policy
from limits.models import RateLimitPolicy
from tests.support.servers import free_port

CLIENT = "203.0.113.7"


def make_policy(id: int = 7, **fields) -> CompiledPolicy:
    """Compiled from an unsaved policy; call it inside the test, after the fixtures set the Redis prefix."""
    fields = {"name": f"p{id}", "scope": "global", "key_by": "ip", "limit": 3, "window_seconds": 60, **fields}
    return compile_policy(RateLimitPolicy(id=id, **fields))


def check(*policies: CompiledPolicy, client_ip: str = CLIENT, consumer=None, route_id: int = 1, environ=None):
    return limiter.check(policies, client_ip=client_ip, consumer=consumer, route_id=route_id, environ=environ or {})


def bucket(policy: CompiledPolicy, *, client_ip: str = CLIENT, consumer=None, route_id: int = 1, environ=None):
    return limiter.bucket(policy, client_ip=client_ip, consumer=consumer, route_id=route_id, environ=environ or {})


@pytest.fixture
def outcomes(monkeypatch):
    """Every Outcome the limiter hands its listeners during the test."""
    seen = []
    monkeypatch.setattr(limiter, "listeners", [*limiter.listeners, seen.append])
    return seen


@pytest.fixture
def redis_down(settings, redis_prefix):
    """Redis on a port nobody listens on: connections are refused."""
    store.reset_clients()
    settings.GATEWAY_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    yield
    store.reset_clients()


# buckets


def test_bucket_by_ip():
    assert bucket(make_policy()) == f"ip:<{CLIENT}>"


def test_ipv6_clients_are_counted_per_64():
    policy = make_policy()
    assert bucket(policy, client_ip="2001:db8::1") == "ip:<2001:db8::/64>"
    assert bucket(policy, client_ip="2001:db8::ffff") == "ip:<2001:db8::/64>"
    assert bucket(policy, client_ip="2001:db8:0:1::1") == "ip:<2001:db8:0:1::/64>"


def test_bucket_by_consumer_falls_back_to_ip_when_anonymous():
    policy = make_policy(key_by="consumer")
    assert bucket(policy, consumer=ConsumerInfo(3, "acme")) == "consumer:<acme>"
    assert bucket(policy, consumer=ConsumerInfo(4, "globex")) == "consumer:<globex>"
    assert bucket(policy, consumer=None) == f"ip:<{CLIENT}>"


def test_bucket_by_header_is_hashed_and_falls_back_to_ip():
    policy = make_policy(key_by="header", header_name="X-Tenant")
    value = "tenant-with-a-long-identifying-value"
    counted = bucket(policy, environ={"HTTP_X_TENANT": value})
    assert counted == f"header:<{hashlib.sha256(value.encode()).hexdigest()[:16]}>"
    assert re.fullmatch(r"header:<[0-9a-f]{16}>", counted)
    assert bucket(policy, environ={"HTTP_X_TENANT": "other"}) != counted
    assert bucket(policy, environ={}) == f"ip:<{CLIENT}>"
    assert bucket(policy, environ={"HTTP_X_TENANT": ""}) == f"ip:<{CLIENT}>"
    assert bucket(policy, environ={"HTTP_X_OTHER": value}) == f"ip:<{CLIENT}>"


def test_bucket_by_route():
    policy = make_policy(key_by="route")
    assert bucket(policy, route_id=12) == "route:<12>"
    assert bucket(policy, route_id=12, client_ip="198.51.100.1", consumer=ConsumerInfo(3, "acme")) == "route:<12>"


# decisions from Redis


def test_counters_live_under_a_hash_tag_of_the_prefix_and_the_client(redis_prefix, redis_client):
    policy = make_policy()
    check(policy)
    assert redis_client.exists(f"{{{redis_prefix}:ip:<{CLIENT}>}}:rl:7:L")
    gcra = make_policy(8, algorithm="gcra")
    check(gcra)
    assert redis_client.exists(f"{{{redis_prefix}:ip:<{CLIENT}>}}:rl:8:G")


def test_allowed_then_rejected_with_results_per_policy(redis_prefix):
    loose, strict = make_policy(1, limit=5), make_policy(2, limit=2)
    first = check(loose, strict)
    assert [(r.allowed, r.remaining, r.decision, r.known) for r in first.results] == [
        (True, 4, "allowed", True),
        (True, 1, "allowed", True),
    ]
    assert all(r.reset == 60 and r.retry_after == 0 for r in first.results)
    assert first.rejected is None and first.unavailable is None and first.redis_error is None
    assert first.most_restrictive().policy == strict
    check(loose, strict)
    third = check(loose, strict)
    assert third.rejected is not None
    assert third.rejected.policy == strict
    assert third.rejected.decision == "rejected"
    assert 1 <= third.rejected.retry_after <= 60
    assert third.summary() == "p1:allowed,p2:rejected"
    assert third.most_restrictive().policy == strict


def test_most_restrictive_prefers_fewest_remaining_then_latest_reset(redis_prefix):
    short, long = make_policy(1, limit=3, window_seconds=10), make_policy(2, limit=3, window_seconds=600)
    outcome = check(short, long)
    assert [r.remaining for r in outcome.results] == [2, 2]
    assert outcome.most_restrictive().policy == long


def test_shadow_rejection_is_reported_but_does_not_reject(redis_prefix):
    shadow = make_policy(1, limit=1, mode="shadow")
    check(shadow)
    outcome = check(shadow)
    assert outcome.rejected is None
    assert outcome.results[0].decision == "shadow_rejected"
    assert outcome.results[0].allowed is False


def test_ipv6_neighbours_share_a_counter(redis_prefix):
    policy = make_policy(limit=2)
    assert check(policy, client_ip="2001:db8::1").rejected is None
    assert check(policy, client_ip="2001:db8::ffff").rejected is None
    assert check(policy, client_ip="2001:db8::1").rejected is not None
    assert check(policy, client_ip="2001:db8:0:1::1").rejected is None


def test_consumers_are_counted_apart(redis_prefix):
    policy = make_policy(key_by="consumer", limit=1)
    acme, globex = ConsumerInfo(1, "acme"), ConsumerInfo(2, "globex")
    assert check(policy, consumer=acme).rejected is None
    assert check(policy, consumer=acme).rejected is not None
    assert check(policy, consumer=globex).rejected is None
    assert check(policy, consumer=None).rejected is None  # anonymous: its IP's counter
    assert check(policy, consumer=None).rejected is not None


def test_listeners_get_every_outcome(redis_prefix, outcomes):
    policy = make_policy(limit=1)
    returned = [check(policy) for _ in range(3)]
    assert outcomes == returned
    assert [o.rejected is None for o in outcomes] == [True, False, False]


# Redis unavailable


def test_unavailable_allow_lets_requests_through_blind(redis_down, outcomes):
    policy = make_policy(limit=1, on_redis_failure="allow")
    for _ in range(3):
        outcome = check(policy)
        assert outcome.rejected is None and outcome.unavailable is None
        assert outcome.redis_error == "ConnectionError"
        (result,) = outcome.results
        assert (result.allowed, result.known, result.decision) == (True, False, "fallback")
        assert outcome.most_restrictive() is None
    assert len(outcomes) == 3


def test_unavailable_deny_fails_closed(redis_down, outcomes):
    policy = make_policy(on_redis_failure="deny")
    outcome = check(policy)
    assert outcome.unavailable is not None
    assert outcome.unavailable.policy == policy
    assert (outcome.unavailable.allowed, outcome.unavailable.known) == (False, False)
    assert outcome.rejected is None
    assert outcomes == [outcome]


def test_unavailable_deny_in_shadow_mode_does_not_block(redis_down):
    outcome = check(make_policy(on_redis_failure="deny", mode="shadow"))
    assert outcome.unavailable is None
    assert outcome.rejected is None


def test_unavailable_local_enforces_the_limit_in_memory(redis_down, outcomes):
    policy = make_policy(limit=2, on_redis_failure="local")
    results = [check(policy) for _ in range(3)]
    assert [o.rejected is None for o in results] == [True, True, False]
    assert [o.results[0].remaining for o in results] == [1, 0, 0]
    assert all(o.results[0].decision == "fallback" and o.results[0].known for o in results)
    assert results[2].rejected.policy == policy
    assert 1 <= results[2].rejected.retry_after <= 60
    assert results[2].most_restrictive() is results[2].rejected
    # Another client has its own local counter.
    assert check(policy, client_ip="198.51.100.1").rejected is None
    assert len(outcomes) == 4


def test_unavailable_modes_apply_per_policy(redis_down):
    allow, deny, local = (
        make_policy(1, on_redis_failure="allow"),
        make_policy(2, on_redis_failure="deny"),
        make_policy(3, on_redis_failure="local"),
    )
    outcome = check(allow, deny, local)
    assert [(r.allowed, r.known) for r in outcome.results] == [(True, False), (False, False), (True, True)]
    assert outcome.unavailable.policy == deny
    assert outcome.summary() == "p1:fallback,p2:fallback,p3:fallback"


def test_unavailable_costs_little_time(redis_down):
    policy = make_policy(on_redis_failure="allow")
    for _ in range(3):
        started = time.perf_counter()
        check(policy)
        assert time.perf_counter() - started < 0.5


def test_unavailable_local_rejected_request_consumes_no_quota(redis_down):
    loose = make_policy(1, limit=3, on_redis_failure="local")
    strict = make_policy(2, limit=1, on_redis_failure="local")
    check(loose, strict)
    for _ in range(3):
        assert check(loose, strict).rejected is not None
    # Only the first request passed: the loose policy has counted one of its three.
    assert check(loose).results[0].remaining == 1


# the route tester's dry run


@pytest.mark.parametrize("algorithm", ["sliding_log", "gcra"])
def test_a_dry_run_decides_as_check_would_and_counts_nothing(redis_client, outcomes, algorithm):
    policy = make_policy(algorithm=algorithm, limit=3, burst=3)
    dry = limiter.check((policy,), client_ip=CLIENT, consumer=None, route_id=1, environ={}, dry_run=True)
    assert (dry.results[0].decision, dry.results[0].remaining) == ("allowed", 2)
    assert outcomes == []  # metrics are not told: nothing happened
    assert not redis_client.exists(policy.counter_key(f"ip:<{CLIENT}>"))
    for _ in range(3):
        assert check(policy).rejected is None
    before = redis_client.dump(policy.counter_key(f"ip:<{CLIENT}>"))
    for _ in range(3):
        dry = limiter.check((policy,), client_ip=CLIENT, consumer=None, route_id=1, environ={}, dry_run=True)
        assert dry.rejected is not None and dry.rejected.retry_after > 0
    assert redis_client.dump(policy.counter_key(f"ip:<{CLIENT}>")) == before
    assert check(policy).rejected is not None  # the real check agrees
