"""Business operations on routes and upstreams, shared by admin, management commands and tests."""

from __future__ import annotations

from django.db import transaction

from gateway_project import registry
from proxy.models import Route, Upstream

DEMO_NAME = "demo"


@transaction.atomic
def ensure_demo(*, listen_host: str, listen_port: int) -> list[str]:
    """Create the demo upstream (the gateway's own /_demo/) and the /demo route unless they exist."""
    created = []
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(listen_host, listen_host)  # noqa: S104
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    upstream = Upstream.objects.filter(name=DEMO_NAME).first()
    if upstream is None:
        upstream = Upstream(name=DEMO_NAME, base_url=f"http://{host}:{listen_port}/_demo", read_timeout=35.0)
        upstream.full_clean()
        upstream.save()
        created.append(f"Created upstream {DEMO_NAME!r} -> {upstream.base_url}")
    route = Route.objects.filter(name=DEMO_NAME).first()
    if route is None:
        route = Route(
            name=DEMO_NAME,
            path_prefix="/demo",
            upstream=upstream,
            description="Demo route to the gateway's built-in demo upstream.",
        )
        route.full_clean()
        route.save()
        created.append(f"Created route {DEMO_NAME!r}: /demo/ -> {upstream.base_url}/")
    for hook in registry.demo_hooks:
        created.extend(hook(route))
    return created
