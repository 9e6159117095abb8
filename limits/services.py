"""Operations on consumers, keys and counters; the admin, management commands and tests call these."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from limits import storage
from limits.compiled import compile_policy, hash_key
from limits.models import ApiKey, Consumer, RateLimitPolicy

KEY_PREFIX = "gw_"


def create_api_key(*, consumer: Consumer, label: str = "") -> tuple[ApiKey, str]:
    """Make a new key for `consumer`; returns the stored record and the key itself, which is not kept."""
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(consumer=consumer, label=label, prefix=plaintext[:10], key_hash=hash_key(plaintext))
    return key, plaintext


def revoke_api_key(*, key: ApiKey) -> None:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])


@dataclass(frozen=True)
class CounterUsage:
    key: str
    client: str  # the counted value, e.g. ip:<203.0.113.7>
    used: int
    limit: int
    expires_in: float


def policy_usage(*, policy: RateLimitPolicy, top: int = 20, client=None) -> list[CounterUsage]:
    """The busiest counters of a policy right now, read from Redis (with `client`, pages pass a short budget)."""
    compiled = compile_policy(policy)
    rows = storage.usage(
        compiled.counter_pattern,
        algorithm=compiled.algorithm,
        limit=compiled.limit,
        window=compiled.window,
        burst=compiled.burst,
        client=client,
    )
    capacity = compiled.burst if compiled.algorithm == "G" else compiled.limit
    return [CounterUsage(key, compiled.bucket_of(key), used, capacity, ttl) for key, used, ttl in rows[:top]]


def clear_counter(*, policy: RateLimitPolicy, key: str) -> bool:
    """Forget one client's count for `policy` (the key must belong to the policy)."""
    compiled = compile_policy(policy)
    if key != compiled.counter_key(compiled.bucket_of(key)):
        raise ValueError(f"{key!r} is not a counter of policy {policy.name!r}")
    return storage.delete(key)


@transaction.atomic
def ensure_demo_policy(route) -> list[str]:
    """The demo route's limit: 100 requests per minute per client IP."""
    if RateLimitPolicy.objects.filter(name="demo-per-ip").exists():
        return []
    policy = RateLimitPolicy(
        name="demo-per-ip", scope="route", route=route, key_by="ip", limit=100, window_seconds=60, legacy_headers=True
    )
    policy.full_clean()
    policy.save()
    return ["Created rate limit 'demo-per-ip': 100 requests per minute per client IP on /demo/"]
