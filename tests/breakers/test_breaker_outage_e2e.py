"""With Redis down, breakers fall back to each worker's own state: requests keep flowing, failing upstreams are
still cut off, and nothing answers 500."""

from __future__ import annotations

import time

import pytest
import requests
from django.conf import settings

from gateway_project import store
from tests.conftest import database_url_for_gateway
from tests.support.config import make_route, make_upstream, serve
from tests.support.servers import Gateway, RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("breaker-outage-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, own_redis, django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        gw = Gateway(
            tmp_path_factory.mktemp("breaker-outage-gateway"),
            redis_url=own_redis.url,
            database_url=database_url_for_gateway(),
            prefix="brout",
            workers=2,
        ).start()
    yield gw
    gw.stop()


@pytest.fixture
def configured(gateway, own_redis, transactional_db, upstream):
    previous = (settings.GATEWAY_REDIS_URL, settings.GATEWAY_REDIS_PREFIX)
    settings.GATEWAY_REDIS_URL, settings.GATEWAY_REDIS_PREFIX = own_redis.url, gateway.prefix
    store.reset_clients()
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
    settings.GATEWAY_REDIS_URL, settings.GATEWAY_REDIS_PREFIX = previous
    store.reset_clients()


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
