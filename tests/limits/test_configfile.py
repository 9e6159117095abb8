"""The `consumers` and `rate_limits` sections of the configuration document (limits.configfile)."""

from __future__ import annotations

import warnings
from datetime import timedelta, timezone

import pytest

from gateway_project import configfile
from gateway_project.configfile import ConfigError
from limits import services
from limits.compiled import hash_key
from limits.models import MAX_LOG_LIMIT, ApiKey, Consumer, RateLimitPolicy
from proxy.models import Route
from tests.support.config import (
    TEST_ACTOR,
    assert_round_trip_is_a_no_op,
    import_and_apply,
    make_route,
    make_upstream,
    names,
    plan_text,
    problems_of,
)

# Saves publish the configuration revision to Redis after commit: a real one, under a private prefix.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_prefix")]


def make_consumer(name: str, **fields) -> Consumer:
    obj = Consumer(name=name, **fields)
    obj.full_clean()
    obj.save()
    return obj


def make_policy(name: str, **fields) -> RateLimitPolicy:
    obj = RateLimitPolicy(name=name, **{"limit": 10, "window_seconds": 60, **fields})
    obj.full_clean()
    obj.save()
    return obj


@pytest.fixture
def seeded():
    """Consumers with active and revoked keys, and policies of every scope, created the way the admin does."""
    backend = make_upstream("backend")
    api = make_route("api", "/api", backend)
    make_route("other", "/other", backend)
    acme = make_consumer("acme", description="Acme Corp")
    make_consumer("globex", enabled=False)
    active, plaintext = services.create_api_key(consumer=acme, label="ci", actor=TEST_ACTOR)
    revoked, _ = services.create_api_key(consumer=acme, label="old laptop", actor=TEST_ACTOR)
    services.revoke_api_key(key=revoked, actor=TEST_ACTOR)
    make_policy("global-ip")
    make_policy(
        "api-tenant",
        scope="route",
        route=api,
        key_by="header",
        header_name="X-Tenant",
        limit=20_000,
        algorithm="gcra",
        burst=50,
        mode="shadow",
        on_redis_failure="local",
        legacy_headers=True,
    )
    make_policy("acme-limit", scope="consumer", consumer=acme, key_by="consumer", limit=5, window_seconds=1)
    return {"active": active, "revoked": revoked, "plaintext": plaintext}


def db_state():
    return (
        list(Consumer.objects.order_by("name").values()),
        list(ApiKey.objects.order_by("key_hash").values()),
        list(RateLimitPolicy.objects.order_by("name").values()),
    )


def policy_item(name: str, **fields) -> dict:
    return {"name": name, "limit": 10, "window_seconds": 60, **fields}


def key_item(plaintext: str, **fields) -> dict:
    return {"prefix": plaintext[:10], "sha256": hash_key(plaintext), "label": "", "revoked_at": None, **fields}


# export / import round trip


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_export_then_import_changes_nothing(seeded, fmt):
    before = db_state()
    assert_round_trip_is_a_no_op(fmt)
    assert db_state() == before


def test_export_holds_key_hashes_never_keys(seeded):
    document = configfile.export_document()
    assert seeded["plaintext"] not in configfile.dump(document)
    acme, globex = document["consumers"]
    assert acme["name"] == "acme" and acme["description"] == "Acme Corp" and acme["enabled"] is True
    assert globex == {"name": "globex", "enabled": False, "description": "", "api_keys": []}
    active, revoked = acme["api_keys"]
    assert active == {
        "prefix": seeded["plaintext"][:10],
        "sha256": hash_key(seeded["plaintext"]),
        "label": "ci",
        "revoked_at": None,
    }
    assert revoked["label"] == "old laptop"
    assert revoked["revoked_at"] == seeded["revoked"].revoked_at.isoformat()


def test_export_of_rate_limits(seeded):
    policies = {p["name"]: p for p in configfile.export_document()["rate_limits"]}
    assert list(policies) == ["acme-limit", "api-tenant", "global-ip"]
    assert policies["api-tenant"] == {
        "name": "api-tenant",
        "scope": "route",
        "key_by": "header",
        "header_name": "X-Tenant",
        "limit": 20_000,
        "window_seconds": 60,
        "algorithm": "gcra",
        "burst": 50,
        "mode": "shadow",
        "on_redis_failure": "local",
        "legacy_headers": True,
        "enabled": True,
        "route": "api",
        "consumer": None,
    }
    assert (policies["acme-limit"]["scope"], policies["acme-limit"]["consumer"]) == ("consumer", "acme")
    assert (policies["global-ip"]["route"], policies["global-ip"]["consumer"]) == (None, None)


