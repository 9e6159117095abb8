"""Creating configuration in tests the way an operator's admin save does: validated, then saved."""

from __future__ import annotations

from proxy import runtime
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
    from proxy import configfile

    return [str(change) for change in configfile.plan(document, **kwargs).changes]


def problems_of(document, **kwargs) -> list[str]:
    """The problems an import of `document` reports (it must report some)."""
    import pytest

    from proxy.configfile import ConfigError, plan

    with pytest.raises(ConfigError) as excinfo:
        plan(document, **kwargs)
    return excinfo.value.problems


def import_and_apply(document, **kwargs) -> list[str]:
    from proxy import configfile

    result = configfile.plan(document, **kwargs)
    configfile.apply(result)
    return [str(change) for change in result.changes]
