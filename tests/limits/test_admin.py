"""The limits admin: creating and revoking keys, live usage of a policy, clearing one client's counter.

The Django test client comes from 127.0.0.1, inside GATEWAY_ADMIN_ALLOWED_NETWORKS.
"""

from __future__ import annotations

import re

import pytest
from django.urls import reverse
from django.utils.html import escape

from gateway_project import store
from gateway_project.models import AuditEntry
from limits import limiter, services
from limits.compiled import compile_policy, hash_key
from limits.models import ApiKey, RateLimitPolicy
from tests.support.config import TEST_ACTOR, hit, make_consumer, make_policy
from tests.support.servers import free_port

# Saves publish the configuration revision to Redis after commit: a real one, under a private prefix.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_prefix", "in_process")]

KEY_RE = re.compile(r"gw_[A-Za-z0-9_-]{20,}")


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# keys


def test_create_api_key_action_shows_the_new_key_once(admin_client):
    acme = make_consumer("acme")
    make_consumer("globex")  # not selected: gets no key
    response = admin_client.post(
        reverse("admin:limits_consumer_changelist"),
        {"action": "create_api_key", "_selected_action": [acme.pk]},
    )
    assert response.status_code == 302  # post/redirect/get: a reload of the page shown next makes no key
    page = admin_client.get(response.url).content.decode()
    keys = set(KEY_RE.findall(page))
    assert len(keys) == 1
    (key,) = keys
    assert "shown only once" in page
    assert f"curl -i -H 'X-API-Key: {key}' http://" in page
    assert 'data-copy="key-1"' in page
    again = admin_client.get(response.url).content.decode()
    assert key not in again and 'id="keys-already-shown"' in again
    assert ApiKey.objects.count() == 1
    stored = ApiKey.objects.get()
    assert (stored.consumer, stored.key_hash, stored.prefix) == (acme, hash_key(key), key[:10])
    # Afterwards the consumer's page shows the prefix, never the key.
    change = admin_client.get(reverse("admin:limits_consumer_change", args=[acme.pk])).content.decode()
    assert key[:10] in change
    assert key not in change


def test_create_api_key_action_for_several_consumers(admin_client):
    consumers = [make_consumer("acme"), make_consumer("globex")]
    response = admin_client.post(
        reverse("admin:limits_consumer_changelist"),
        {"action": "create_api_key", "_selected_action": [c.pk for c in consumers]},
        follow=True,
    )
    keys = list(dict.fromkeys(KEY_RE.findall(response.content.decode())))
    assert len(set(keys)) == 2
    assert {k.key_hash: k.consumer.name for k in ApiKey.objects.all()} == {
        hash_key(keys[0]): "acme",
        hash_key(keys[1]): "globex",
    }


def test_a_key_with_a_label_from_the_consumers_page(admin_client):
    acme = make_consumer("acme")
    change = admin_client.get(reverse("admin:limits_consumer_change", args=[acme.pk])).content.decode()
    form_url = reverse("admin:limits_consumer_new_key", args=[acme.pk])
    assert f'href="{form_url}"' in change
    assert 'name="label"' in admin_client.get(form_url).content.decode()
    response = admin_client.post(form_url, {"label": "billing, production"})
    assert response.status_code == 302
    page = admin_client.get(response.url).content.decode()
    (key,) = set(KEY_RE.findall(page))
    assert "billing, production" in page
    stored = ApiKey.objects.get()
    assert (stored.label, stored.key_hash) == ("billing, production", hash_key(key))
    assert admin_client.post(form_url, {"label": "x" * 101}).status_code == 200  # refused, said why
    assert ApiKey.objects.count() == 1


def test_revoke_action(admin_client):
    acme = make_consumer("acme")
    first, _ = services.create_api_key(consumer=acme, actor=TEST_ACTOR)
    second, _ = services.create_api_key(consumer=acme, actor=TEST_ACTOR)
    changelist = reverse("admin:limits_apikey_changelist")
    response = admin_client.post(changelist, {"action": "revoke", "_selected_action": [first.pk]}, follow=True)
    assert response.status_code == 200
    assert "Revoked 1 key(s)." in messages_of(response)
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.revoked_at is not None
    assert second.revoked_at is None
    revoked_at = first.revoked_at

    response = admin_client.post(
        changelist, {"action": "revoke", "_selected_action": [first.pk, second.pk]}, follow=True
    )
    assert "Revoked 1 key(s)." in messages_of(response)
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.revoked_at == revoked_at
    assert second.revoked_at is not None


# live usage


def test_policies_and_key_labels_are_saved_from_the_admin_through_their_services(admin_client):
    """The services name their object `policy` and `key`, not after the model (ratelimitpolicy, apikey)."""
    response = admin_client.post(
        reverse("admin:limits_ratelimitpolicy_add"),
        {
            "name": "per-ip-admin",
            "enabled": "on",
            "mode": "enforce",
            "scope": "global",
            "key_by": "ip",
            "limit": "7",
            "window_seconds": "60",
            "algorithm": "sliding_log",
            "burst": "",
            "on_redis_failure": "allow",
        },
    )
    assert response.status_code == 302, re.findall(r"errorlist[^>]*>(.*?)</ul>", response.content.decode())
    assert RateLimitPolicy.objects.get(name="per-ip-admin").limit == 7
    key, _ = services.create_api_key(consumer=make_consumer("acme"), actor=TEST_ACTOR)
    edited = admin_client.post(reverse("admin:limits_apikey_change", args=[key.pk]), {"label": "renamed"})
    assert edited.status_code == 302
    key.refresh_from_db()
    assert key.label == "renamed"
    assert list(AuditEntry.objects.order_by("id").values_list("object_type", "action", "via")) == [
        ("rate_limit", "create", "admin"),
        ("api_key", "create", "cli"),
        ("api_key", "update", "admin"),
    ]