def test_import_into_an_empty_database_gives_the_same_document(seeded):
    document = configfile.parse(configfile.dump(configfile.export_document()))
    RateLimitPolicy.objects.all().delete()
    Consumer.objects.all().delete()
    assert ApiKey.objects.count() == 0

    changes = import_and_apply(document)
    assert changes == [
        "create consumer 'acme'",
        "create consumer 'globex'",
        "create rate_limit 'acme-limit'",
        "create rate_limit 'api-tenant'",
        "create rate_limit 'global-ip'",
    ]
    assert configfile.export_document() == document
    assert configfile.plan(document).changes == []
    revoked = ApiKey.objects.get(key_hash=seeded["revoked"].key_hash)
    assert revoked.revoked_at == seeded["revoked"].revoked_at
    assert ApiKey.objects.get(key_hash=hash_key(seeded["plaintext"])).revoked_at is None
    assert RateLimitPolicy.objects.get(name="acme-limit").consumer == Consumer.objects.get(name="acme")
    assert RateLimitPolicy.objects.get(name="api-tenant").route == Route.objects.get(name="api")


def test_a_key_can_be_revoked_through_the_document_but_never_restored(seeded):
    document = configfile.export_document()
    old = configfile.export_document()  # taken before the revocation, as an old export in a repository would be
    document["consumers"][0]["api_keys"][0]["revoked_at"] = "2031-02-03T04:05:06.789012+00:00"
    assert import_and_apply(document) == ["update consumer 'acme': api_keys"]
    active = ApiKey.objects.get(pk=seeded["active"].pk)
    assert active.revoked_at.isoformat() == "2031-02-03T04:05:06.789012+00:00"
    assert configfile.plan(configfile.export_document()).changes == []
    assert configfile.plan(document).changes == []

    with pytest.raises(ConfigError) as refused:
        configfile.plan(old)
    assert any("a revoked key stays revoked" in problem for problem in refused.value.problems)
    assert ApiKey.objects.get(pk=seeded["active"].pk).revoked_at is not None


def test_a_consumer_without_api_keys_keeps_its_keys(seeded):
    document = configfile.export_document()
    del document["consumers"][0]["api_keys"]
    assert plan_text(document) == []
    assert ApiKey.objects.filter(consumer__name="acme").count() == 2


def test_revoked_at_with_an_offset_is_the_same_instant(seeded):
    document = configfile.export_document()
    revoked = seeded["revoked"].revoked_at
    local = revoked.astimezone(timezone(timedelta(hours=2)))
    document["consumers"][0]["api_keys"][1]["revoked_at"] = local.isoformat()
    assert plan_text(document) == []


def test_keys_left_out_of_a_consumer_are_deleted(seeded):
    document = configfile.export_document()
    document["consumers"][0]["api_keys"] = document["consumers"][0]["api_keys"][:1]
    assert import_and_apply(document) == ["update consumer 'acme': api_keys"]
    assert list(ApiKey.objects.values_list("key_hash", flat=True)) == [seeded["active"].key_hash]


def test_new_route_consumer_key_and_policies_in_one_document(seeded):
    document = {
        "version": 1,
        "routes": [
            *configfile.export_document()["routes"],
            {"name": "new", "path_prefix": "/new", "upstream": "backend"},
        ],
        "consumers": [{"name": "initech", "api_keys": [key_item("gw_initech-key", label="prod")]}],
        "rate_limits": [
            policy_item("new-route", scope="route", route="new"),
            policy_item("initech", scope="consumer", consumer="initech", key_by="consumer"),
        ],
    }
    assert import_and_apply(document) == [
        "create route 'new'",
        "create consumer 'initech'",
        "create rate_limit 'new-route'",
        "create rate_limit 'initech'",
    ]
    initech = Consumer.objects.get(name="initech")
    assert RateLimitPolicy.objects.get(name="new-route").route == Route.objects.get(name="new")
    assert RateLimitPolicy.objects.get(name="initech").consumer == initech
    key = ApiKey.objects.get(consumer=initech)
    assert (key.key_hash, key.prefix, key.label) == (hash_key("gw_initech-key"), "gw_initech", "prod")
    assert configfile.plan(document).changes == []


