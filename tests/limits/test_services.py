"""limits.services (keys, live usage, clearing counters, the demo policy) and compiled.load()."""

from __future__ import annotations

import pytest

from gateway_project.models import AuditEntry
from limits import compiled, services
from limits.compiled import ConsumerInfo, compile_policy, hash_key
from limits.models import ApiKey, RateLimitPolicy
from tests.support.config import TEST_ACTOR, hit, make_consumer, make_policy, make_route, make_upstream

# Saves publish the configuration revision to Redis after commit: a real one, under a private prefix.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_prefix")]


def counter_key(policy: RateLimitPolicy, client_ip: str) -> str:
    return compile_policy(policy).counter_key(f"ip:<{client_ip}>")


# API keys


def test_create_api_key_returns_the_key_and_stores_only_its_hash():
    consumer = make_consumer()
    key, plaintext = services.create_api_key(consumer=consumer, label="ci", actor=TEST_ACTOR)
    assert plaintext.startswith("gw_")
    assert len(plaintext) > 40
    stored = ApiKey.objects.get(pk=key.pk)
    assert stored.key_hash == hash_key(plaintext)
    assert stored.prefix == plaintext[:10]
    assert (stored.consumer, stored.label, stored.revoked_at) == (consumer, "ci", None)
    for row in ApiKey.objects.values():
        assert plaintext not in " ".join(str(value) for value in row.values())
    _, another = services.create_api_key(consumer=consumer, actor=TEST_ACTOR)
    assert another != plaintext


def test_revoke_sets_revoked_at_once():
    key, _ = services.create_api_key(consumer=make_consumer(), actor=TEST_ACTOR)
    services.revoke_api_key(key=key, actor=TEST_ACTOR)
    revoked_at = ApiKey.objects.get(pk=key.pk).revoked_at
    assert revoked_at is not None
    assert not ApiKey.objects.get(pk=key.pk).active
    services.revoke_api_key(key=ApiKey.objects.get(pk=key.pk), actor=TEST_ACTOR)
    assert ApiKey.objects.get(pk=key.pk).revoked_at == revoked_at


# compiled.load()


def test_load_excludes_revoked_keys_and_disabled_consumers():
    acme, globex = make_consumer("acme"), make_consumer("globex", enabled=False)
    _, active = services.create_api_key(consumer=acme, actor=TEST_ACTOR)
    revoked, revoked_plaintext = services.create_api_key(consumer=acme, actor=TEST_ACTOR)
    services.revoke_api_key(key=revoked, actor=TEST_ACTOR)
    _, disabled = services.create_api_key(consumer=globex, actor=TEST_ACTOR)

    config = compiled.load()
    assert config.consumer_for_key(active) == ConsumerInfo(acme.id, "acme")
    assert config.consumer_for_key(revoked_plaintext) is None
    assert config.consumer_for_key(disabled) is None
    assert config.consumer_for_key("gw_unknown") is None
    assert list(config.keys) == [hash_key(active)]


def test_load_groups_enabled_policies_by_scope():
    acme, globex = make_consumer("acme"), make_consumer("globex", enabled=False)
    api = make_route("api", "/api", make_upstream())
    make_policy("global")
    make_policy("global-off", enabled=False)
    make_policy("on-api", scope="route", route=api)
    make_policy("for-acme", scope="consumer", consumer=acme)
    make_policy("for-globex", scope="consumer", consumer=globex)

    config = compiled.load()
    assert [p.name for p in config.global_policies] == ["global"]
    assert [p.name for p in config.policies_for(api.id, ConsumerInfo(acme.id, "acme"))] == [
        "global",
        "on-api",
        "for-acme",
    ]
    assert [p.name for p in config.policies_for(api.id + 1, None)] == ["global"]
    assert globex.id not in config.by_consumer
    assert [p.name for p in config.policies_for(api.id, ConsumerInfo(globex.id, "globex"))] == ["global", "on-api"]


# live usage and clearing counters


