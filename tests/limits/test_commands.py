"""The limits commands: create_api_key, revoke_api_key and rate_limit_usage, each recorded as cli:<os user>."""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError

from gateway_project.models import AuditEntry
from limits.compiled import hash_key
from limits.models import ApiKey, Consumer
from tests.support.commands import CLI, command
from tests.support.config import hit, make_consumer, make_policy

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_prefix")]


def trail() -> list[tuple]:
    return [(e.actor, e.via, e.action, e.object_type, e.object_name) for e in AuditEntry.objects.order_by("id")]


def test_create_api_key_prints_the_key_once_and_records_it():
    key = command("create_api_key", "acme", "--create-consumer", "--label", "ci").strip()
    stored = ApiKey.objects.get()
    assert (stored.consumer.name, stored.label, stored.key_hash) == ("acme", "ci", hash_key(key))
    assert trail() == [(CLI, "cli", "create", "consumer", "acme"), (CLI, "cli", "create", "api_key", stored.prefix)]
    with pytest.raises(CommandError, match="no consumer named 'nobody'"):
        command("create_api_key", "nobody")
    with pytest.raises(CommandError, match="Use 1-63 letters"):
        command("create_api_key", "bad name", "--create-consumer")
    assert list(Consumer.objects.values_list("name", flat=True)) == ["acme"]


def test_revoke_api_key_by_prefix():
    command("create_api_key", "acme", "--create-consumer")
    prefix = ApiKey.objects.get().prefix
    assert command("revoke_api_key", prefix).strip() == f"{prefix} (acme): revoked"
    assert command("revoke_api_key", prefix).strip() == f"{prefix} (acme): was already revoked"
    assert ApiKey.objects.get().revoked_at is not None
    assert trail()[-1] == (CLI, "cli", "revoke", "api_key", prefix)
    assert len(trail()) == 3
    with pytest.raises(CommandError, match="no API keys have the prefix 'gw_nope'"):
        command("revoke_api_key", "gw_nope")


def test_rate_limit_usage_lists_and_clears_a_client():
    policy = make_policy("per-ip", limit=5)
    hit(policy, "192.0.2.1", 3)
    assert command("rate_limit_usage", "per-ip").splitlines()[1].split() == ["ip:<192.0.2.1>", "3/5", "60s"]
    assert json.loads(command("rate_limit_usage", "per-ip", "--json"))[0]["used"] == 3
    assert command("rate_limit_usage", "per-ip", "--clear", "ip:<192.0.2.1>").strip() == "cleared ip:<192.0.2.1>"
    assert command("rate_limit_usage", "per-ip").strip() == "No client is being counted by per-ip right now."
    assert trail() == [(CLI, "cli", "clear_counter", "rate_limit", "per-ip")]
    with pytest.raises(CommandError, match="no rate limit policy named 'nope'"):
        command("rate_limit_usage", "nope")


def test_rate_limit_usage_refuses_the_embedded_store(settings):
    make_consumer()
    make_policy("per-ip")
    settings.GATEWAY_EMBEDDED_STORE = True
    for args in (("per-ip",), ("per-ip", "--clear", "ip:<192.0.2.1>")):
        with pytest.raises(CommandError, match="embedded store"):
            command("rate_limit_usage", *args)
    assert trail() == []