def test_policy_updates_name_the_changed_fields(seeded):
    document = configfile.export_document()
    policy = next(p for p in document["rate_limits"] if p["name"] == "global-ip")
    policy.update(scope="route", route="other", limit=11)
    assert plan_text(document) == ["update rate_limit 'global-ip': scope, limit, route_id"]


# invalid documents


def test_a_rate_limit_naming_a_missing_route_or_consumer_is_reported(seeded):
    before = db_state()
    document = {
        "version": 1,
        "rate_limits": [
            policy_item("r", scope="route", route="nope"),
            policy_item("c", scope="consumer", consumer="nobody"),
        ],
    }
    problems = problems_of(document)
    assert "rate_limits[0] (r).route: no route named 'nope'" in problems
    assert "rate_limits[1] (c).consumer: no consumer named 'nobody'" in problems
    assert db_state() == before


def test_scope_and_target_consistency_is_reported_with_its_location(seeded):
    document = {
        "version": 1,
        "rate_limits": [
            policy_item("global-with-route", route="api"),
            policy_item("route-without-route", scope="route"),
            policy_item("consumer-without-consumer", scope="consumer"),
            policy_item("route-with-consumer", scope="route", route="api", consumer="acme"),
            policy_item("header-without-name", key_by="header"),
            policy_item("name-without-header", header_name="X-Tenant"),
            policy_item("log-with-burst", burst=5),
            policy_item("bad-choice", scope="everywhere", algorithm="leaky"),
        ],
    }
    problems = problems_of(document)
    for expected in [
        "rate_limits[0] (global-with-route).route: Only a policy scoped to one route names a route.",
        "rate_limits[1] (route-without-route).route: Choose the route this policy applies to.",
        "rate_limits[2] (consumer-without-consumer).consumer: Choose the consumer this policy applies to.",
        "rate_limits[3] (route-with-consumer).consumer: Only a policy scoped to one consumer names a consumer.",
        "rate_limits[4] (header-without-name).header_name: Name the header to count by (letters, digits and '-').",
        "rate_limits[5] (name-without-header).header_name: Only a policy counting by a header names one.",
        "rate_limits[6] (log-with-burst).burst: Only GCRA takes a burst.",
    ]:
        assert expected in problems
    assert any(p.startswith("rate_limits[7] (bad-choice).scope:") for p in problems)
    assert any(p.startswith("rate_limits[7] (bad-choice).algorithm:") for p in problems)


def test_sliding_log_above_the_log_cap_is_refused(seeded):
    problems = problems_of({"version": 1, "rate_limits": [policy_item("big", limit=MAX_LOG_LIMIT + 1)]})
    assert problems == [
        f"rate_limits[0] (big).limit: The exact sliding window keeps an entry per request: use GCRA above "
        f"{MAX_LOG_LIMIT}."
    ]
    assert plan_text({"version": 1, "rate_limits": [policy_item("at-cap", limit=MAX_LOG_LIMIT)]}) == [
        "create rate_limit 'at-cap'"
    ]
    assert plan_text({"version": 1, "rate_limits": [policy_item("big", limit=10**6, algorithm="gcra")]}) == [
        "create rate_limit 'big'"
    ]


def test_a_key_of_another_consumer_is_refused(seeded):
    before = db_state()
    document = configfile.export_document()
    acme_key = document["consumers"][0]["api_keys"][0]
    document["consumers"][1]["api_keys"] = [dict(acme_key)]
    assert problems_of(document) == ["consumers[1] (globex).api_keys[0]: this key belongs to consumer 'acme'"]
    assert db_state() == before


