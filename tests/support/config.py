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
