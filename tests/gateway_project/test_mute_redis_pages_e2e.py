"""Pages that read Redis, with Redis mute (SIGSTOP: it accepts connections and never answers): each answers
within a short budget, says that Redis is unavailable, and never answers 500."""

from __future__ import annotations

import time
import uuid

import pytest
import requests

from limits.models import RateLimitPolicy
from tests.support.admin import login
from tests.support.config import make_policy, make_upstream, serve
from tests.support.gateways import database_url_for_gateway, talking_to
from tests.support.servers import Gateway

BUDGET = 1.5  # seconds a whole page may take with Redis mute (its Redis timeout is 0.25 s; it was 2 s per read)


@pytest.fixture(scope="module")
def demo_gateway(tmp_path_factory, own_redis, django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        gw = Gateway(
            tmp_path_factory.mktemp("mute-redis"),
            redis_url=own_redis.url,
            database_url=database_url_for_gateway(),
            prefix=f"mute{uuid.uuid4().hex[:8]}",
            env={"GATEWAY_DEMO": "1", "GATEWAY_SECURE_COOKIES": "0"},
        ).start(collectstatic=True)
    yield gw
    gw.stop()


@pytest.fixture
def gateway(demo_gateway, own_redis, transactional_db):
    with talking_to(demo_gateway, own_redis):
        yield demo_gateway


@pytest.fixture
def mute(own_redis):
    own_redis.pause()
    yield own_redis
    own_redis.resume()


def timed(call, *args, **kwargs) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = call(*args, timeout=10, **kwargs)
    return response, time.monotonic() - started


def test_the_demo_upstream_answers_at_once_and_says_its_switch_is_unknown(gateway, mute):
    answer, took = timed(requests.get, gateway.url("/_demo/hello"))
    assert answer.status_code == 200
    assert "Redis" in answer.json()["failure_switch"]
    assert took < BUDGET, took


@pytest.mark.parametrize("switch", ["simulate-failure", "simulate-recovery"])
def test_the_demo_switch_says_redis_is_unavailable_instead_of_a_500(gateway, mute, switch):
    answer, took = timed(requests.post, gateway.url(f"/_demo/{switch}"))
    assert answer.status_code == 503
    assert answer.json()["error"] == "redis_unavailable"
    assert took < BUDGET, took


def test_the_breakers_page_reads_redis_once_and_says_it_is_unavailable(gateway, own_redis):
    for name in ("alpha", "beta", "gamma", "delta"):
        make_upstream(name, "http://127.0.0.1:9")
    serve(gateway)
    session = login(gateway, "127.0.0.1")
    assert session.get(gateway.url("/admin/breakers/breaker/"), timeout=10).status_code == 200
    own_redis.pause()
    try:
        page, took = timed(session.get, gateway.url("/admin/breakers/breaker/"))
    finally:
        own_redis.resume()
    assert page.status_code == 200
    assert "Redis did not answer" in page.text
    assert page.text.count("unknown") >= 4
    assert took < BUDGET, took


def test_the_rate_limit_pages_read_redis_within_the_budget(gateway, own_redis):
    policy = make_policy("per-ip", limit=5, window_seconds=60)
    session = login(gateway, "127.0.0.1")
    own_redis.pause()
    try:
        change, change_took = timed(session.get, gateway.url(f"/admin/limits/ratelimitpolicy/{policy.pk}/change/"))
        usage, usage_took = timed(session.get, gateway.url(f"/admin/limits/ratelimitpolicy/{policy.pk}/usage/"))
    finally:
        own_redis.resume()
    assert (change.status_code, usage.status_code) == (200, 200)
    assert "Redis is unavailable" in change.text
    assert "Redis is unavailable" in usage.text
    assert change_took < BUDGET, change_took
    assert usage_took < BUDGET, usage_took
    assert RateLimitPolicy.objects.count() == 1


def test_the_status_page_answers_within_the_budget_and_names_redis(gateway, own_redis):
    make_upstream("alpha", "http://127.0.0.1:9")
    make_policy("per-ip", limit=5, window_seconds=60)
    serve(gateway)
    session = login(gateway, "127.0.0.1")
    own_redis.pause()
    try:
        index, index_took = timed(session.get, gateway.url("/admin/"))
        panel, panel_took = timed(session.get, gateway.url("/admin/status/"))
    finally:
        own_redis.resume()
    assert (index.status_code, panel.status_code) == (200, 200)
    for page in (index.text, panel.text):
        assert 'class="gw-check gw-bad" data-check="redis"' in page
        assert "unknown (Redis did not answer)" in page
        assert "Redis did not answer (" in page  # the limited clients' panel
    assert index_took < BUDGET, index_took
    assert panel_took < BUDGET, panel_took
