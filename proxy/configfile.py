"""The `upstreams` and `routes` sections of the configuration document (gateway_project/configfile.py).

What an upstream or route had before targets, balancing, health and the new route options is written exactly as
before: the new keys appear only when they differ from their defaults, and a key left out takes its default.
"""

from __future__ import annotations

from typing import Any

from gateway_project.configfile import (
    Context,
    Reader,
    Section,
    apply_fields,
    full_check,
    set_statuses,
)
from gateway_project.validation import status_list

#: Nested mappings of an upstream item: document key -> ((model field, kinds, key inside the mapping), ...).
#: Status lists are handled apart: (model field, key inside the mapping).
NESTED: dict[str, tuple[tuple, ...]] = {
    "ejection": (
        ("eject_consecutive_failures", int, "consecutive_failures"),
        ("eject_seconds", (int, float), "seconds"),
        ("eject_max_seconds", (int, float), "max_seconds"),
        ("eject_max_percent", int, "max_percent"),
    ),
    "health_check": (
        ("health_check_path", str, "path"),
        ("health_check_interval", (int, float), "interval"),
        ("health_check_timeout", (int, float), "timeout"),
        ("healthy_threshold", int, "healthy_threshold"),
        ("unhealthy_threshold", int, "unhealthy_threshold"),
    ),
    "retry_budget": (
        ("retry_budget_percent", int, "percent"),
        ("retry_budget_min", int, "min_retries"),
    ),
}
NESTED_STATUSES = {"ejection": ("eject_on_statuses", "statuses"), "health_check": ("health_check_statuses", "statuses")}
_LOCATIONS = {
    **{field: f"{key}.{inner}" for key, fields in NESTED.items() for field, _, inner in fields},
    **{field: f"{key}.{inner}" for key, (field, inner) in NESTED_STATUSES.items()},
}


def _default(model, field: str):
    return model._meta.get_field(field).get_default()


def _nested_export(obj, key: str) -> dict[str, Any] | None:
    """The mapping `key` of an upstream, or None when every value in it is the default."""
    fields = [(field, inner) for field, _, inner in NESTED[key]]
    if key in NESTED_STATUSES:
        fields.append(NESTED_STATUSES[key])
    if all(getattr(obj, field) == _default(type(obj), field) for field, _ in fields):
        return None
    item = {inner: getattr(obj, field) for field, _, inner in NESTED[key]}
    if key in NESTED_STATUSES:
        field, inner = NESTED_STATUSES[key]
        item[inner] = [int(s) for s in getattr(obj, field).split(",") if s]
    return item


class UpstreamSection(Section):
    key = "upstreams"
    fields = (
        ("base_url", str),
        ("connect_timeout", (int, float)),
        ("read_timeout", (int, float)),
        ("deadline", (int, float)),
        ("max_retries", int),
        ("backoff_factor", (int, float)),
        ("backoff_max", (int, float)),
        ("backoff_jitter", (int, float)),
        ("tls_verify", bool),
        ("enabled", bool),
    )
    compared = (
        *(name for name, _ in fields),
        "retry_on_statuses",
        "balancing",
        *(field for fields in NESTED.values() for field, _, _ in fields),
        *(field for field, _ in NESTED_STATUSES.values()),
    )

    @property
    def model(self):
        from proxy.models import Upstream

        return Upstream

    def queryset(self):
        return self.model.objects.prefetch_related("targets")

    def export(self, obj) -> dict[str, Any]:
        from proxy.models import ROUND_ROBIN

        item = {"name": obj.name, **{name: getattr(obj, name) for name, _ in self.fields}}
        item["retry_on_statuses"] = status_list(obj.retry_on_statuses)
        if obj.balancing != ROUND_ROBIN:
            item["balancing"] = obj.balancing
        targets = sorted(_targets_of(obj), key=lambda t: t.address)
        if targets:
            item["targets"] = [{"address": t.address, "weight": t.weight, "enabled": t.enabled} for t in targets]
        for key in NESTED:
            nested = _nested_export(obj, key)
            if nested is not None:
                item[key] = nested
        return item

    def build(self, item: Reader, obj, ctx: Context) -> None:
        from proxy.models import BALANCING_CHOICES, ROUND_ROBIN

        obj.name = item.get("name", str)
        apply_fields(obj, item, self.fields)
        set_statuses(obj, "retry_on_statuses", item, item.get("retry_on_statuses", list, [502, 503, 504]))
        obj.balancing = item.get("balancing", str, ROUND_ROBIN)
        if obj.balancing not in dict(BALANCING_CHOICES):
            item.problem("balancing", f"must be one of {', '.join(dict(BALANCING_CHOICES))}")
            obj.balancing = ROUND_ROBIN
        for key, fields in NESTED.items():
            data = item.get(key, dict, {})
            nested = Reader(data if isinstance(data, dict) else {}, f"{item.where}.{key}", ctx)
            apply_fields(obj, nested, fields)
            if key in NESTED_STATUSES:
                field, inner = NESTED_STATUSES[key]
                default = [int(s) for s in _default(type(obj), field).split(",")]
                set_statuses(obj, field, nested, nested.get(inner, list, default), inner)
            nested.finish()
        full_check(obj, item, locate=lambda field: _LOCATIONS.get(field, field))
        obj._targets = self._build_targets(item, ctx)

    def _build_targets(self, item: Reader, ctx: Context) -> list:
        from proxy.models import Target

        built, seen = [], set()
        for index, data in enumerate(item.get("targets", list, [])):
            where = f"{item.where}.targets[{index}]"
            if not isinstance(data, dict):
                ctx.problem(where, "must be a mapping with address, weight and enabled")
                continue
            reader = Reader(data, where, ctx)
            target = Target(address=reader.get("address", str) or "")
            apply_fields(target, reader, (("weight", int), ("enabled", bool)))
            reader.finish()
            full_check(target, reader, exclude=("upstream",))
            if target.address in seen:
                reader.problem("address", f"{target.address} appears twice")
            seen.add(target.address)
            built.append(target)
        return built

    def differences(self, obj, current) -> tuple[str, ...]:
        changed = super().differences(obj, current)
        if _target_rows(obj._targets) != _target_rows(current.targets.all()):
            changed += ("targets",)
        return changed

    def save(self, obj) -> None:
        obj.save()
        wanted = {t.address: t for t in obj._targets}
        for existing in obj.targets.all():
            target = wanted.pop(existing.address, None)
            if target is None:
                existing.delete()
            elif (existing.weight, existing.enabled) != (target.weight, target.enabled):
                existing.weight, existing.enabled = target.weight, target.enabled
                existing.save()
        for target in wanted.values():
            target.upstream = obj
            target.save()


