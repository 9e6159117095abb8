from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST
from redis.exceptions import RedisError

from gateway_project import store
from gateway_project.admin import AuditedAdmin, actor_of
from limits import services
from limits.models import ApiKey, Consumer, RateLimitPolicy


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    audit_type = "api_key"
    extra = 0
    can_delete = False
    fields = ("prefix", "label", "created_at", "revoked_at")
    readonly_fields = ("prefix", "created_at", "revoked_at")
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # keys are made by the "Create an API key" action, which shows the key once

    @staticmethod
    def audit_name(key: ApiKey) -> str:
        return key.prefix


@admin.register(Consumer)
class ConsumerAdmin(AuditedAdmin):
    save_service = services.save_consumer
    delete_service = services.delete_consumer
    list_display = ("name", "enabled", "active_keys", "created_at")
    list_filter = ("enabled",)
    search_fields = ("name", "description", "api_keys__prefix", "api_keys__label")
    readonly_fields = ("created_at", "updated_at")
    inlines = [ApiKeyInline]
    actions = ["create_api_key"]

    def get_queryset(self, request):
        active = Count("api_keys", filter=Q(api_keys__revoked_at__isnull=True))
        return super().get_queryset(request).annotate(_active_keys=active)

    @admin.display(description="active keys", ordering="_active_keys")
    def active_keys(self, obj: Consumer) -> int:
        return obj._active_keys

    @admin.action(description="Create an API key for each selected consumer")
    def create_api_key(self, request: HttpRequest, queryset):
        actor = actor_of(request)
        created = [(consumer, services.create_api_key(consumer=consumer, actor=actor)[1]) for consumer in queryset]
        return TemplateResponse(
            request,
            "admin/limits/new_keys.html",
            {
                **self.admin_site.each_context(request),
                "title": "New API keys",
                "created": created,
                "opts": self.model._meta,
            },
        )


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedAdmin):
    save_service = services.save_api_key
    delete_service = services.delete_api_key
    list_display = ("prefix", "consumer", "label", "created_at", "revoked_at", "status")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter), "consumer")
    list_select_related = ("consumer",)
    search_fields = ("prefix", "label", "consumer__name")
    fields = ("consumer", "label", "prefix", "created_at", "revoked_at")
    readonly_fields = ("consumer", "prefix", "created_at", "revoked_at")
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="status")
    def status(self, obj: ApiKey) -> str:
        return "active" if obj.active else "revoked"

    @admin.action(description="Revoke the selected keys (effective on every gateway within a second)")
    def revoke(self, request: HttpRequest, queryset):
        actor = actor_of(request)
        count = sum(services.revoke_api_key(key=key, actor=actor) for key in queryset.filter(revoked_at__isnull=True))
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)


@admin.register(RateLimitPolicy)
class RateLimitPolicyAdmin(AuditedAdmin):
    save_service = services.save_policy
    delete_service = services.delete_policy
    list_display = ("name", "applies_to", "key_by", "rate", "algorithm", "mode", "on_redis_failure", "enabled")
    list_filter = ("enabled", "scope", "mode", "algorithm", "key_by", "on_redis_failure")
    list_select_related = ("route", "consumer")
    search_fields = ("name", "route__name", "consumer__name", "header_name")
    readonly_fields = ("live_usage", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "enabled", "mode")}),
        ("Applies to", {"fields": ("scope", "route", "consumer")}),
        ("Counts", {"fields": ("key_by", "header_name", "limit", "window_seconds", "algorithm", "burst")}),
        ("Behaviour", {"fields": ("on_redis_failure", "legacy_headers")}),
        ("Live", {"fields": ("live_usage",)}),
        ("History", {"fields": ("created_at", "updated_at")}),
    )

    @admin.display(description="applies to", ordering="scope")
    def applies_to(self, obj: RateLimitPolicy) -> str:
        if obj.scope == "route":
            return f"route {obj.route}"
        if obj.scope == "consumer":
            return f"consumer {obj.consumer}"
        return "every route"

    @admin.display(description="limit")
    def rate(self, obj: RateLimitPolicy) -> str:
        return f"{obj.limit} / {obj.window_seconds} s"

    @admin.display(description="busiest clients now")
    def live_usage(self, obj: RateLimitPolicy) -> str:
        if not obj.pk:
            return "Save the policy to see its live counters."
        try:
            rows = services.policy_usage(policy=obj, top=10, client=store.page_client())
        except RedisError as exc:
            return f"Redis is unavailable ({type(exc).__name__}); no live usage."
        link = reverse("admin:limits_ratelimitpolicy_usage", args=[obj.pk])
        if not rows:
            return format_html('No client is being counted right now. <a href="{}">Live usage</a>', link)
        table = format_html_join(
            "",
            "<tr><td><code>{}</code></td><td>{} / {}</td><td>{} s</td></tr>",
            ((r.client, r.used, r.limit, f"{r.expires_in:.0f}") for r in rows),
        )
        return format_html(
            "<table><tr><th>client</th><th>used</th><th>expires in</th></tr>{}</table>"
            '<p><a href="{}">Live usage, and clearing a client\'s counter</a></p>',
            table,
            link,
        )

    def get_urls(self):
        urls = [
            path("<int:pk>/usage/", self.admin_site.admin_view(self.usage_view), name="limits_ratelimitpolicy_usage"),
            path(
                "<int:pk>/clear/",
                self.admin_site.admin_view(require_POST(self.clear_view)),
                name="limits_ratelimitpolicy_clear",
            ),
        ]
        return urls + super().get_urls()

    def usage_view(self, request: HttpRequest, pk: int):
        policy = get_object_or_404(RateLimitPolicy, pk=pk)
        if not self.has_view_permission(request, policy):
            return HttpResponseRedirect(reverse("admin:index"))
        error = None
        try:
            rows = services.policy_usage(policy=policy, top=100, client=store.page_client())
        except RedisError as exc:
            rows, error = [], f"Redis is unavailable ({type(exc).__name__})."
        return TemplateResponse(
            request,
            "admin/limits/usage.html",
            {
                **self.admin_site.each_context(request),
                "title": f"Live usage of {policy.name}",
                "policy": policy,
                "rows": rows,
                "error": error,
                "opts": self.model._meta,
                "can_clear": self.has_change_permission(request, policy),
            },
        )

    def clear_view(self, request: HttpRequest, pk: int):
        policy = get_object_or_404(RateLimitPolicy, pk=pk)
        if not self.has_change_permission(request, policy):
            return HttpResponseRedirect(reverse("admin:index"))
        client = request.POST.get("client", "")
        try:
            cleared = services.clear_counter(policy=policy, client=client, actor=actor_of(request))
        except ValueError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        except RedisError as exc:
            self.message_user(request, f"Redis is unavailable ({type(exc).__name__}).", messages.ERROR)
        else:
            self.message_user(
                request, f"Cleared {client}." if cleared else "That counter had already expired.", messages.SUCCESS
            )
        return HttpResponseRedirect(reverse("admin:limits_ratelimitpolicy_usage", args=[pk]))