def test_policy_change_page_without_counters(admin_client):
    policy = make_policy()
    page = admin_client.get(reverse("admin:limits_ratelimitpolicy_change", args=[policy.pk])).content.decode()
    assert "No client is being counted right now." in page
    assert reverse("admin:limits_ratelimitpolicy_usage", args=[policy.pk]) in page


def test_policy_change_page_shows_live_usage(admin_client):
    policy = make_policy()
    url = reverse("admin:limits_ratelimitpolicy_change", args=[policy.pk])
    hit(policy, "192.0.2.1", 3)
    page = admin_client.get(url).content.decode()
    assert "<td>ip 192.0.2.1</td>" in page and "ip:&lt;" not in page and "{" + "gw" not in page
    assert "3 / 5" in page
    assert "rejected and" in page and "rejected since this instance started" in page
    assert page.index("rejected and") < page.index('name="limit"')  # above the form
    assert reverse("admin:limits_ratelimitpolicy_usage", args=[policy.pk]) in page


def test_usage_page_lists_counters_busiest_first(admin_client):
    policy = make_policy()
    quiet = hit(policy, "192.0.2.1", 1)
    busy = hit(policy, "192.0.2.2", 4)
    response = admin_client.get(reverse("admin:limits_ratelimitpolicy_usage", args=[policy.pk]))
    assert response.status_code == 200
    assert [(r.key, r.used) for r in response.context["rows"]] == [(busy, 4), (quiet, 1)]
    page = response.content.decode()
    assert page.index("<td>ip 192.0.2.2</td>") < page.index("<td>ip 192.0.2.1</td>")
    assert "4 / 5" in page and "1 / 5" in page
    assert f'value="{escape(compile_policy(policy).bucket_of(busy))}"' in page
    assert reverse("admin:limits_ratelimitpolicy_clear", args=[policy.pk]) in page


def test_clear_deletes_the_counter(admin_client, redis_client):
    policy = make_policy()
    cleared, kept = hit(policy, "192.0.2.1", 5), hit(policy, "192.0.2.2", 2)
    url = reverse("admin:limits_ratelimitpolicy_clear", args=[policy.pk])
    response = admin_client.post(url, {"client": "ip:<192.0.2.1>"})
    assert response.status_code == 302
    assert response.url == reverse("admin:limits_ratelimitpolicy_usage", args=[policy.pk])
    assert not redis_client.exists(cleared)
    assert redis_client.exists(kept)
    assert messages_of(admin_client.get(response.url)) == ["Cleared the count of ip 192.0.2.1."]
    (entry,) = AuditEntry.objects.filter(action="clear_counter")
    assert (entry.actor, entry.via, entry.object_name, entry.note) == (
        "user:admin",
        "admin",
        policy.name,
        "ip:<192.0.2.1>: cleared",
    )
    response = admin_client.post(url, {"client": "ip:<192.0.2.1>"}, follow=True)
    assert messages_of(response) == ["The count of ip 192.0.2.1 had already expired."]
    # The client counts from zero again.
    outcome = limiter.check((compile_policy(policy),), client_ip="192.0.2.1", consumer=None, route_id=1, environ={})
    assert outcome.results[0].remaining == 4


def test_clear_needs_a_post(admin_client, redis_client):
    policy = make_policy()
    key = hit(policy, "192.0.2.1")
    response = admin_client.get(
        reverse("admin:limits_ratelimitpolicy_clear", args=[policy.pk]), {"client": "ip:<192.0.2.1>"}
    )
    assert response.status_code == 405
    assert redis_client.exists(key)


def test_clear_touches_only_the_policys_own_counter(admin_client, redis_client):
    policy, other = make_policy("one"), make_policy("other")
    other_key = hit(other, "192.0.2.1", 3)
    own_key = hit(policy, "192.0.2.2", 1)
    url = reverse("admin:limits_ratelimitpolicy_clear", args=[policy.pk])
    response = admin_client.post(url, {"client": "ip:<192.0.2.1>"}, follow=True)
    assert messages_of(response) == ["The count of ip 192.0.2.1 had already expired."]
    response = admin_client.post(url, {"client": ""}, follow=True)
    assert messages_of(response) == ["'' is not a client of policy 'one' (e.g. 'ip:<203.0.113.7>')"]
    assert redis_client.exists(other_key)
    assert redis_client.exists(own_key)


def test_pages_say_so_when_redis_is_unavailable(admin_client, settings):
    policy = make_policy()
    store.reset_clients()
    settings.GATEWAY_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    try:
        change = admin_client.get(reverse("admin:limits_ratelimitpolicy_change", args=[policy.pk]))
        assert "Redis is unavailable (ConnectionError); no live usage." in change.content.decode()
        usage = admin_client.get(reverse("admin:limits_ratelimitpolicy_usage", args=[policy.pk]))
        assert usage.status_code == 200
        assert "Redis is unavailable (ConnectionError)." in usage.content.decode()
        clear = admin_client.post(
            reverse("admin:limits_ratelimitpolicy_clear", args=[policy.pk]),
            {"client": "ip:<192.0.2.1>"},
            follow=True,
        )
        assert messages_of(clear) == ["Redis is unavailable (ConnectionError)."]
    finally:
        store.reset_clients()
