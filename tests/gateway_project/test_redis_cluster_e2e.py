"""The gateway on a real Redis Cluster: three primaries with a replica each, on loopback, started by the suite.

REDIS_URL names one node only, as an operator might: the gateway learns it is a cluster and finds the rest
(before, every command for another node's slots failed and the limits' failure mode let 600 of 600 requests
through a limit of 50, while /readyz said ready). Then: limits exact across instances, a request whose policies
live in two slots consumes nothing when rejected, breakers shared, hot reload, the limiter's load spread over
the three shards, and a primary killed under load.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from limits import services
from tests.support.config import make_policy, make_route, make_upstream, serve
from tests.support.gateways import start_gateway, talking_to
from tests.support.servers import RedisClusterServers, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    servers = RedisClusterServers(tmp_path_factory.mktemp("cluster")).start()
    yield servers
    servers.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, cluster, django_db_setup, django_db_blocker):
    """Two instances of two workers on the cluster (one fleet: one key prefix), trusting the test as a proxy so
    it can present many clients."""
    prefix = f"g{uuid.uuid4().hex[:10]}"
    env = {"GATEWAY_TRUSTED_PROXIES": "127.0.0.1"}
    with django_db_blocker.unblock():
        gateways = [start_gateway(tmp_path_factory, cluster, prefix=prefix, env=env) for _ in range(2)]
    yield gateways
    for gateway in gateways:
        gateway.stop()


@pytest.fixture
def on_cluster(fleet, cluster, transactional_db, upstream):
    with talking_to(fleet[0], cluster):
        yield fleet


def get(gateway, path: str, client: str = "192.0.2.1", **kwargs) -> requests.Response:
    headers = {"X-Forwarded-For": client, "Connection": "close", **kwargs.pop("headers", {})}
    return requests.get(gateway.url(path), headers=headers, timeout=10, **kwargs)


def limiter_checks(cluster) -> dict[int, int]:
    """Sliding-log checks each primary has run so far, by port: check.lua runs one ZCARD per such policy, and
    nothing else of the gateway's runs ZCARD (the breakers' script, also an EVALSHA, does not)."""
    found = {}
    for node in cluster.primaries():
        match = re.search(r"cmdstat_zcard:calls=(\d+)", node.cli("INFO", "commandstats"))
        found[node.port] = int(match.group(1)) if match else 0
    return found


def test_limits_are_exact_across_instances_and_readyz_checks_the_cluster(on_cluster, upstream):
    route = make_route("api", "/api", make_upstream("backend", upstream.url))
    make_policy("exact", scope="route", route=route, key_by="route", limit=50)
    for gateway in on_cluster:
        serve(gateway)
    ready = requests.get(on_cluster[0].url("/readyz"), timeout=10).json()
    assert ready["checks"]["redis"] == "ok (cluster, 3 primaries)"
    targets = [on_cluster[i % 2] for i in range(400)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        codes = list(pool.map(lambda gw: get(gw, "/api/x").status_code, targets))
    assert (codes.count(200), codes.count(429)) == (50, 350)


def test_a_request_counted_in_two_slots_consumes_nothing_when_rejected(on_cluster, upstream):
    route = make_route("api", "/api", make_upstream("backend", upstream.url))
    narrow = make_policy("narrow", scope="route", route=route, key_by="ip", limit=3)
    wide = make_policy("wide", scope="route", route=route, key_by="route", limit=100)
    for gateway in on_cluster:
        serve(gateway)
    assert [get(on_cluster[i % 2], "/api/x").status_code for i in range(10)] == [200] * 3 + [429] * 7
    assert [(u.client, u.used) for u in services.policy_usage(policy=narrow)] == [("ip:<192.0.2.1>", 3)]
    assert [(u.client, u.used) for u in services.policy_usage(policy=wide)] == [(f"route:<{route.id}>", 3)]


def test_breakers_are_shared_and_changes_reach_every_worker(on_cluster, upstream):
    backend = make_upstream(
        "backend", upstream.url, max_retries=0, breaker_consecutive_failures=3, breaker_failure_rate=0
    )
    make_route("api", "/api", backend)
    for gateway in on_cluster:
        serve(gateway)
    upstream.behave(status=503)
    answers = []
    for i in range(4):
        answers.append(get(on_cluster[i % 2], "/api/x").json().get("error"))
        time.sleep(0.05)  # a change reaches the other workers by pub/sub (over the cluster bus) in milliseconds
    assert answers == [None] * 3 + ["circuit_open"]
    assert {get(on_cluster[i % 2], "/api/x").json().get("error") for i in range(20)} == {"circuit_open"}
    assert len(upstream.received) == 3
    make_route("other", "/other", make_upstream("other", upstream.url))
    took = max(serve(gateway) for gateway in on_cluster)
    assert took < 1.5
    upstream.behave()
    assert get(on_cluster[1], "/other/x").status_code == 200


def test_the_limiters_load_spreads_over_the_three_shards(on_cluster, cluster, upstream):
    route = make_route("api", "/api", make_upstream("backend", upstream.url))
    make_policy("per-client", scope="route", route=route, key_by="ip", limit=1000)
    for gateway in on_cluster:
        serve(gateway)
    before = limiter_checks(cluster)
    clients = [f"198.51.100.{i}" for i in range(1, 201)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(lambda c: get(on_cluster[hash(c) % 2], "/api/x", c).status_code, clients * 3))
    assert set(codes) == {200}
    after = limiter_checks(cluster)
    shares = sorted((after[port] - before.get(port, 0)) / len(codes) for port in after)
    print(f"limiter checks per shard, of {len(codes)}: {', '.join(f'{share:.1%}' for share in shares)}")
    # 200 clients over 3 shards: each carries a fair part (a third, give or take the hash's luck).
    assert sum(shares) == pytest.approx(1.0)
    assert shares[0] > 0.2, shares


def test_a_primary_killed_under_load_costs_no_500_and_counting_is_exact_again_after_the_failover(
    on_cluster, cluster, upstream
):
    route = make_route("api", "/api", make_upstream("backend", upstream.url))
    make_policy("load", scope="route", route=route, key_by="ip", limit=10_000)
    for gateway in on_cluster:
        serve(gateway)
    stop = threading.Event()
    statuses: list[int] = []

    def load(worker: int) -> None:
        session = requests.Session()
        n = 0
        while not stop.is_set():
            n += 1
            client = f"203.0.113.{(worker * 37 + n) % 250 + 1}"
            response = session.get(on_cluster[n % 2].url("/api/x"), headers={"X-Forwarded-For": client}, timeout=10)
            statuses.append(response.status_code)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    victim = cluster.primaries()[0]
    victim.proc.kill()
    victim.proc.wait()
    victim.proc = None
    wait_until(lambda: len(cluster.primaries()) == 3, 20, "a replica promoted")
    time.sleep(2.0)  # the gateways' slot maps follow
    stop.set()
    for thread in threads:
        thread.join()
    assert len(statuses) > 200
    # The only failure mode on the way is each policy's own: 'allow' by default, so every answer is a 200.
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    # After the failover, exact again: a new counter (in whichever slot) admits its limit and no more.
    after = make_policy("after", scope="route", route=route, key_by="ip", limit=5)
    for gateway in on_cluster:
        serve(gateway)
    probes = [get(on_cluster[i % 2], "/api/x", "192.0.2.200").status_code for i in range(8)]
    assert probes == [200] * 5 + [429] * 3
    assert [u.used for u in services.policy_usage(policy=after)] == [5]
