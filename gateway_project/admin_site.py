"""The gateway's admin site: Django's, with the status page as its first page.

The index shows the gateway's health at a glance above the list of models; `status/` is the same panel alone
(the page's refresh fetches it every few seconds) and `status.json` its figures for scripts. All three need a
staff session, as every admin page does.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path

from gateway_project import registry, status

REFRESH_SECONDS = 5
TOP_CLIENTS = 8


class GatewayAdminSite(admin.AdminSite):
    site_header = "Gateway"
    site_title = "Gateway admin"
    index_title = "Status"
    #: "View site" would lead to a JSON 404: the gateway has no site of its own besides the admin.
    site_url = None
    index_template = "admin/gateway/index.html"

    def get_urls(self):
        return [
            path("status/", self.admin_view(self.status_panel), name="gateway_status"),
            path("status.json", self.admin_view(self.status_json), name="gateway_status_json"),
            *super().get_urls(),
        ]

    def index(self, request: HttpRequest, extra_context=None):
        return super().index(request, {**status_context(request.user), **(extra_context or {})})

    def status_panel(self, request: HttpRequest) -> HttpResponse:
        return TemplateResponse(request, "admin/gateway/status_panel.html", status_context(request.user))

    def status_json(self, request: HttpRequest) -> HttpResponse:
        context = status_context(request.user)
        figures: status.Figures = context["figures"]
        return JsonResponse(
            {
                "figures": figures.as_dict(),
                "breakers": context["breakers"],
                "limited_clients": context["limited_clients"],
                "health": context["health"],
                "took_ms": context["took_ms"],
            },
            json_dumps_params={"indent": 1},
        )


def _safe(provider, default, **kwargs):
    try:
        return provider(**kwargs)
    except Exception as exc:  # a panel that fails says so; the rest of the page still shows
        return default(exc)


#: What a staff user needs to see the status page's parts that name upstreams and clients.
BREAKERS_PERMISSION = "breakers.view_breaker"
CLIENTS_PERMISSION = "limits.view_ratelimitpolicy"


def status_context(user) -> dict:
    from gateway_project.views import readiness

    started = time.perf_counter()
    figures = status.figures(prometheus_url=settings.GATEWAY_PROMETHEUS_URL, run_dir=settings.GATEWAY_RUN_DIR)
    see_breakers, see_clients = user.has_perm(BREAKERS_PERMISSION), user.has_perm(CLIENTS_PERMISSION)
    breakers: list[dict] = []
    for provider in registry.breaker_status_providers if see_breakers else ():
        breakers.extend(_safe(provider, lambda exc: [], names=None))
    health: dict[int, list] = {}
    for provider in registry.upstream_health_providers:
        found = _safe(provider, lambda exc: {}, upstream_ids=[b["upstream_id"] for b in breakers])
        health.update({k: [t.as_dict() for t in v] for k, v in found.items()})
    for breaker in breakers:
        breaker["targets"] = health.get(breaker["upstream_id"], [])
    clients: list[dict] = []
    for provider in registry.limited_client_providers if see_clients else ():
        clients.extend(_safe(provider, lambda exc: [{"error": f"{type(exc).__name__}"}], top=TOP_CLIENTS))
    clients.sort(key=lambda c: -(c.get("used", 0) / (c.get("limit") or 1)))
    checks = readiness()
    for route in figures.routes:
        route.spark = status.sparkline(route.series)
        has_errors = any(value > 0 for value in route.error_series)
        route.error_spark = status.sparkline(route.error_series, css="spark spark-error") if has_errors else ""
    return {
        "figures": figures,
        "total_spark": status.sparkline(figures.total_series, width=240, height=36),
        "breakers": breakers,
        "limited_clients": clients[:TOP_CLIENTS],
        "health": checks,
        "healthy": all(not v.startswith("error") for v in checks.values()),
        "see_breakers": see_breakers,
        "see_clients": see_clients,
        "refresh_seconds": REFRESH_SECONDS,
        "generated_at": time.time(),
        "took_ms": round((time.perf_counter() - started) * 1000, 1),
    }


class GatewayAdminConfig(AdminConfig):
    default_site = "gateway_project.admin_site.GatewayAdminSite"
