"""A configuration change reaches every worker of every gateway instance within a second, without a restart."""

from __future__ import annotations

import time

import pytest
import requests
from django.conf import settings

from gateway_project import runtime, store
from proxy.models import Route
from tests.support.config import make_route, make_upstream, serve
from tests.support.gateways import start_gateway, talking_to

# Changes travel through the database (and Redis): run on PostgreSQL too.
pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, redis_server, django_db_setup, django_db_blocker):
    """Two gateway instances with two workers each, sharing one database and one Redis (one key prefix)."""
    with django_db_blocker.unblock():
        first = start_gateway(tmp_path_factory, redis_server, workers=2)
        second = start_gateway(tmp_path_factory, redis_server, workers=2, prefix=first.prefix)
    yield first, second
    first.stop()
    second.stop()


@pytest.fixture
def both(fleet, transactional_db):
    with talking_to(fleet[0]):
        yield fleet


def statuses(gateway, path: str, count: int) -> list[int]:
    """Status codes of `count` requests on fresh connections, so that every worker answers some of them."""
    return [
        requests.get(gateway.url(path), headers={"Connection": "close"}, timeout=5).status_code for _ in range(count)
    ]


def test_a_saved_route_is_served_by_every_worker_of_every_instance_within_a_second(both, upstream):
    first, second = both
    backend = make_upstream("backend", upstream.url)
    make_route("old", "/old", backend)
    serve(first)
    serve(second)
    assert set(statuses(first, "/new/x", 10)) == {404}

    route = Route.objects.get(name="old")
    route.path_prefix = "/new"
    route.full_clean()
    route.save()
    saved_at = time.monotonic()

    time.sleep(max(0.0, saved_at + 1.0 - time.monotonic()))
    for gateway in (first, second):
        assert set(statuses(gateway, "/new/x", 40)) == {200}
        assert set(statuses(gateway, "/old/x", 20)) == {404}


def test_reload_happens_without_restarting_workers(both, upstream):
    first, _ = both
    pids = sorted(first.worker_pids())
    make_route("r1", "/r1", make_upstream("backend", upstream.url))
    took = serve(first)
    assert took < 1.0
    assert sorted(first.worker_pids()) == pids


def test_a_lost_redis_publish_is_caught_through_the_database(both, upstream):
    """If a change never reaches Redis (Redis down at commit), the workers' periodic database check finds it."""
    first, second = both
    make_route("r1", "/r1", make_upstream("backend", upstream.url))
    serve(first)
    # Redis keeps announcing the old configuration; only the watcher's database check can notice the change.
    runtime_publish = runtime.publish
    runtime.publish = lambda token: None
    try:
        make_route("r2", "/r2", Route.objects.get(name="r1").upstream)
    finally:
        runtime.publish = runtime_publish
    deadline = time.monotonic() + settings.GATEWAY_CONFIG_DB_CHECK_INTERVAL + 2
    while time.monotonic() < deadline and set(statuses(first, "/r2/x", 8) + statuses(second, "/r2/x", 8)) != {200}:
        time.sleep(0.2)
    assert set(statuses(first, "/r2/x", 20) + statuses(second, "/r2/x", 20)) == {200}
    assert store.ops_client().get(runtime.revision_key()).decode() == runtime.db_state()[1]
