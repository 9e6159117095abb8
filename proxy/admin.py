from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from gateway_project import registry
from gateway_project.admin import AuditedAdmin, actor_of
from proxy import services, tester
from proxy.models import Route, Target, Upstream


class TargetInline(admin.TabularInline):
    """The upstream's servers. None: requests go to the base URL's own host and port."""

    model = Target
    extra = 0
    fields = ("address", "weight", "enabled")
    verbose_name_plural = "targets (none: the base URL's host and port)"
    audit_type = "target"

    def audit_name(self, obj: Target) -> str:
        return services.target_name(obj)


@admin.register(Upstream)
class UpstreamAdmin(AuditedAdmin):
    save_service = services.save_upstream
    delete_service = services.delete_upstream
    list_display = (
        "name",
        "base_url",
        "enabled",
        "connect_timeout",
        "read_timeout",
        "deadline",
        "max_retries",
        "route_count",
        "updated_at",
    )
    list_filter = ("enabled", "tls_verify")
    search_fields = ("name", "base_url")
    readonly_fields = ("created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "base_url", "enabled", "balancing")}),
        ("Timeouts", {"fields": ("connect_timeout", "read_timeout", "deadline")}),
        (
            "Retries (urllib3 Retry)",
            {
                "fields": (
                    "max_retries",
                    "backoff_factor",
                    "backoff_max",
                    "backoff_jitter",
                    "retry_on_statuses",
                    "retry_budget_percent",
                    "retry_budget_min",
                ),
            },
        ),
        (
            "Passive health (per worker)",
            {
                "fields": (
                    "eject_consecutive_failures",
                    "eject_on_statuses",
                    "eject_seconds",
                    "eject_max_seconds",
                    "eject_max_percent",
                ),
            },
        ),
        (
            "Active health checks (one worker per instance probes)",
            {
                "classes": ("collapse",),
                "fields": (
                    "health_check_path",
                    "health_check_interval",
                    "health_check_timeout",
                    "health_check_statuses",
                    "healthy_threshold",
                    "unhealthy_threshold",
                ),
            },
        ),
        ("TLS", {"fields": ("tls_verify",)}),
        ("History", {"fields": ("created_at", "updated_at")}),
    )

    def get_inlines(self, request, obj):
        return [TargetInline, *registry.upstream_admin_inlines]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_route_count=Count("routes"))

    @admin.display(description="routes", ordering="_route_count")
    def route_count(self, obj: Upstream) -> int:
        return obj._route_count


@admin.register(Route)
class RouteAdmin(AuditedAdmin):
    save_service = services.save_route
    delete_service = services.delete_route
    list_display = (
        "name",
        "path_prefix",
        "host_display",
        "methods_display",
        "upstream",
        "strip_prefix",
        "enabled",
        "updated_at",
    )
    list_filter = ("enabled", "require_api_key", "strip_prefix", "upstream")
    list_select_related = ("upstream",)
    search_fields = ("name", "path_prefix", "host", "upstream__name", "description")
    readonly_fields = ("live", "forwarding", "created_at", "updated_at")
    fieldsets = (
        ("Now", {"fields": ("live",)}),
        (None, {"fields": ("name", "enabled", "description")}),
        ("Match", {"fields": ("path_prefix", "host", "methods")}),
        ("Forward", {"fields": ("upstream", "strip_prefix", "max_body_bytes", "forwarding")}),
        ("Retries and deadline", {"fields": ("retry_idempotency_key", "deadline_header")}),
        ("Upgrades (WebSocket)", {"fields": ("upgrade_protocols",)}),
        ("Consumers", {"fields": ("require_api_key", "forward_api_key")}),
        ("History", {"fields": ("created_at", "updated_at")}),
    )

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        return fieldsets if obj is not None else fieldsets[1:]

    @admin.display(description="what applies, live")
    def live(self, obj: Route) -> str:
        """The rate-limit policies that apply and the upstream's breaker, from their apps (registry)."""
        sections = []
        for provider in registry.route_page_providers:
            try:
                sections.extend(provider(route_id=obj.pk, upstream_name=obj.upstream.name))
            except Exception as exc:  # one app's part failing leaves the rest of the page
                sections.append(("Unavailable", [f"{type(exc).__name__}: {exc}"]))
        body = format_html_join(
            "",
            "<p><strong>{}</strong></p><ul>{}</ul>",
            ((title, format_html_join("", "<li>{}</li>", ((line,) for line in lines))) for title, lines in sections),
        )
        test = reverse("admin:proxy_route_test", args=[obj.pk])
        return format_html('{}<p><a class="button" href="{}" id="test-route">Test this route…</a></p>', body, test)

    def get_urls(self):
        return [
            path("<int:pk>/test/", self.admin_site.admin_view(self.test_view), name="proxy_route_test"),
            *super().get_urls(),
        ]

    def test_view(self, request, pk: int):
        route = get_object_or_404(Route.objects.select_related("upstream"), pk=pk)
        if not self.has_change_permission(request, route):
            raise PermissionDenied
        defaults = {
            "method": (route.methods or "GET").split(",")[0],
            "path": route.path_prefix.rstrip("/") + "/" if route.path_prefix != "/" else "/",
            "host": tester.default_host(route),
            "headers": "Accept: application/json",
            "body": "",
            "client_ip": request.gateway.client_ip,
            "dry_run": True,
        }
        form, trace, error = defaults, None, None
        if request.method == "POST":
            form = {name: request.POST.get(name, "") for name in defaults}
            form["dry_run"] = request.POST.get("dry_run") == "on"
            try:
                trace = tester.run(
                    route_name=route.name,
                    method=form["method"],
                    path=form["path"],
                    host=form["host"],
                    headers=tester.parse_headers(form["headers"]),
                    body=form["body"].encode(),
                    client_ip=form["client_ip"],
                    dry_run=form["dry_run"],
                    actor=actor_of(request),
                )
            except tester.TestRequestError as exc:
                error = str(exc)
        return TemplateResponse(
            request,
            "admin/proxy/route_test.html",
            {
                **self.admin_site.each_context(request),
                "title": f"Test route {route.name}",
                "opts": self.model._meta,
                "original": route,
                "route": route,
                "form": form,
                "methods": tester.METHODS,
                "trace": trace,
                "error": error,
            },
        )

    @admin.display(description="host", ordering="host")
    def host_display(self, obj: Route) -> str:
        return obj.host or "any"

    @admin.display(description="methods", ordering="methods")
    def methods_display(self, obj: Route) -> str:
        return obj.methods or "all"

    @admin.display(description="what a client calls, and where it goes")
    def forwarding(self, obj: Route) -> str:
        if not obj.pk:
            return "Save the route to see an example."
        host, port = settings.GATEWAY_LISTEN
        authority = obj.host.replace("*", "www") if obj.host else (host if port == 80 else f"{host}:{port}")
        prefix = "" if obj.path_prefix == "/" else obj.path_prefix
        client = f"http://{authority}{prefix}/example/path?q=1"
        rest = "/example/path" if obj.strip_prefix else f"{prefix}/example/path"
        upstream = f"{obj.upstream.base_url}{rest}?q=1"
        return format_html(
            "<code>{} {}</code><br>→ <code>{} {}</code><br><small>Any path below {} matches{}.</small>",
            (obj.methods or "GET").split(",")[0],
            client,
            (obj.methods or "GET").split(",")[0],
            upstream,
            obj.path_prefix,
            "" if not obj.methods else f"; methods {obj.methods.replace(',', ', ')}",
        )
