"""The `upstreams` and `routes` sections of the configuration document (gateway_project/configfile.py)."""

from __future__ import annotations

from typing import Any

from gateway_project.configfile import Context, Reader, Section, apply_fields, full_check, set_statuses
from gateway_project.validation import status_list


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
    compared = (*(name for name, _ in fields), "retry_on_statuses")

    @property
    def model(self):
        from proxy.models import Upstream

        return Upstream

    def export(self, obj) -> dict[str, Any]:
        item = {"name": obj.name, **{name: getattr(obj, name) for name, _ in self.fields}}
        item["retry_on_statuses"] = status_list(obj.retry_on_statuses)
        return item

    def build(self, item: Reader, obj, ctx: Context) -> None:
        obj.name = item.get("name", str)
        apply_fields(obj, item, self.fields)
        set_statuses(obj, "retry_on_statuses", item, item.get("retry_on_statuses", list, [502, 503, 504]))
        full_check(obj, item)


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
    compared = (*(name for name, _ in fields), "methods", "upstream_id")

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
        return item

    def build(self, item: Reader, obj, ctx: Context) -> None:
        obj.name = item.get("name", str)
        apply_fields(obj, item, self.fields)
        methods = item.get("methods", list, [])
        if methods is not None:
            if all(isinstance(m, str) for m in methods):
                obj.methods = ",".join(methods)
            else:
                item.problem("methods", "must be a list of method names")
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
