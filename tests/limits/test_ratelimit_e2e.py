"""Rate limits end to end: a real gunicorn with four workers, a real Redis, a recording upstream."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from gateway_project import store
from limits import services
from limits.models import Consumer, RateLimitPolicy
from tests.support.config import TEST_ACTOR, make_route, make_upstream, serve


@pytest.fixture(scope="module")
def gateway_options() -> dict:
    """Trusts 127.0.0.1 as a proxy, so tests can present many client addresses through X-Forwarded-For."""
    return {"env": {"GATEWAY_TRUSTED_PROXIES": "127.0.0.1"}}


def policy(**fields) -> RateLimitPolicy:
    fields.setdefault("window_seconds", 60)
    obj = RateLimitPolicy(**fields)
    obj.full_clean()
    obj.save()
    return obj


def counters(obj: RateLimitPolicy) -> dict[str, int]:
    """Live counter values of a policy, straight from Redis."""
    return {usage.client: usage.used for usage in services.policy_usage(policy=obj, top=1000)}


def hit(gateway, path: str, count: int, **kwargs) -> list[int]:
    return [requests.get(gateway.url(path), timeout=10, **kwargs).status_code for _ in range(count)]


def test_exactly_the_limit_passes_under_concurrency_across_four_workers(gw4, upstream):
    route = make_route("api", "/api", make_upstream("backend", upstream.url))
    policy(name="exact", scope="route", route=route, key_by="route", limit=50)
    serve(gw4)

    def one(_):
        return requests.get(gw4.url("/api/x"), headers={"Connection": "close"}, timeout=10).status_code

    with ThreadPoolExecutor(max_workers=48) as pool:
        codes = list(pool.map(one, range(400)))
    assert codes.count(200) == 50
    assert codes.count(429) == 350
    assert len(upstream.requests_to("/api/x")) == 0  # strip_prefix: the upstream saw /x
    assert len(upstream.requests_to("/x")) == 50


def test_no_double_burst_across_a_window_edge(gw4, upstream):
    route = make_route("api", "/api", make_upstream("backend", upstream.url))
    policy(name="edge", scope="route", route=route, key_by="ip", limit=5, window_seconds=2)
    serve(gw4)
    started = time.monotonic()
    assert hit(gw4, "/api/a", 5) == [200] * 5
    # Just before and just after where a fixed window would restart, the sliding window still holds all five.
    time.sleep(max(0.0, started + 1.0 - time.monotonic()))
    assert hit(gw4, "/api/b", 5) == [429] * 5
    time.sleep(max(0.0, started + 1.7 - time.monotonic()))
    assert set(hit(gw4, "/api/c", 3)) == {429}
    time.sleep(max(0.0, started + 2.3 - time.monotonic()))
    assert hit(gw4, "/api/d", 6) == [200] * 5 + [429]
    assert len(upstream.received) == 10


def test_the_429_answer(gw4, upstream):
    route = make_route("api", "/api", make_upstream("backend", upstream.url))
    policy(name="tight", scope="route", route=route, key_by="ip", limit=2, window_seconds=30, legacy_headers=True)
    serve(gw4)
    first = requests.get(gw4.url("/api/x"), timeout=10)
    assert first.headers["RateLimit-Policy"] == '"tight";q=2;w=30'
    assert first.headers["RateLimit"] == '"tight";r=1;t=30'
    assert first.headers["X-RateLimit-Limit"] == "2"
    assert first.headers["X-RateLimit-Remaining"] == "1"
    assert abs(int(first.headers["X-RateLimit-Reset"]) - (time.time() + 30)) <= 2
    requests.get(gw4.url("/api/x"), timeout=10)
    rejected = requests.get(gw4.url("/api/x"), headers={"X-Request-ID": "rl-1"}, timeout=10)
    assert rejected.status_code == 429
    body = rejected.json()
    assert body["error"] == "rate_limited"
    assert body["policy"] == "tight"
    assert body["request_id"] == "rl-1"
    assert 28 <= body["retry_after"] <= 30
    assert rejected.headers["Retry-After"] == str(body["retry_after"])
    assert rejected.headers["RateLimit"].startswith('"tight";r=0;t=')
    assert len(upstream.received) == 2


def test_a_rejected_request_consumes_no_quota_of_any_policy(gw4, upstream):
    route = make_route("api", "/api", make_upstream("backend", upstream.url))
    narrow = policy(name="narrow", scope="route", route=route, key_by="ip", limit=3)
    wide = policy(name="wide", scope="global", key_by="ip", limit=100)
    serve(gw4)
    assert hit(gw4, "/api/x", 10) == [200] * 3 + [429] * 7
    assert counters(narrow) == {"ip:<127.0.0.1>": 3}
    assert counters(wide) == {"ip:<127.0.0.1>": 3}
    # The most restrictive policy's fields are sent.
    services.clear_counter(policy=narrow, client="ip:<127.0.0.1>", actor=TEST_ACTOR)
    response = requests.get(gw4.url("/api/x"), timeout=10)
    assert response.headers["RateLimit"] == '"narrow";r=2;t=60'
    assert counters(wide) == {"ip:<127.0.0.1>": 4}


def test_shadow_mode_counts_and_reports_but_never_rejects(gw4, upstream):
    route = make_route("api", "/api", make_upstream("backend", upstream.url))
    shadow = policy(name="trial", scope="route", route=route, key_by="ip", limit=3, mode="shadow")
    serve(gw4)
    assert hit(gw4, "/api/x", 8) == [200] * 8
    assert len(upstream.received) == 8
    assert counters(shadow) == {"ip:<127.0.0.1>": 3}
    time.sleep(0.2)
    log = gw4.log()
    assert log.count('"ratelimit": "trial:shadow_rejected"') >= 5


def test_a_spoofed_forwarded_for_from_an_untrusted_peer_does_not_change_the_bucket(gw4, upstream):
    route = make_route("api", "/api", make_upstream("backend", upstream.url))
    per_ip = policy(name="per-ip", scope="route", route=route, key_by="ip", limit=3)
    serve(gw4)
    codes = [
        requests.get(gw4.url("/api/x"), headers={"X-Forwarded-For": f"198.51.100.{i}"}, timeout=10).status_code
        for i in range(6)
    ]
    assert codes == [200] * 3 + [429] * 3
    assert counters(per_ip) == {"ip:<127.0.0.1>": 3}


def test_ipv6_clients_share_a_bucket_per_64_and_mapped_ipv4_is_normalized(live, upstream):
    route = make_route("api", "/api", make_upstream("backend", upstream.url))
    per_ip = policy(name="per-ip", scope="route", route=route, key_by="ip", limit=3)
    serve(live)

    def from_(address: str) -> int:
        return requests.get(live.url("/api/x"), headers={"X-Forwarded-For": address}, timeout=10).status_code

    assert [from_(f"2001:db8:0:0:{i}::1") for i in range(1, 5)] == [200, 200, 200, 429]
    assert from_("2001:db8:0:1::1") == 200
    assert [from_("198.51.100.9"), from_("::ffff:198.51.100.9"), from_("198.51.100.9")] == [200, 200, 200]
    assert from_("::ffff:198.51.100.9") == 429
    assert counters(per_ip) == {
        "ip:<2001:db8::/64>": 3,
        "ip:<2001:db8:0:1::/64>": 1,
        "ip:<198.51.100.9>": 3,
    }


def test_counting_by_consumer_and_by_header(gw4, upstream):
    route = make_route("api", "/api", make_upstream("backend", upstream.url))
    acme = Consumer.objects.create(name="acme")
    _, key = services.create_api_key(consumer=acme, actor=TEST_ACTOR)
    per_consumer = policy(name="per-consumer", scope="route", route=route, key_by="consumer", limit=2)
    per_tenant = policy(name="per-tenant", scope="global", key_by="header", header_name="X-Tenant", limit=50)
    serve(gw4)
    assert hit(gw4, "/api/x", 3, headers={"X-API-Key": key, "X-Tenant": "t1"}) == [200, 200, 429]
    # Anonymous clients fall back to their address.
    assert hit(gw4, "/api/x", 3, headers={"X-Tenant": "t1"}) == [200, 200, 429]
    assert counters(per_consumer) == {"consumer:<acme>": 2, "ip:<127.0.0.1>": 2}
    (tenant_bucket,) = counters(per_tenant)
    assert tenant_bucket.startswith("header:<") and len(tenant_bucket) == len("header:<>") + 16


def test_a_consumer_scoped_policy_applies_to_that_consumer_only(gw4, upstream):
    route = make_route("api", "/api", make_upstream("backend", upstream.url))
    acme, other = Consumer.objects.create(name="acme"), Consumer.objects.create(name="other")
    _, acme_key = services.create_api_key(consumer=acme, actor=TEST_ACTOR)
    _, other_key = services.create_api_key(consumer=other, actor=TEST_ACTOR)
    policy(name="acme-only", scope="consumer", consumer=acme, key_by="consumer", limit=1)
    serve(gw4)
    assert hit(gw4, "/api/x", 2, headers={"X-API-Key": acme_key}) == [200, 429]
    assert hit(gw4, "/api/x", 2, headers={"X-API-Key": other_key}) == [200, 200]
    assert route.name == "api"


def test_routes_that_require_a_key(gw4, upstream):
    backend = make_upstream("backend", upstream.url)
    make_route("private", "/private", backend, require_api_key=True)
    make_route("passthrough", "/pass", backend, require_api_key=True, forward_api_key=True)
    acme = Consumer.objects.create(name="acme")
    stored, key = services.create_api_key(consumer=acme, actor=TEST_ACTOR)
    serve(gw4)

    missing = requests.get(gw4.url("/private/x"), timeout=10)
    assert missing.status_code == 401
    assert missing.json()["error"] == "api_key_required"
    assert missing.headers["WWW-Authenticate"] == 'ApiKey header="X-API-Key"'
    wrong = requests.get(gw4.url("/private/x"), headers={"X-API-Key": key + "x"}, timeout=10)
    assert wrong.status_code == 401
    assert wrong.json()["request_id"] == wrong.headers["X-Request-ID"]
    assert upstream.received == []

    ok = requests.get(gw4.url("/private/x"), headers={"X-API-Key": key, "X-Consumer-Name": "admin"}, timeout=10)
    assert ok.status_code == 200
    seen = upstream.received[-1]
    assert seen.header("X-Consumer-Name") == "acme"
    assert seen.header("X-API-Key") is None
    requests.get(gw4.url("/pass/x"), headers={"X-API-Key": key}, timeout=10)
    assert upstream.received[-1].header("X-API-Key") == key

    services.revoke_api_key(key=stored, actor=TEST_ACTOR)
    revoked_at = time.monotonic()
    time.sleep(max(0.0, revoked_at + 1.0 - time.monotonic()))
    assert set(hit(gw4, "/private/x", 12, headers={"X-API-Key": key, "Connection": "close"})) == {401}


def test_header_values_and_addresses_cannot_grow_redis_without_bound(gw4, upstream):
    route = make_route("api", "/api", make_upstream("backend", upstream.url))
    policy(name="per-header", scope="route", route=route, key_by="header", header_name="X-Tenant", limit=5)
    serve(gw4)
    requests.get(gw4.url("/api/x"), headers={"X-Tenant": "t" * 6000}, timeout=10)
    client = store.ops_client()
    keys = [k.decode() for k in client.scan_iter(match="{" + gw4.prefix + ":*}:rl:*")]
    assert keys
    for key in keys:
        assert len(key) < 100
        assert 0 < client.pttl(key) <= 60_000