def test_malformed_keys_are_reported(seeded):
    document = {
        "version": 1,
        "consumers": [
            {
                "name": "initech",
                "api_keys": [
                    "gw_plaintext",
                    {"sha256": "ABC"},
                    key_item("gw_a", prefix="x" * 13),
                    key_item("gw_b", revoked_at="yesterday"),
                    key_item("gw_c"),
                    key_item("gw_c"),
                    key_item("gw_d", key="gw_d"),
                ],
            }
        ],
    }
    assert problems_of(document) == [
        "consumers[0] (initech).api_keys[0]: must be a mapping of prefix, sha256, label and revoked_at",
        "consumers[0] (initech).api_keys[1].sha256: must be 64 lower-case hex digits",
        "consumers[0] (initech).api_keys[2].prefix: must be a string of at most 12 characters",
        "consumers[0] (initech).api_keys[3].revoked_at: must be an ISO 8601 date-time with a UTC offset, or null",
        "consumers[0] (initech).api_keys[5]: the same key appears twice",
        "consumers[0] (initech).api_keys[6]: must be a mapping of prefix, sha256, label and revoked_at",
    ]


def test_the_same_new_key_under_two_consumers_is_reported(seeded):
    document = {
        "version": 1,
        "consumers": [
            {"name": "a", "api_keys": [key_item("gw_shared")]},
            {"name": "b", "api_keys": [key_item("gw_shared")]},
        ],
    }
    with pytest.raises(ConfigError):
        configfile.plan(document)


def test_an_overlong_key_label_is_reported(seeded):
    document = {"version": 1, "consumers": [{"name": "initech", "api_keys": [key_item("gw_x", label="x" * 101)]}]}
    with pytest.raises(ConfigError):
        configfile.plan(document)


def test_revoked_at_without_an_offset_is_refused_or_stable(seeded):
    document = configfile.export_document()
    document["consumers"][0]["api_keys"][0]["revoked_at"] = "2031-02-03T04:05:06"
    try:
        plan = configfile.plan(document)
    except ConfigError:
        return  # refusing it is fine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        configfile.apply(plan, actor=TEST_ACTOR)
    assert configfile.plan(document).changes == []


# pruning


def test_pruning_a_consumer_that_a_kept_policy_uses_is_refused(seeded):
    before = db_state()
    document = configfile.export_document()
    document["consumers"] = [c for c in document["consumers"] if c["name"] != "acme"]
    # The policy still in the document names a consumer that is gone.
    assert problems_of(document, prune=True) == [
        "rate_limits[0] (acme-limit).consumer: no consumer named 'acme'",
        "rate_limits[0] (acme-limit).consumer: Choose the consumer this policy applies to.",
    ]
    # Without a rate_limits section, the policy is kept as it is and still uses acme.
    del document["rate_limits"]
    assert problems_of(document, prune=True) == ["rate_limits (acme-limit): its consumer 'acme' would be deleted"]
    assert db_state() == before


def test_pruning_a_route_that_a_kept_policy_uses_is_refused(seeded):
    document = configfile.export_document()
    document["routes"] = [r for r in document["routes"] if r["name"] != "api"]
    del document["rate_limits"]
    assert problems_of(document, prune=True) == ["rate_limits (api-tenant): its route 'api' would be deleted"]


def test_prune_deletes_policies_before_routes_and_consumers(seeded):
    document = configfile.export_document()
    document["routes"] = [r for r in document["routes"] if r["name"] != "api"]
    document["consumers"] = [c for c in document["consumers"] if c["name"] != "acme"]
    document["rate_limits"] = [p for p in document["rate_limits"] if p["name"] == "global-ip"]
    changes = import_and_apply(document, prune=True)
    assert changes == [
        "delete rate_limit 'acme-limit'",
        "delete rate_limit 'api-tenant'",
        "delete consumer 'acme'",
        "delete route 'api'",
    ]
    assert names(RateLimitPolicy) == ["global-ip"]
    assert names(Consumer) == ["globex"]
    assert names(Route) == ["other"]
    assert ApiKey.objects.count() == 0


def test_without_prune_leftover_consumers_and_policies_are_kept(seeded):
    document = {"version": 1, "consumers": [], "rate_limits": [policy_item("extra")]}
    assert import_and_apply(document) == ["create rate_limit 'extra'"]
    assert names(Consumer) == ["acme", "globex"]
    assert names(RateLimitPolicy) == ["acme-limit", "api-tenant", "extra", "global-ip"]
