"""With Redis down, breakers fall back to each worker's own state: requests keep flowing, failing upstreams are
still cut off, and nothing answers 500."""

from __future__ import annotations

import time

import pytest
import requests

from tests.support.config import TEST_ACTOR, make_route, make_upstream, serve
from tests.support.gateways import talking_to

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(own_gateway):
    return own_gateway


@pytest.fixture
def configured(gateway, own_redis, transactional_db, upstream):
    with talking_to(gateway, own_redis):
        yield from _configure(gateway, own_redis, upstream)


def _configure(gateway, own_redis, upstream):
    fields = {
        "max_retries": 0,
        "breaker_consecutive_failures": 3,
        "breaker_failure_rate": 0,
        "breaker_open_seconds": 60,
    }
    make_route("healthy", "/healthy", make_upstream("healthy", upstream.url, **fields))
    make_route("failing", "/failing", make_upstream("failing", upstream.url + "/status/503", **fields))
    serve(gateway)
    yield gateway
    if own_redis.proc is None:
        own_redis.start()


def test_requests_keep_flowing_through_the_local_fallback(configured, own_redis, upstream):
    own_redis.stop()
    statuses = []
    for _ in range(30):
        started = time.monotonic()
        response = requests.get(configured.url("/healthy/x"), headers={"Connection": "close"}, timeout=10)
        statuses.append(response.status_code)
        assert time.monotonic() - started < 0.5
    assert statuses == [200] * 30

    answers = [
        requests.get(configured.url("/failing/x"), headers={"Connection": "close"}, timeout=10) for _ in range(40)
    ]
    assert {a.status_code for a in answers} == {503}
    opened = [a for a in answers if a.json().get("error") == "circuit_open"]
    # Each of the two workers opens its own breaker after three failures: at most six reach the upstream.
    assert len(upstream.requests_to("/status/503")) <= 6
    assert len(opened) >= 34
    assert "Redis unavailable for circuit breakers" in configured.log()


def test_back_on_shared_state_when_redis_returns(configured, own_redis, upstream):
    own_redis.stop()
    for _ in range(10):
        requests.get(configured.url("/failing/x"), headers={"Connection": "close"}, timeout=10)
    own_redis.start()
    time.sleep(1.5)
    # The shared breaker (closed, in a fresh Redis) decides again: three failures reach the upstream anew.
    before = len(upstream.requests_to("/status/503"))
    answers = [
        requests.get(configured.url("/failing/x"), headers={"Connection": "close"}, timeout=10).json()
        for _ in range(20)
    ]
    assert len(upstream.requests_to("/status/503")) - before == 3
    assert [a.get("error") for a in answers][3:] == ["circuit_open"] * 17


def failing(configured) -> list[str | None]:
    """One request to the failing upstream: the gateway's error code, or None for the upstream's own 503."""
    return requests.get(configured.url("/failing/x"), headers={"Connection": "close"}, timeout=10).json().get("error")


def test_an_open_breaker_stays_open_through_an_outage(configured, own_redis, upstream):
    """Each worker's fallback starts from the open state it knew; before, it started closed and let failures
    through to an upstream the fleet knew was failing."""
    assert [failing(configured) for _ in range(3)] == [None, None, None]
    time.sleep(0.3)
    # Each worker serves some of these (a worker that never saw the breaker has no state to start from).
    assert {failing(configured) for _ in range(10)} == {"circuit_open"}
    own_redis.stop()
    answers = [failing(configured) for _ in range(40)]
    assert answers == ["circuit_open"] * 40
    assert len(upstream.requests_to("/status/503")) == 3


def test_a_breaker_whose_state_expired_still_trips_at_its_threshold(configured, own_redis, upstream):
    """Generations survive the state key's TTL: a breaker that opened and closed once, whose state then expired,
    opens again at exactly its threshold (before, every failure was dropped as stale: no breaker at all)."""
    from breakers import redis_storage, services
    from gateway_project import store
    from proxy.models import Upstream

    cycle_once(configured, upstream)
    state_key = redis_storage.keys(Upstream.objects.get(name="failing").id)[0]
    store.ops_client().pexpire(state_key, 1)
    time.sleep(0.05)
    assert not store.ops_client().exists(state_key)
    before = len(upstream.requests_to("/status/503"))
    answers = trip(configured)
    assert answers == [None] * 3 + ["circuit_open"] * 7
    assert len(upstream.requests_to("/status/503")) - before == 3
    assert services.live_states(names=["failing"])[0].state == "open"


def test_a_breaker_still_trips_at_its_threshold_after_redis_restarted_empty(configured, own_redis, upstream):
    cycle_once(configured, upstream)
    own_redis.stop()
    own_redis.start()
    time.sleep(1.5)  # the change feed reconnects
    before = len(upstream.requests_to("/status/503"))
    answers = trip(configured)
    assert answers == [None] * 3 + ["circuit_open"] * 7
    assert len(upstream.requests_to("/status/503")) - before == 3


def trip(configured) -> list[str | None]:
    """Three failures, a pause in which every worker hears what they did, then seven more requests."""
    answers = [failing(configured) for _ in range(3)]
    time.sleep(0.2)
    return answers + [failing(configured) for _ in range(7)]


def cycle_once(configured, upstream) -> None:
    """Open the failing upstream's breaker, then close it again with a successful probe (two transitions)."""
    from breakers import services

    assert [failing(configured) for _ in range(3)] == [None, None, None]
    assert services.live_states(names=["failing"])[0].state == "open"
    services.reset_breakers(names=["failing"], actor=TEST_ACTOR)
    time.sleep(0.3)
    assert services.live_states(names=["failing"])[0].state == "closed"
