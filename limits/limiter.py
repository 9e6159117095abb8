"""Deciding one request against every policy that applies: one Redis call, or the failure modes without Redis.

The failure policy lives here and nowhere else: when Redis fails (refused, reset, silent past the hot-path
timeout; never because this worker is busy: gateway_project.redis_pipe), each
policy's `on_redis_failure` applies (allow, deny, or the per-worker local limiter), every use is counted by the
listeners and logged (at most every few seconds, with the count since the last line).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from redis.exceptions import RedisError

from gateway_project.degraded import DegradedLog
from limits import storage
from limits.compiled import CompiledPolicy, ConsumerInfo, hash_key
from limits.local import LocalLimiter

logger = logging.getLogger(__name__)

ALLOWED, REJECTED, SHADOW_REJECTED, FALLBACK = "allowed", "rejected", "shadow_rejected", "fallback"


@dataclass(slots=True)
class PolicyResult:
    policy: CompiledPolicy
    allowed: bool
    remaining: int
    reset: int  # seconds until the oldest counted request leaves the window (sliding log) / full (GCRA)
    retry_after: int  # seconds until a rejected request would be allowed
    decision: str
    known: bool = True  # False when Redis was unavailable and the policy let the request through blind


@dataclass(slots=True)
class Outcome:
    results: list[PolicyResult]
    rejected: PolicyResult | None = None  # an enforced policy said no: 429
    unavailable: PolicyResult | None = None  # Redis is down and a policy fails closed: 503
    redis_error: str | None = None

    def most_restrictive(self) -> PolicyResult | None:
        known = [r for r in self.results if r.known]
        if not known:
            return None
        return min(known, key=lambda r: (r.remaining, -r.reset))

    def summary(self) -> str:
        return ",".join(f"{r.policy.name}:{r.decision}" for r in self.results)


#: IPv4 and IPv6 network sizes counted as one client (GATEWAY_RATELIMIT_IPV4_PREFIX, _IPV6_PREFIX).
_client_networks = (32, 64)


def configure(*, ipv4_prefix: int, ipv6_prefix: int) -> None:
    """Take the limiter's settings; the rate-limit middleware calls it when it is built."""
    global _client_networks
    _client_networks = (ipv4_prefix, ipv6_prefix)


#: Called with every Outcome (metrics subscribe here).
listeners: list[Callable[[Outcome], None]] = []
_local = LocalLimiter()
_fallback_log = DegradedLog(logger, "Redis unavailable for rate limits; applying each policy's failure mode")


@lru_cache(maxsize=65536)
def _ip_bucket(address: str, v4_prefix: int, v6_prefix: int) -> str:
    try:
        if ":" in address:
            if v6_prefix == 128:
                return address
            return str(ipaddress.IPv6Network((address, v6_prefix), strict=False))
        if v4_prefix == 32:
            return address
        return str(ipaddress.IPv4Network((address, v4_prefix), strict=False))
    except ValueError:  # "unknown": a trusted proxy did not say who the client is
        return address


def bucket(policy: CompiledPolicy, *, client_ip: str, consumer: ConsumerInfo | None, route_id: int, environ) -> str:
    """The counter a request falls into for a policy: '<dimension>:<value>', value in angle brackets."""
    key_by = policy.key_by
    if key_by == "route":
        return f"route:<{route_id}>"
    if key_by == "consumer" and consumer is not None:
        return f"consumer:<{consumer.name}>"
    if key_by == "header":
        value = environ.get(policy.header_key)
        if value:
            # Hashed and cut to 16 hex digits: any header value costs the same few bytes in Redis.
            return f"header:<{hash_key(value)[:16]}>"
    ip = _ip_bucket(client_ip, *_client_networks)
    return f"ip:<{ip}>"


def check(
    policies: tuple[CompiledPolicy, ...],
    *,
    client_ip: str,
    consumer: ConsumerInfo | None,
    route_id: int,
    environ,
    dry_run: bool = False,
) -> Outcome:
    """`dry_run` (the route tester's): decide as check would, counting nothing anywhere and telling no listener."""
    keys = [
        p.counter_key(bucket(p, client_ip=client_ip, consumer=consumer, route_id=route_id, environ=environ))
        for p in policies
    ]
    try:
        reply = (storage.peek if dry_run else storage.check)(keys, [p.args for p in policies])
    except RedisError as exc:
        outcome = _fallback(policies, keys, exc, count=not dry_run)
    else:
        outcome = _from_reply(policies, reply)
    if not dry_run:
        for listener in listeners:
            listener(outcome)
    return outcome


def _from_reply(policies: tuple[CompiledPolicy, ...], reply: list[int]) -> Outcome:
    outcome = Outcome(results=[])
    for index, policy in enumerate(policies):
        allowed, remaining, reset_ms, retry_ms = reply[1 + 4 * index : 5 + 4 * index]
        reset, retry = -(-reset_ms // 1000), -(-retry_ms // 1000)  # whole seconds, rounded up
        if allowed:
            decision = ALLOWED
        elif policy.shadow:
            decision = SHADOW_REJECTED
        else:
            decision = REJECTED
        result = PolicyResult(policy, bool(allowed), remaining, reset, retry, decision)
        outcome.results.append(result)
        if decision == REJECTED and outcome.rejected is None:
            outcome.rejected = result
    return outcome


def _fallback(
    policies: tuple[CompiledPolicy, ...], keys: list[str], error: RedisError, *, count: bool = True
) -> Outcome:
    outcome = Outcome(results=[], redis_error=type(error).__name__)
    local = []
    for policy, key in zip(policies, keys, strict=True):
        mode = policy.on_redis_failure
        if mode == "local":
            allowed, remaining, retry = _local.hit(
                key,
                algorithm=policy.algorithm,
                limit=policy.limit,
                window=policy.window,
                burst=policy.burst,
                count=False,
            )
            result = PolicyResult(policy, allowed, remaining, policy.window, int(-(-retry // 1)), FALLBACK)
            local.append((policy, key, result))
            if not allowed and not policy.shadow and outcome.rejected is None:
                outcome.rejected = result
        else:
            result = PolicyResult(policy, mode == "allow", 0, 0, 1, FALLBACK, known=False)
            if mode == "deny" and not policy.shadow and outcome.unavailable is None:
                outcome.unavailable = result
        outcome.results.append(result)
    # As in the Redis script: a request that is refused consumes no quota anywhere.
    if count and outcome.rejected is None and outcome.unavailable is None:
        for policy, key, result in local:
            if result.allowed:
                _local.hit(
                    key, algorithm=policy.algorithm, limit=policy.limit, window=policy.window, burst=policy.burst
                )
    if count:
        _fallback_log.note(error=str(error) or type(error).__name__, policies=outcome.summary())
    return outcome
