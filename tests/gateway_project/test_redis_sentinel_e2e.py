"""The gateway on a primary/replica pair watched by a Sentinel (redis+sentinel://): limits exact, and after the
primary dies and the Sentinel promotes the replica, no 500 on the way and exact counting again."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import requests

from tests.support.config import make_policy, make_route, make_upstream, serve
from tests.support.gateways import start_gateway, talking_to
from tests.support.servers import SentinelPair, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    servers = SentinelPair(tmp_path_factory.mktemp("sentinel")).start()
    yield servers
    servers.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, pair, django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        gw = start_gateway(tmp_path_factory, pair, prefix=f"g{uuid.uuid4().hex[:10]}")
    yield gw
    gw.stop()


def get(gateway, path: str) -> int:
    return requests.get(gateway.url(path), headers={"Connection": "close"}, timeout=10).status_code


def test_limits_are_exact_and_a_failover_costs_no_500(gateway, pair, transactional_db, upstream):
    with talking_to(gateway, pair):
        route = make_route("api", "/api", make_upstream("backend", upstream.url))
        make_policy("tight", scope="route", route=route, key_by="ip", limit=20)
        serve(gateway)
        assert requests.get(gateway.url("/readyz"), timeout=10).json()["checks"]["redis"] == "ok"
        assert [get(gateway, "/api/x") for _ in range(25)] == [200] * 20 + [429] * 5

        statuses: list[int] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                statuses.append(get(gateway, "/other/x"))

        other = make_route("other", "/other", make_upstream("other", upstream.url))
        make_policy("loose", scope="route", route=other, key_by="ip", limit=10_000)
        serve(gateway)
        thread = threading.Thread(target=load)
        thread.start()
        time.sleep(0.5)
        old_primary = pair.primary.port
        pair.primary.stop()
        wait_until(lambda: pair.primary_port() == pair.replica.port, 30, "the Sentinel's failover")
        time.sleep(1.5)
        stop.set()
        thread.join()
        assert pair.primary_port() != old_primary
        assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}

        third = make_route("third", "/third", make_upstream("third", upstream.url))
        make_policy("after", scope="route", route=third, key_by="ip", limit=5)
        serve(gateway)
        assert [get(gateway, "/third/x") for _ in range(8)] == [200] * 5 + [429] * 3
