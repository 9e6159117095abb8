"""A Redis outage never takes the gateway down: refused, hung and restarted Redis, under real gunicorn.

The gateway here has a redis-server of its own, which the tests stop, freeze (SIGSTOP: connections are still
accepted by the kernel, nothing answers) and restart. Each policy's failure mode applies within the hot-path
timeout budget; no request waits much longer, none gets a 500.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

from gateway_project import store
from limits.models import RateLimitPolicy
from tests.support.burst import burst
from tests.support.config import make_route, make_upstream, serve
from tests.support.gateways import talking_to

pytestmark = pytest.mark.slow

# Hot-path Redis timeouts are 50 ms (connect) and 100 ms (command); a request may wait for a reconnection for as
# long again. Allow generously for a loaded 2-core machine.
BUDGET = 0.5


@pytest.fixture(scope="module")
def gateway(own_gateway):
    return own_gateway


@pytest.fixture
def configured(gateway, own_redis, transactional_db, upstream):
    """Three routes whose policies (limit 3 per minute per client) fail open, closed and local."""
    with talking_to(gateway, own_redis):
        yield from _configure(gateway, own_redis, upstream)


def _configure(gateway, own_redis, upstream):
    backend = make_upstream("backend", upstream.url)
    for mode in ("allow", "deny", "local"):
        route = make_route(mode, f"/{mode}", backend)
        RateLimitPolicy.objects.create(
            name=f"{mode}-policy",
            scope="route",
            route=route,
            key_by="ip",
            limit=3,
            window_seconds=60,
            on_redis_failure=mode,
        )
    serve(gateway)
    own_redis.ping()
    store.ops_client().flushdb()
    yield gateway
    if own_redis.proc is None:
        own_redis.start()
    else:
        own_redis.resume()


def timed(gateway, path: str) -> tuple[int, float]:
    started = time.monotonic()
    status = requests.get(gateway.url(path), timeout=10).status_code
    return status, time.monotonic() - started


def check_failure_modes(gateway) -> None:
    for mode, expected in (("allow", [200] * 5), ("deny", [503] * 5), ("local", None)):
        results = [timed(gateway, f"/{mode}/x") for _ in range(5)]
        statuses = [status for status, _ in results]
        assert max(elapsed for _, elapsed in results) < BUDGET, (mode, results)
        if expected is not None:
            assert statuses == expected, mode
        else:
            # Per worker: each of the two workers allows three; never more than 3 x 2 in all.
            assert statuses.count(200) <= 6
            assert set(statuses) <= {200, 429}
    local = [requests.get(gateway.url("/local/x"), timeout=10).status_code for _ in range(10)]
    assert local.count(429) >= 4


def test_redis_refused(configured, own_redis):
    assert [requests.get(configured.url("/deny/x"), timeout=10).status_code for _ in range(4)] == [200] * 3 + [429]
    own_redis.stop()
    check_failure_modes(configured)
    assert "Redis unavailable for rate limits" in configured.log()


def test_redis_hung(configured, own_redis):
    own_redis.pause()
    try:
        check_failure_modes(configured)
    finally:
        own_redis.resume()
    # Back to exact, shared counting once Redis answers again.
    time.sleep(0.2)
    assert [requests.get(configured.url("/allow/y"), timeout=10).status_code for _ in range(4)][-1] == 429


def test_redis_restarted_under_load(configured, own_redis):
    stop = threading.Event()
    results: list[tuple[int, float]] = []

    def load() -> None:
        session = requests.Session()
        while not stop.is_set():
            started = time.monotonic()
            status = session.get(configured.url("/allow/x"), timeout=10).status_code
            results.append((status, time.monotonic() - started))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    own_redis.stop()
    time.sleep(1.0)
    own_redis.start()
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join()
    statuses = {status for status, _ in results}
    assert statuses <= {200, 429}, statuses
    assert max(elapsed for _, elapsed in results) < 1.0
    assert len(results) > 100
    # After the restart the script is loaded again and counting is exact: the flushed counter fills up.
    after = [requests.get(configured.url("/allow/z"), timeout=10).status_code for _ in range(4)]
    assert after[-1] == 429


def test_requests_answered_during_a_freeze_are_not_counted_when_redis_wakes(configured, own_redis):
    """Checks written to a Redis that then froze were answered with the failure mode (503 here); when Redis wakes
    it runs them, past their deadline, and they count nothing."""
    from limits import services

    policy = RateLimitPolicy.objects.get(name="deny-policy")
    policy.limit = 1000
    policy.save()
    serve(configured)
    assert requests.get(configured.url("/deny/x"), timeout=10).status_code == 200
    own_redis.pause()
    try:
        codes = burst([(configured.port, "/deny/x")] * 100)
    finally:
        own_redis.resume()
    assert codes == [503] * 100
    time.sleep(0.5)
    assert [(u.client, u.used) for u in services.policy_usage(policy=policy)] == [("ip:<127.0.0.1>", 1)]
    assert requests.get(configured.url("/deny/x"), timeout=10).status_code == 200
    assert [u.used for u in services.policy_usage(policy=policy)] == [2]