def _targets_of(upstream) -> list:
    """The targets an upstream has, or will have once an import being planned saves it (built from the document)."""
    pending = getattr(upstream, "_targets", None)
    if pending is not None:
        return list(pending)
    return list(upstream.targets.all()) if upstream.pk is not None else []


def _target_rows(targets) -> list[tuple[str, int, bool]]:
    return sorted((t.address, t.weight, t.enabled) for t in targets)


class RouteSection(Section):
    key = "routes"
    fields = (
        ("path_prefix", str),
        ("host", str),
        ("strip_prefix", bool),
        ("max_body_bytes", int),
        ("require_api_key", bool),
        ("forward_api_key", bool),
        ("description", str),
        ("enabled", bool),
    )
    #: Written only when not at their defaults, so a route that uses none of them reads as it always did.
    optional = (
        ("retry_idempotency_key", bool),
        ("deadline_header", str),
    )
    compared = (*(name for name, _ in fields + optional), "methods", "upstream_id", "upgrade_protocols")

    @property
    def model(self):
        from proxy.models import Route

        return Route

    def queryset(self):
        return self.model.objects.select_related("upstream")

    def export(self, obj) -> dict[str, Any]:
        item = {"name": obj.name, **{name: getattr(obj, name) for name, _ in self.fields}}
        item["methods"] = [m for m in obj.methods.split(",") if m]
        item["upstream"] = obj.upstream.name
        for name, _ in self.optional:
            if getattr(obj, name) != _default(type(obj), name):
                item[name] = getattr(obj, name)
        if obj.upgrade_protocols:
            item["upgrade_protocols"] = obj.upgrade_protocols.split(",")
        return item

    def build(self, item: Reader, obj, ctx: Context) -> None:
        obj.name = item.get("name", str)
        apply_fields(obj, item, self.fields + self.optional)
        methods = item.get("methods", list, [])
        if methods is not None:
            if all(isinstance(m, str) for m in methods):
                obj.methods = ",".join(methods)
            else:
                item.problem("methods", "must be a list of method names")
        protocols = item.get("upgrade_protocols", list, [])
        if all(isinstance(p, str) for p in protocols):
            obj.upgrade_protocols = ",".join(protocols)
        else:
            item.problem("upgrade_protocols", "must be a list of protocol names, e.g. [websocket]")
        upstream_name = item.get("upstream", str)
        upstream = ctx.final.get("upstreams", {}).get(upstream_name)
        if upstream_name is not None and upstream is None:
            item.problem("upstream", f"no upstream named {upstream_name!r}")
        elif upstream is not None:
            obj.upstream = upstream
        full_check(obj, item, exclude=("upstream",))

    def validate_final(self, objects, ctx: Context) -> None:
        upstreams = ctx.final.get("upstreams", {})
        enabled = sorted((r for r in objects.values() if r.enabled), key=lambda r: r.name)
        for index, route in enumerate(enabled):
            upstream = getattr(route, "upstream", None)
            if upstream is not None and upstream.name not in upstreams:
                ctx.problem(f"routes ({route.name})", f"its upstream {upstream.name!r} would be deleted")
            conflict = route.find_conflict(enabled[index + 1 :])
            if conflict is not None:
                ctx.problem(f"routes ({route.name})", route.conflict_message(conflict))
