"""Consumers, keys and policies compiled for the hot path: dictionary lookups, no SQL, nothing built per request."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from gateway_project import runtime, store
from gateway_project.http import environ_key


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    id: int
    name: str


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    id: int
    name: str
    key_by: str
    header_key: str  # environ key of the header counted by, e.g. HTTP_X_TENANT
    limit: int
    window: int  # seconds
    algorithm: str  # "L" (sliding log) or "G" (GCRA)
    burst: int
    shadow: bool
    on_redis_failure: str
    legacy_headers: bool
    tag_prefix: str  # '<redis prefix>:', the start of every counter's hash tag
    key_suffix: str  # ':rl:<policy id>:<algorithm>', the end of every counter key of this policy
    args: tuple[str, str, str, str, str]  # this policy's ARGV for the Lua script
    policy_field: str  # its RateLimit-Policy item

    def counter_key(self, bucket: str) -> str:
        """The counter of one client (a `limiter.bucket`, e.g. 'ip:<203.0.113.7>'): '{gw:<bucket>}:rl:<id>:<alg>'.

        The hash tag is the client, not the policy: on a Redis Cluster each client's counters live in a slot of
        their own, so the limiter's load spreads over every shard, and the policies of one request that count
        by the same client share a slot (one script call checks them together).
        """
        return f"{{{self.tag_prefix}{bucket}}}{self.key_suffix}"

    def bucket_of(self, key: str) -> str:
        return key[len(self.tag_prefix) + 1 : -len(self.key_suffix) - 1]

    @property
    def counter_pattern(self) -> str:
        """Every counter of this policy, as a SCAN MATCH pattern."""
        return f"{{{_escape(self.tag_prefix)}*}}{_escape(self.key_suffix)}"


@dataclass(frozen=True)
class LimitsConfig:
    keys: dict[str, ConsumerInfo] = field(default_factory=dict)  # sha256(key) -> consumer
    global_policies: tuple[CompiledPolicy, ...] = ()
    by_route: dict[int, tuple[CompiledPolicy, ...]] = field(default_factory=dict)
    by_consumer: dict[int, tuple[CompiledPolicy, ...]] = field(default_factory=dict)

    def consumer_for_key(self, presented: str) -> ConsumerInfo | None:
        return self.keys.get(hash_key(presented))

    def policies_for(self, route_id: int, consumer: ConsumerInfo | None) -> tuple[CompiledPolicy, ...]:
        policies = self.global_policies
        route_policies = self.by_route.get(route_id)
        if route_policies:
            policies = policies + route_policies
        if consumer is not None:
            consumer_policies = self.by_consumer.get(consumer.id)
            if consumer_policies:
                policies = policies + consumer_policies
        return policies


def hash_key(presented: str) -> str:
    return hashlib.sha256(presented.encode("utf-8", "surrogateescape")).hexdigest()


def _escape(text: str) -> str:
    """Escape glob characters for SCAN MATCH (Redis's glob knows no braces)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def compile_policy(policy) -> CompiledPolicy:
    algorithm = "L" if policy.algorithm == "sliding_log" else "G"
    burst = policy.burst or policy.limit
    shadow = policy.mode == "shadow"
    header_key = environ_key(policy.header_name) if policy.header_name else ""
    return CompiledPolicy(
        id=policy.id,
        name=policy.name,
        key_by=policy.key_by,
        header_key=header_key,
        limit=policy.limit,
        window=policy.window_seconds,
        algorithm=algorithm,
        burst=burst,
        shadow=shadow,
        on_redis_failure=policy.on_redis_failure,
        legacy_headers=policy.legacy_headers,
        tag_prefix=store.key(""),
        key_suffix=f":rl:{policy.id}:{algorithm}",
        args=(algorithm, str(policy.limit), str(policy.window_seconds * 1000), str(burst), "1" if shadow else "0"),
        policy_field=f'"{policy.name}";q={policy.limit};w={policy.window_seconds}',
    )


def load() -> LimitsConfig:
    from limits.models import ApiKey, RateLimitPolicy

    keys = {
        key.key_hash: ConsumerInfo(key.consumer_id, key.consumer.name)
        for key in runtime.in_turns(
            ApiKey.objects.filter(revoked_at__isnull=True, consumer__enabled=True).select_related("consumer")
        )
    }
    global_policies: list[CompiledPolicy] = []
    by_route: dict[int, list[CompiledPolicy]] = {}
    by_consumer: dict[int, list[CompiledPolicy]] = {}
    policies = RateLimitPolicy.objects.filter(enabled=True).exclude(consumer__enabled=False).order_by("id")
    for policy in runtime.in_turns(policies):
        compiled = compile_policy(policy)
        if policy.scope == "route":
            by_route.setdefault(policy.route_id, []).append(compiled)
        elif policy.scope == "consumer":
            by_consumer.setdefault(policy.consumer_id, []).append(compiled)
        else:
            global_policies.append(compiled)
    return LimitsConfig(
        keys=keys,
        global_policies=tuple(global_policies),
        by_route={k: tuple(v) for k, v in by_route.items()},
        by_consumer={k: tuple(v) for k, v in by_consumer.items()},
    )
