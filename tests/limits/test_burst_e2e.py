"""A burst stays exact: 1,000 requests released at once at each of two gateway instances that share one Redis.

Before the hot path pipelined a worker's calls, a worker's 64 Redis connections ran out in a burst, and a
request that found none free within 50 ms was treated as "Redis is down", whose failure mode (allow) let it
through: 600 requests against a limit of 50 admitted 64 to 98.

The trials run here are few (BURST_TRIALS, default 2) to keep the suite short; docs/deploy.md gives the
10-trial measurement and its command.
"""

from __future__ import annotations

import os
import uuid

import pytest

from limits.models import RateLimitPolicy
from tests.support.burst import burst
from tests.support.config import make_route, make_upstream, serve
from tests.support.gateways import start_gateway, talking_to

pytestmark = pytest.mark.slow

PER_INSTANCE = 1000
TRIALS = int(os.environ.get("BURST_TRIALS", "2"))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, redis_server, django_db_setup, django_db_blocker):
    """Two gateway instances of two workers each, acting as one fleet (one Redis, one key prefix)."""
    prefix = f"g{uuid.uuid4().hex[:10]}"
    with django_db_blocker.unblock():
        gateways = [start_gateway(tmp_path_factory, redis_server, prefix=prefix) for _ in range(2)]
    yield gateways
    for gateway in gateways:
        gateway.stop()


def test_1000_simultaneous_requests_per_instance_admit_exactly_the_limit(fleet, transactional_db, upstream):
    with talking_to(fleet[0]):
        backend = make_upstream("backend", upstream.url, max_retries=0)
        routes = [make_route(f"r{trial}", f"/r{trial}", backend) for trial in range(TRIALS)]
        for route in routes:
            RateLimitPolicy.objects.create(
                name=f"burst-{route.name}", scope="route", route=route, key_by="route", limit=50, window_seconds=10
            )
        for gateway in fleet:
            serve(gateway)
        admitted = []
        for route in routes:
            targets = [(gateway.port, f"/r{route.name[1:]}/x") for gateway in fleet for _ in range(PER_INSTANCE)]
            codes = burst(targets)
            admitted.append(codes.count(200))
            assert codes.count(200) + codes.count(429) == len(codes), sorted(set(codes))
        assert admitted == [50] * TRIALS
        assert len(upstream.received) == 50 * TRIALS
    log = "".join(gateway.log() for gateway in fleet)
    assert "Redis unavailable for rate limits" not in log
