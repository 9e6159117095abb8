"""Business operations on routes, upstreams and targets: the admin, the API, management commands and tests call
these.

Each change is validated as the admin and the import validate it, guarded by the caller's ETag (`if_match`)
and recorded in the audit trail (gateway_project/changes.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from gateway_project import changes, registry
from gateway_project.audit import Actor
from proxy.models import Route, Target, Upstream
from proxy.routing import base_address

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


class UnknownTarget(LookupError):
    pass


def _upstream(name: str) -> Upstream:
    try:
        return Upstream.objects.get(name=name)
    except Upstream.DoesNotExist:
        raise UnknownTarget(f"no upstream named {name!r}") from None


def save_target(*, target: Target, actor: Actor, if_match: str | None = None) -> dict[str, list]:
    return changes.save(target, actor=actor, object_type="target", name=target_name(target), if_match=if_match)


def delete_target(*, target: Target, actor: Actor, if_match: str | None = None) -> None:
    changes.delete(target, actor=actor, object_type="target", name=target_name(target), if_match=if_match)


def add_target(*, upstream: str, address: str, actor: Actor, weight: int = 100, enabled: bool = True) -> Target:
    """Add a target to an upstream (validated as in the admin, audited); every worker uses it within a second."""
    target = Target(upstream=_upstream(upstream), address=address, weight=weight, enabled=enabled)
    save_target(target=target, actor=actor)
    return target


def update_target(
    *,
    upstream: str,
    address: str,
    actor: Actor,
    weight: int | None = None,
    enabled: bool | None = None,
    if_match: str | None = None,
) -> Target:
    """Change a target's weight or switch it on or off (drain it: no new requests; those under way finish)."""
    target = get_target(upstream=upstream, address=address)
    if weight is not None:
        target.weight = weight
    if enabled is not None:
        target.enabled = enabled
    save_target(target=target, actor=actor, if_match=if_match)
    return target


def remove_target(*, upstream: str, address: str, actor: Actor, if_match: str | None = None) -> None:
    delete_target(target=get_target(upstream=upstream, address=address), actor=actor, if_match=if_match)


def target_name(target: Target) -> str:
    """How the audit trail names a target: '<upstream> <host:port>' (as typed, until validation normalizes it)."""
    from proxy.validation import normalize_address

    try:
        address = normalize_address(target.address)
    except ValidationError:
        address = target.address
    return f"{target.upstream.name} {address}"


def get_target(*, upstream: str, address: str) -> Target:
    from proxy.validation import normalize_address

    try:
        return Target.objects.get(upstream=_upstream(upstream), address=normalize_address(address))
    except (Target.DoesNotExist, ValidationError):
        raise UnknownTarget(f"upstream {upstream!r} has no target {address!r}") from None


@dataclass(frozen=True)
class TargetHealth:
    """One target as the gateway instance sees it: configuration, passive health in every worker, active check."""

    upstream_id: int
    upstream: str
    address: str
    weight: int
    enabled: bool
    workers: int  # workers that reported their view
    ejected_in: int  # of them, how many have it ejected now
    ejected_for: float  # the longest of their ejections, seconds left
    consecutive_failures: int  # the most any worker counts
    ejections: int  # ejections since the workers started, all workers together
    active: str  # healthy, unhealthy, or unchecked
    active_status: int | None = None
    active_error: str | None = None

    @property
    def state(self) -> str:
        if not self.enabled:
            return "disabled"
        if self.active == "unhealthy":
            return "unhealthy"
        if self.ejected_in:
            return "ejected"
        if self.active == "unchecked" and not self.workers:
            # One target and no active check: nothing to eject it from, so no worker tracks its health (the
            # upstream's breaker covers it). Saying "healthy" would claim what nobody measured.
            return "untracked"
        return "healthy"

    def as_dict(self) -> dict:
        return {
            "upstream": self.upstream,
            "address": self.address,
            "weight": self.weight,
            "enabled": self.enabled,
            "state": self.state,
            "workers": self.workers,
            "ejected_in": self.ejected_in,
            "ejected_for_seconds": self.ejected_for,
            "consecutive_failures": self.consecutive_failures,
            "ejections": self.ejections,
            "active": self.active,
            "active_status": self.active_status,
            "active_error": self.active_error,
        }


def target_health(*, upstreams: list[str] | None = None, run_dir: str | None = None) -> list[TargetHealth]:
    """Every target of the named upstreams (all for None) with its health in this gateway instance.

    Passive health is each worker's own (proxy.balancing); the workers publish it, and the active checks' verdicts,
    in GATEWAY_RUN_DIR (proxy.health). Outside a gateway instance (no run directory) every target reads as
    seen by no worker. An upstream without Target rows shows its base URL's host and port.
    """
    from pathlib import Path

    from proxy import health

    run_dir = settings.GATEWAY_RUN_DIR if run_dir is None else run_dir
    queryset = Upstream.objects.prefetch_related("targets").order_by("name")
    if upstreams is not None:
        queryset = queryset.filter(name__in=upstreams)
    workers: list[dict] = []
    active: dict = {}
    if run_dir:
        directory = Path(run_dir)
        active = health.read_json(directory / health.ACTIVE) or {}
        now = time.time()
        for path in directory.glob(f"{health.WORKER_PREFIX}*.json"):
            report = health.read_json(path)
            # A worker that stopped writing (it died or was replaced) no longer serves: its view is dropped.
            if report and now - report.get("at", 0) < 15 * health.PUBLISH_EVERY:
                report["age"] = now - report["at"]
                workers.append(report)
    found = []
    for upstream in queryset:
        rows = list(upstream.targets.all())
        configured = [(t.address, t.weight, t.enabled) for t in rows] or [(base_address(upstream.base_url), 1, True)]
        checks = active.get(str(upstream.id), {})
        for address, weight, enabled in configured:
            views = [w["upstreams"].get(str(upstream.id), {}).get(address) for w in workers]
            seen = [(v, w["age"]) for v, w in zip(views, workers, strict=True) if v is not None]
            ejected = [v["ejected_for"] - age for v, age in seen if v["ejected_for"] - age > 0]
            verdict = checks.get(address)
            found.append(
                TargetHealth(
                    upstream_id=upstream.id,
                    upstream=upstream.name,
                    address=address,
                    weight=weight,
                    enabled=enabled,
                    workers=len(seen),
                    ejected_in=len(ejected),
                    ejected_for=round(max(ejected, default=0.0), 1),
                    consecutive_failures=max((v["consecutive_failures"] for v, _ in seen), default=0),
                    ejections=sum(v["ejections"] for v, _ in seen),
                    active="unchecked"
                    if not upstream.health_check_path or verdict is None
                    else ("healthy" if verdict["healthy"] else "unhealthy"),
                    active_status=verdict["status"] if verdict else None,
                    active_error=verdict["error"] if verdict else None,
                )
            )
    return found


def target_health_by_upstream(*, upstream_ids: list[int]) -> dict[int, list[TargetHealth]]:
    """target_health() grouped by upstream id, for the breakers page (through the core's registry)."""
    grouped: dict[int, list[TargetHealth]] = {}
    names = list(Upstream.objects.filter(id__in=upstream_ids).values_list("name", flat=True))
    for row in target_health(upstreams=names):
        grouped.setdefault(row.upstream_id, []).append(row)
    return grouped
