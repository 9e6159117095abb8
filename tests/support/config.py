"""Creating configuration in tests the way an operator's admin save does: validated, then saved."""

from __future__ import annotations

from gateway_project import runtime
from proxy.models import Route, Upstream


def make_upstream(name: str = "backend", base_url: str = "http://127.0.0.1:9", **fields) -> Upstream:
    obj = Upstream(name=name, base_url=base_url, **fields)
    obj.full_clean()
    obj.save()
    return obj


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
    configfile.apply(result)
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
    return compiled_policy.key_prefix + f"ip:<{client_ip}>"