def test_policy_usage_lists_the_busiest_counters_first():
    policy = make_policy(limit=5)
    hit(policy, "192.0.2.1", 3)
    hit(policy, "192.0.2.2", 1)
    hit(policy, "192.0.2.3", 2)
    hit(make_policy("unrelated"), "192.0.2.9", 4)

    rows = services.policy_usage(policy=policy)
    assert [(r.client, r.used, r.limit) for r in rows] == [
        ("ip:<192.0.2.1>", 3, 5),
        ("ip:<192.0.2.3>", 2, 5),
        ("ip:<192.0.2.2>", 1, 5),
    ]
    assert rows[0].key == counter_key(policy, "192.0.2.1")
    assert all(0 < r.expires_in <= 60 for r in rows)
    assert [r.client for r in services.policy_usage(policy=policy, top=1)] == ["ip:<192.0.2.1>"]


def test_policy_usage_of_a_gcra_policy():
    policy = make_policy("gcra", algorithm="gcra", limit=10, burst=4)
    hit(policy, "192.0.2.1", 3)
    hit(policy, "192.0.2.2", 9)  # only the burst gets through
    assert [(r.client, r.used, r.limit) for r in services.policy_usage(policy=policy)] == [
        ("ip:<192.0.2.2>", 4, 4),
        ("ip:<192.0.2.1>", 3, 4),
    ]


def test_policy_usage_when_nothing_is_counted():
    assert services.policy_usage(policy=make_policy()) == []


def test_busiest_clients_over_every_enabled_policy_nearest_their_limit_first():
    tight, loose = make_policy("tight", limit=4), make_policy("loose", limit=100)
    make_policy("off", limit=1, enabled=False)
    hit(tight, "198.51.100.7", 3)
    hit(tight, "2001:db8::1", 1)
    hit(loose, "198.51.100.7", 10)
    rows = services.busiest_clients(top=2)
    assert [(r["policy"], r["client"], r["used"], r["limit"]) for r in rows] == [
        ("tight", "ip 198.51.100.7", 3, 4),
        ("tight", "ip 2001:db8::/64", 1, 4),
    ]
    assert all(0 < r["expires_in"] <= 60 for r in rows)


def test_clear_counter_deletes_one_key(redis_client):
    policy = make_policy()
    hit(policy, "192.0.2.1", 2)
    hit(policy, "192.0.2.2", 2)
    assert services.clear_counter(policy=policy, client="ip:<192.0.2.1>", actor=TEST_ACTOR) is True
    assert not redis_client.exists(counter_key(policy, "192.0.2.1"))
    assert redis_client.exists(counter_key(policy, "192.0.2.2"))
    assert [r.client for r in services.policy_usage(policy=policy)] == ["ip:<192.0.2.2>"]
    assert services.clear_counter(policy=policy, client="ip:<192.0.2.1>", actor=TEST_ACTOR) is False
    cleared = AuditEntry.objects.filter(action="clear_counter").order_by("id")
    assert [(e.actor, e.object_type, e.object_name, e.note) for e in cleared] == [
        ("test", "rate_limit", policy.name, "ip:<192.0.2.1>: cleared"),
        ("test", "rate_limit", policy.name, "ip:<192.0.2.1>: had already expired"),
    ]


def test_clear_counter_touches_only_its_own_policys_keys(redis_client):
    one = make_policy("one", id=1)
    eleven = make_policy("eleven", id=11)  # its prefix starts with policy 1's but for the separator
    hit(eleven, "192.0.2.1")
    other_key = counter_key(eleven, "192.0.2.1")
    assert services.clear_counter(policy=one, client="ip:<192.0.2.1>", actor=TEST_ACTOR) is False
    for client in ("", "ip:<1>\r\nFLUSHALL"):
        with pytest.raises(ValueError, match="is not a client of policy 'one'"):
            services.clear_counter(policy=one, client=client, actor=TEST_ACTOR)
    assert redis_client.exists(other_key)


# the demo


def test_ensure_demo_policy_is_idempotent():
    route = make_route("demo", "/demo", make_upstream("demo"))
    assert services.ensure_demo_policy(route, TEST_ACTOR) == [
        "Created rate limit 'demo-per-ip': 100 requests per minute per client IP on /demo/"
    ]
    policy = RateLimitPolicy.objects.get(name="demo-per-ip")
    assert (policy.scope, policy.route, policy.key_by, policy.limit, policy.window_seconds) == (
        "route",
        route,
        "ip",
        100,
        60,
    )
    assert policy.legacy_headers is True
    assert services.ensure_demo_policy(route, TEST_ACTOR) == []
    assert RateLimitPolicy.objects.count() == 1
