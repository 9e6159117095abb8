"""Creating configuration in tests the way an operator's admin save does: validated, then saved."""

from __future__ import annotations

from gateway_project import runtime
from gateway_project.audit import Actor
from proxy.models import Route, Upstream

#: Who the tests' own configuration imports are recorded as.
TEST_ACTOR = Actor("test", "cli")


def make_upstream(name: str = "backend", base_url: str = "http://127.0.0.1:9", **fields) -> Upstream:
    """An upstream; `breaker_<field>=...` set its circuit breaker's settings (a BreakerConfig)."""
    breaker = {key.removeprefix("breaker_"): fields.pop(key) for key in list(fields) if key.startswith("breaker_")}
    obj = Upstream(name=name, base_url=base_url, **fields)
    obj.full_clean()
    obj.save()
    if breaker:
        from breakers.models import BreakerConfig

        config = BreakerConfig(upstream=obj, **breaker)
        config.full_clean()
        config.save()
    return obj


def breaker_settings(upstream: Upstream):
    """The compiled breaker settings of an upstream, as the gateway's snapshot holds them."""
    from breakers import services

    return services.policy_of(Upstream.objects.get(pk=upstream.pk))


def make_route(name: str, path_prefix: str, upstream: Upstream, **fields) -> Route:
    obj = Route(name=name, path_prefix=path_prefix, upstream=upstream, **fields)
    obj.full_clean()
    obj.save()
    return obj


def serve(gateway) -> float:
    """Wait until every worker of `gateway` serves the committed configuration; return how long it took."""
    return gateway.wait_for_config(runtime.describe(*runtime.db_state()))


def names(model) -> list[str]:
    return list(model.objects.order_by("name").values_list("name", flat=True))


def plan_text(document, **kwargs) -> list[str]:
    """What importing `document` would change, as gateway_import --dry-run prints it."""
    from gateway_project import configfile

    return [str(change) for change in configfile.plan(document, **kwargs).changes]


def problems_of(document, **kwargs) -> list[str]:
    """The problems an import of `document` reports (it must report some)."""
    import pytest

    from gateway_project.configfile import ConfigError, plan

    with pytest.raises(ConfigError) as excinfo:
        plan(document, **kwargs)
    return excinfo.value.problems


def import_and_apply(document, **kwargs) -> list[str]:
    from gateway_project import configfile

    result = configfile.plan(document, **kwargs)
    configfile.apply(result, actor=TEST_ACTOR)
    return [str(change) for change in result.changes]


def assert_round_trip_is_a_no_op(fmt: str) -> None:
    """Export, then import the result (with and without pruning): nothing would change."""
    import json

    from gateway_project import configfile

    text = configfile.dump(configfile.export_document(), fmt)
    if fmt == "json":
        json.loads(text)
    document = configfile.parse(text)
    for prune in (False, True):
        result = configfile.plan(document, prune=prune)
        assert result.changes == []
        assert result.saves == []
        assert result.deletes == []


def make_consumer(name: str = "acme", **fields):
    from limits.models import Consumer

    obj = Consumer(name=name, **fields)
    obj.full_clean()
    obj.save()
    return obj


def make_policy(name: str = "per-ip", **fields):
    from limits.models import RateLimitPolicy

    obj = RateLimitPolicy(name=name, **{"limit": 5, "window_seconds": 60, **fields})
    obj.full_clean()
    obj.save()
    return obj


def hit(policy, client_ip: str, times: int = 1) -> str:
    """Count `times` requests of `client_ip` against `policy` in Redis; return the counter's key."""
    from limits import limiter
    from limits.compiled import compile_policy

    compiled_policy = compile_policy(policy)
    for _ in range(times):
        limiter.check((compiled_policy,), client_ip=client_ip, consumer=None, route_id=1, environ={})
    return compiled_policy.counter_key(f"ip:<{client_ip}>")


def breaker_op(op: str, upstream: Upstream, extra: str = "", *, gen: int | None = None, **overrides):
    """Run one operation on an upstream's shared breaker (in Redis), as the gateway's workers do.

    `op` is the operation's name in the Lua script (view, acquire, fail, ok, flush, reset, release); `extra`
    what failed, the successes to flush, or who resets; `overrides` change the upstream's settings for the call.
    """
    from dataclasses import replace

    from breakers.redis_storage import RedisStorage
    from breakers.storage import BreakerId

    policy = replace(breaker_settings(upstream), **overrides)
    return storage_op(RedisStorage(), BreakerId(upstream.id, upstream.name), policy, op, extra, gen=gen)


def storage_op(storage, ref, policy, op: str, extra: str = "", *, gen: int | None = None):
    """Call the breaker storage method that the Lua script's operation `op` names (see `breaker_op`)."""
    calls = {
        "view": lambda: storage.view(ref, policy),
        "acquire": lambda: storage.acquire(ref, policy),
        "fail": lambda: storage.failed(ref, policy, gen=gen, what=extra),
        "ok": lambda: storage.succeeded(ref, policy, gen=gen),
        "flush": lambda: storage.flush(ref, policy, successes=int(extra or 0)),
        "reset": lambda: storage.reset(ref, policy, actor=extra),
        "release": lambda: storage.release(ref, policy, gen=gen),
    }
    return calls[op]()


def breaker_modes() -> dict[str, str]:
    """Every upstream's breaker mode, by upstream name."""
    from breakers import services

    return {u.name: services.mode_of(u) for u in Upstream.objects.select_related("breaker")}


def set_breaker_mode(name: str, mode: str) -> None:
    from breakers.models import BreakerConfig

    BreakerConfig.objects.update_or_create(upstream=Upstream.objects.get(name=name), defaults={"mode": mode})
