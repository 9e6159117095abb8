from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.views.decorators.http import require_POST
from redis.exceptions import RedisError

from breakers import services
from breakers.models import Breaker, BreakerConfig, BreakerTransition
from gateway_project import registry
from gateway_project.admin import actor_of

ACTIONS = {
    "reset": "Reset (close and clear counts)",
    "forced_open": "Force open",
    "disabled": "Disable (always pass, still count)",
    "shadow": "Shadow (count, never reject)",
    "normal": "Back to normal",
}
#: What each action does, said on the confirmation page before it runs.
CONSEQUENCES = {
    "reset": "The breaker closes and forgets its failure counts: requests go to the upstream again at once, on "
    "every gateway. A breaker forced open by its mode stays forced open.",
    "forced_open": "Every request to this upstream is answered 503 by the gateway, on every gateway, until an "
    "operator sets the breaker back to normal.",
    "disabled": "The breaker lets every request through, however the upstream fails; failures are still counted.",
    "shadow": "The breaker counts and records transitions but never rejects a request.",
    "normal": "The breaker decides again from the upstream's failures.",
}


class BreakerConfigInline(admin.StackedInline):
    """The breaker's settings on the upstream's page (registered with the core in apps.py)."""

    model = BreakerConfig
    audit_type = "breaker"
    can_delete = False
    min_num = 0
    max_num = 1
    verbose_name = "circuit breaker"
    verbose_name_plural = "circuit breaker"
    fieldsets = (
        (None, {"fields": ("mode",)}),
        ("Opens on", {"fields": ("consecutive_failures", "failure_rate", "window_seconds", "minimum_calls")}),
        ("Counts as a failure", {"fields": ("failure_statuses", "slow_call_ms")}),
        ("Recovery", {"fields": ("open_seconds", "half_open_probes")}),
    )


@admin.register(Breaker)
class BreakerAdmin(admin.ModelAdmin):
    """The live breakers page: state read from Redis at each load, operator actions per upstream."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def get_urls(self):
        return [
            path("", self.admin_site.admin_view(self.live_view), name="breakers_breaker_changelist"),
            path("act/", self.admin_site.admin_view(require_POST(self.act_view)), name="breakers_breaker_act"),
        ]

    def live_view(self, request: HttpRequest):
        if not self.has_view_permission(request):
            raise PermissionDenied
        statuses = services.live_states(page=True)
        # Each target's health, from the app that owns targets (proxy), through the core's registry.
        targets: dict[int, list] = {}
        for provider in registry.upstream_health_providers:
            targets.update(provider(upstream_ids=[s.upstream_id for s in statuses]))
        unavailable = next((s.error for s in statuses if s.error), None)
        if unavailable is not None:
            self.message_user(
                request,
                f"Redis did not answer ({unavailable}); the live state of the breakers is unknown. "
                "The gateways keep deciding on their own until it is back.",
                messages.WARNING,
            )
        return TemplateResponse(
            request,
            "admin/breakers/live.html",
            {
                **self.admin_site.each_context(request),
                "title": "Circuit breakers",
                "opts": self.model._meta,
                "statuses": statuses,
                "rows": [(s, targets.get(s.upstream_id, [])) for s in statuses],
                "actions": ACTIONS,
                "can_act": self.has_change_permission(request),
            },
        )

    def act_view(self, request: HttpRequest):
        if not self.has_change_permission(request):
            raise PermissionDenied
        action, names = request.POST.get("action", ""), request.POST.getlist("upstream")
        if action in ACTIONS and names and request.POST.get("confirm") != "yes":
            statuses = {s.upstream: s for s in services.live_states(names=None, page=True)}
            return TemplateResponse(
                request,
                "admin/breakers/confirm.html",
                {
                    **self.admin_site.each_context(request),
                    "title": f"{ACTIONS[action].split(' (')[0]}: are you sure?",
                    "opts": self.model._meta,
                    "action": action,
                    "action_label": ACTIONS[action],
                    "consequence": CONSEQUENCES[action],
                    "targets": [(name, statuses.get(name)) for name in names],
                },
            )
        actor = actor_of(request)
        try:
            if action == "reset":
                done = services.reset_breakers(names=names, actor=actor)
            elif action in ACTIONS:
                done = services.set_mode(names=names, mode=action, actor=actor)
            else:
                raise ValueError(f"unknown action {action!r}")
        except (services.UnknownUpstream, ValueError) as exc:
            self.message_user(request, str(exc), messages.ERROR)
        except RedisError as exc:
            self.message_user(request, f"Redis is unavailable ({type(exc).__name__}); nothing changed.", messages.ERROR)
        else:
            what = ACTIONS[action].split(" (")[0].lower()
            self.message_user(
                request, f"{what}: {', '.join(done)}" if done else f"{what}: nothing to change", messages.SUCCESS
            )
            held = services.held_open(names=done) if action == "reset" else []
            if held:
                self.message_user(request, f"Still forced open by their mode: {', '.join(held)}.", messages.WARNING)
        return HttpResponseRedirect(reverse("admin:breakers_breaker_changelist"))


@admin.register(BreakerTransition)
class BreakerTransitionAdmin(admin.ModelAdmin):
    list_display = ("at", "upstream_name", "kind", "from_state", "to_state", "reason", "actor")
    list_filter = ("kind", "to_state", "upstream_name")
    search_fields = ("upstream_name", "reason", "actor")
    date_hierarchy = "at"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
