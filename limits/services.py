"""Operations on consumers, keys, policies and counters: the admin, the API, management commands and tests call
these, and each change is recorded in the audit trail."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from gateway_project import audit, changes
from gateway_project.audit import Actor
from limits import storage
from limits.compiled import compile_policy, hash_key
from limits.models import ApiKey, Consumer, RateLimitPolicy

KEY_PREFIX = "gw_"


def save_consumer(*, consumer: Consumer, actor: Actor, if_match: str | None = None) -> dict[str, list]:
    return changes.save(consumer, actor=actor, object_type="consumer", name=consumer.name, if_match=if_match)


def delete_consumer(*, consumer: Consumer, actor: Actor, if_match: str | None = None) -> None:
    """Deletes its keys and its policies with it."""
    changes.delete(consumer, actor=actor, object_type="consumer", name=consumer.name, if_match=if_match)


def save_policy(*, policy: RateLimitPolicy, actor: Actor, if_match: str | None = None) -> dict[str, list]:
    return changes.save(policy, actor=actor, object_type="rate_limit", name=policy.name, if_match=if_match)


def delete_policy(*, policy: RateLimitPolicy, actor: Actor, if_match: str | None = None) -> None:
    changes.delete(policy, actor=actor, object_type="rate_limit", name=policy.name, if_match=if_match)


def save_api_key(*, key: ApiKey, actor: Actor, if_match: str | None = None) -> dict[str, list]:
    """Change what can change of a key: its label."""
    return changes.save(key, actor=actor, object_type="api_key", name=key.prefix, if_match=if_match)


def delete_api_key(*, key: ApiKey, actor: Actor, if_match: str | None = None) -> None:
    """Forget a key altogether (revoking keeps it, and its history, in view)."""
    changes.delete(key, actor=actor, object_type="api_key", name=key.prefix, if_match=if_match)


@transaction.atomic
def create_api_key(*, consumer: Consumer, actor: Actor, label: str = "") -> tuple[ApiKey, str]:
    """Make a new key for `consumer`; returns the stored record and the key itself, which is not kept."""
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(consumer=consumer, label=label, prefix=plaintext[:10], key_hash=hash_key(plaintext))
    changes.save(key, actor=actor, object_type="api_key", name=key.prefix)
    return key, plaintext


@transaction.atomic
def revoke_api_key(*, key: ApiKey, actor: Actor) -> bool:
    """Revoke a key (live on every gateway within a second); False if it was revoked already."""
    stored = ApiKey.objects.select_for_update().select_related("consumer").get(pk=key.pk)
    if stored.revoked_at is None:
        stored.revoked_at = timezone.now()
        stored.save(update_fields=["revoked_at"])
        audit.record(
            actor=actor,
            action="revoke",
            object_type="api_key",
            object_name=stored.prefix,
            changes={"revoked_at": [None, stored.revoked_at.isoformat()]},
            note=f"consumer {stored.consumer.name}",
        )
        revoked = True
    else:
        revoked = False
    key.revoked_at = stored.revoked_at
    return revoked


@dataclass(frozen=True)
class CounterUsage:
    key: str
    client: str  # the counted value, e.g. ip:<203.0.113.7>
    used: int
    limit: int
    expires_in: float

    @property
    def who(self) -> str:
        return readable_client(self.client)


def policy_usage(
    *, policy: RateLimitPolicy, top: int = 20, client=None, scan_limit: int = 10_000
) -> list[CounterUsage]:
    """The busiest counters of a policy right now, read from Redis (with `client`, pages pass a short budget;
    at most `scan_limit` counters are read)."""
    compiled = compile_policy(policy)
    rows = storage.usage(
        compiled.counter_pattern,
        algorithm=compiled.algorithm,
        limit=compiled.limit,
        window=compiled.window,
        burst=compiled.burst,
        scan_limit=scan_limit,
        client=client,
    )
    capacity = compiled.burst if compiled.algorithm == "G" else compiled.limit
    return [CounterUsage(key, compiled.bucket_of(key), used, capacity, ttl) for key, used, ttl in rows[:top]]


def clear_counter(*, policy: RateLimitPolicy, client: str, actor: Actor) -> bool:
    """Forget one client's count for `policy` (`client` as policy_usage names it, e.g. 'ip:<203.0.113.7>');
    False when there was none (expired). Recorded in the audit trail either way."""
    if not client or not client.isprintable() or len(client) > 300:
        raise ValueError(f"{client!r} is not a client of policy {policy.name!r} (e.g. 'ip:<203.0.113.7>')")
    cleared = storage.delete(compile_policy(policy).counter_key(client))
    audit.record(
        actor=actor,
        action="clear_counter",
        object_type="rate_limit",
        object_name=policy.name,
        note=f"{client}: {'cleared' if cleared else 'had already expired'}",
    )
    return cleared


@transaction.atomic
def ensure_demo_policy(route, actor: Actor) -> list[str]:
    """The demo route's limit: 100 requests per minute per client IP."""
    if RateLimitPolicy.objects.filter(name="demo-per-ip").exists():
        return []
    policy = RateLimitPolicy(
        name="demo-per-ip", scope="route", route=route, key_by="ip", limit=100, window_seconds=60, legacy_headers=True
    )
    save_policy(policy=policy, actor=actor)
    return ["Created rate limit 'demo-per-ip': 100 requests per minute per client IP on /demo/"]


def readable_client(client: str) -> str:
    """A counted client as an operator reads it: 'ip:<203.0.113.7>' -> 'ip 203.0.113.7' (never a Redis key)."""
    kind, _, value = client.partition(":")
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return f"{kind} {value}" if value else client


def busiest_clients(*, top: int = 10) -> list[dict]:
    """The clients closest to (or at) their limit, over every enabled policy, for the status page
    (registry.limited_client_providers); read with the pages' Redis budget, at most 1,000 counters a policy."""
    from gateway_project import store

    client = store.page_client()
    rows = [
        {"policy": policy.name, "client": u.who, "used": u.used, "limit": u.limit, "expires_in": u.expires_in}
        for policy in RateLimitPolicy.objects.filter(enabled=True).order_by("name")
        for u in policy_usage(policy=policy, top=top, client=client, scan_limit=1000)
    ]
    rows.sort(key=lambda r: (-r["used"] / (r["limit"] or 1), r["policy"], r["client"]))
    return rows[:top]


def route_page_lines(*, route_id: int, upstream_name: str) -> list[tuple[str, list[str]]]:
    """For the route's admin page: the rate-limit policies that apply to its requests."""
    lines = []
    policies = RateLimitPolicy.objects.filter(enabled=True).select_related("consumer").order_by("scope", "name")
    for policy in policies:
        if policy.scope == RateLimitPolicy.Scope.ROUTE and policy.route_id != route_id:
            continue
        where = {
            RateLimitPolicy.Scope.GLOBAL: "every route",
            RateLimitPolicy.Scope.ROUTE: "this route",
            RateLimitPolicy.Scope.CONSUMER: f"consumer {policy.consumer} only",
        }.get(policy.scope, policy.scope)
        shadow = ", shadow: never rejects" if policy.mode == RateLimitPolicy.Mode.SHADOW else ""
        lines.append(
            f"{policy.name}: {policy.limit} per {policy.window_seconds} s per {policy.get_key_by_display()} "
            f"({where}{shadow})"
        )
    return [("Rate-limit policies that apply", lines or ["none: requests are not limited"])]
