"""Business operations on routes and upstreams: the admin, the API, management commands and tests call these.

Each change is validated as the admin and the import validate it, guarded by the caller's ETag (`if_match`)
and recorded in the audit trail (gateway_project/changes.py).
"""

from __future__ import annotations

from django.db import transaction

from gateway_project import changes, registry
from gateway_project.audit import Actor
from proxy.models import Route, Upstream

DEMO_NAME = "demo"


def save_upstream(*, upstream: Upstream, actor: Actor, if_match: str | None = None) -> dict[str, list]:
    return changes.save(upstream, actor=actor, object_type="upstream", name=upstream.name, if_match=if_match)


def delete_upstream(*, upstream: Upstream, actor: Actor, if_match: str | None = None) -> None:
    """Raises django.db.models.ProtectedError while routes use the upstream."""
    changes.delete(upstream, actor=actor, object_type="upstream", name=upstream.name, if_match=if_match)


def save_route(*, route: Route, actor: Actor, if_match: str | None = None) -> dict[str, list]:
    return changes.save(route, actor=actor, object_type="route", name=route.name, if_match=if_match)


def delete_route(*, route: Route, actor: Actor, if_match: str | None = None) -> None:
    changes.delete(route, actor=actor, object_type="route", name=route.name, if_match=if_match)


@transaction.atomic
def ensure_demo(*, listen_host: str, listen_port: int, actor: Actor) -> list[str]:
    """Create the demo upstream (the gateway's own /_demo/) and the /demo route unless they exist."""
    created = []
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(listen_host, listen_host)  # noqa: S104
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    upstream = Upstream.objects.filter(name=DEMO_NAME).first()
    if upstream is None:
        upstream = Upstream(name=DEMO_NAME, base_url=f"http://{host}:{listen_port}/_demo", read_timeout=35.0)
        save_upstream(upstream=upstream, actor=actor)
        created.append(f"Created upstream {DEMO_NAME!r} -> {upstream.base_url}")
    route = Route.objects.filter(name=DEMO_NAME).first()
    if route is None:
        route = Route(
            name=DEMO_NAME,
            path_prefix="/demo",
            upstream=upstream,
            description="Demo route to the gateway's built-in demo upstream.",
        )
        save_route(route=route, actor=actor)
        created.append(f"Created route {DEMO_NAME!r}: /demo/ -> {upstream.base_url}/")
    for hook in registry.demo_hooks:
        created.extend(hook(route, actor))
    return created
