from __future__ import annotations

from django.apps import apps
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST
from redis.exceptions import RedisError

from gateway_project import status, store
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
    inlines = [ApiKeyInline]
    actions = ["create_api_key"]

    def get_queryset(self, request):
        active = Count("api_keys", filter=Q(api_keys__revoked_at__isnull=True))
        return super().get_queryset(request).annotate(_active_keys=active)

    @admin.display(description="active keys", ordering="_active_keys")
    def active_keys(self, obj: Consumer) -> int:
        return obj._active_keys

    readonly_fields = ("new_key", "created_at", "updated_at")

    @admin.display(description="API keys")
    def new_key(self, obj: Consumer) -> str:
        if not obj.pk:
            return "Save the consumer, then create its keys here."
        return format_html(
            '<a class="button" id="create-api-key" href="{}">Create an API key…</a>',
            reverse("admin:limits_consumer_new_key", args=[obj.pk]),
        )

    def get_urls(self):
        return [
            path("<int:pk>/new-key/", self.admin_site.admin_view(self.new_key_view), name="limits_consumer_new_key"),
            path("new-keys/", self.admin_site.admin_view(self.shown_once_view), name="limits_consumer_new_keys"),
            *super().get_urls(),
        ]

    def new_key_view(self, request: HttpRequest, pk: int):
        """A label, then the key: made on POST, shown after a redirect (a reload makes no second key)."""
        consumer = get_object_or_404(Consumer, pk=pk)
        if not self.has_change_permission(request, consumer):
            raise PermissionDenied
        error = None
        if request.method == "POST":
            label = request.POST.get("label", "").strip()
            if len(label) > ApiKey._meta.get_field("label").max_length:
                error = f"A label has at most {ApiKey._meta.get_field('label').max_length} characters."
            else:
                return self._created(request, [(consumer, label)])
        return TemplateResponse(
            request,
            "admin/limits/new_key_form.html",
            {
                **self.admin_site.each_context(request),
                "title": f"New API key for {consumer.name}",
                "consumer": consumer,
                "opts": self.model._meta,
                "error": error,
            },
        )

    def _created(self, request: HttpRequest, wanted: list[tuple[Consumer, str]]):
        actor = actor_of(request)
        shown = []
        for consumer, label in wanted:
            key, plaintext = services.create_api_key(consumer=consumer, actor=actor, label=label)
            shown.append({"consumer": consumer.name, "label": label, "prefix": key.prefix, "key": plaintext})
        # Kept until the next page shows it, once: the session is the admin's own and lives server-side.
        request.session[_SHOWN_ONCE] = shown
        return HttpResponseRedirect(reverse("admin:limits_consumer_new_keys"))

    def shown_once_view(self, request: HttpRequest):
        if not self.has_view_permission(request):
            raise PermissionDenied
        created = request.session.pop(_SHOWN_ONCE, [])
        return TemplateResponse(
            request,
            "admin/limits/new_keys.html",
            {
                **self.admin_site.each_context(request),
                "title": "New API keys" if created else "API keys already shown",
                "created": created,
                "header": settings.GATEWAY_API_KEY_HEADER,
                "example_url": _example_url(),
                "opts": self.model._meta,
            },
        )

    @admin.action(description="Create an API key for each selected consumer")
    def create_api_key(self, request: HttpRequest, queryset):
        return self._created(request, [(consumer, "") for consumer in queryset])


_SHOWN_ONCE = "gateway_new_api_keys"


def _example_url() -> str:
    """A URL to try a new key on: a route that needs a key if there is one (routes are the proxy app's)."""
    host, port = settings.GATEWAY_LISTEN
    authority = host if port == 80 else f"{host}:{port}"
    route = (
        apps.get_model("proxy", "Route")
        .objects.filter(enabled=True)
        .order_by("-require_api_key", "name")
        .values("path_prefix", "host")
        .first()
    )
    if route is None:
        return f"http://{authority}/"
    prefix = route["path_prefix"].rstrip("/") + "/"
    return f"http://{route['host'].replace('*', 'www') if route['host'] else authority}{prefix}"


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedAdmin):
    save_service = services.save_api_key
    delete_service = services.delete_api_key
    service_arg = "key"
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
    service_arg = "policy"
    list_display = ("name", "applies_to", "key_by", "rate", "algorithm", "mode", "on_redis_failure", "enabled")
    list_filter = ("enabled", "scope", "mode", "algorithm", "key_by", "on_redis_failure")
    list_select_related = ("route", "consumer")
    search_fields = ("name", "route__name", "consumer__name", "header_name")
    readonly_fields = ("live_usage", "created_at", "updated_at")
    fieldsets = (
        ("Live", {"fields": ("live_usage",)}),
        (None, {"fields": ("name", "enabled", "mode")}),
        ("Applies to", {"fields": ("scope", "route", "consumer")}),
        ("Counts", {"fields": ("key_by", "header_name", "limit", "window_seconds", "algorithm", "burst")}),
        ("Behaviour", {"fields": ("on_redis_failure", "legacy_headers")}),
        ("History", {"fields": ("created_at", "updated_at")}),
    )

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        return fieldsets if obj is not None else fieldsets[1:]

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

    @admin.display(description="now")
    def live_usage(self, obj: RateLimitPolicy) -> str:
        decided = status.policy_rejections(settings.GATEWAY_RUN_DIR, obj.name) or {}
        rejected = format_html(
            "<p><strong>{}</strong> rejected and {} allowed in the last minute; {} rejected since this instance "
            "started (this instance's figures).</p>",
            f"{decided.get('rejected', 0):.0f}",
            f"{decided.get('allowed', 0):.0f}",
            f"{decided.get('rejected_total', 0):.0f}",
        )
        link = reverse("admin:limits_ratelimitpolicy_usage", args=[obj.pk])
        try:
            rows = services.policy_usage(policy=obj, top=10, client=store.page_client())
        except RedisError as exc:
            return format_html("{}<p>Redis is unavailable ({}); no live usage.</p>", rejected, type(exc).__name__)
        if not rows:
            none = '{}<p>No client is being counted right now. <a href="{}">Live usage</a></p>'
            return format_html(none, rejected, link)
        table = format_html_join(
            "",
            "<tr><td>{}</td><td>{} / {}</td><td>{} s</td></tr>",
            ((services.readable_client(r.client), r.used, r.limit, f"{r.expires_in:.0f}") for r in rows),
        )
        return format_html(
            "{}<table><tr><th>client</th><th>used</th><th>resets in</th></tr>{}</table>"
            '<p><a href="{}">Live usage, and clearing a client\'s count</a></p>',
            rejected,
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
            who = services.readable_client(client)
            self.message_user(
                request,
                f"Cleared the count of {who}." if cleared else f"The count of {who} had already expired.",
                messages.SUCCESS,
            )
        return HttpResponseRedirect(reverse("admin:limits_ratelimitpolicy_usage", args=[pk]))
