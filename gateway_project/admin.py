"""The core's admin: the audit trail (read-only), API tokens, and the base class every app's admin saves through."""

from __future__ import annotations

from django.contrib import admin, messages
from django.http import HttpRequest
from django.template.response import TemplateResponse

from gateway_project import changes, tokens
from gateway_project.audit import ADMIN, Actor
from gateway_project.models import ApiToken, AuditEntry


def actor_of(request: HttpRequest) -> Actor:
    return Actor.of_request(request, ADMIN)


class AuditedAdmin(admin.ModelAdmin):
    """A ModelAdmin whose saves and deletes go through the app's service functions (`save_service`,
    `delete_service`: keyword-only, taking the object under its model name and the actor), so that an admin
    change is validated, guarded and recorded as an API or command change is (`service_arg`: the services'
    keyword for the object when it is not the model's name). Inline objects (the breaker's
    settings on an upstream's page) are recorded as their inline's `audit_type`, under the name its
    `audit_name(obj)` gives (default: the parent object's)."""

    save_service = None
    delete_service = None
    #: The services' keyword for the object, when it is not the model's name (save_policy(*, policy, ...)).
    service_arg = None

    def _call(self, service, request, obj) -> None:
        service(**{self.service_arg or self.model._meta.model_name: obj, "actor": actor_of(request)})

    def save_model(self, request, obj, form, change) -> None:
        self._call(type(self).save_service, request, obj)

    def delete_model(self, request, obj) -> None:
        self._call(type(self).delete_service, request, obj)

    def delete_queryset(self, request, queryset) -> None:
        for obj in queryset:
            self.delete_model(request, obj)

    def save_formset(self, request, form, formset, change) -> None:
        inline = next(i for i in self.get_inline_instances(request, form.instance) if i.model is formset.model)
        object_type = getattr(inline, "audit_type", formset.model._meta.model_name)
        actor = actor_of(request)
        name = getattr(inline, "audit_name", lambda obj: str(form.instance))
        for obj in formset.save(commit=False):
            changes.save(obj, actor=actor, object_type=object_type, name=name(obj))
        for obj in formset.deleted_objects:
            changes.delete(obj, actor=actor, object_type=object_type, name=name(obj))
        formset.save_m2m()


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ("at", "actor", "via", "address", "action", "object_type", "object_name", "summary")
    list_filter = ("object_type", "action", "via")
    search_fields = ("object_name", "actor", "note")
    date_hierarchy = "at"
    readonly_fields = [f.name for f in AuditEntry._meta.fields]

    @admin.display(description="changes")
    def summary(self, obj: AuditEntry) -> str:
        text = ", ".join(f"{field}: {old!r} → {new!r}" for field, (old, new) in obj.changes.items())
        return " ".join(filter(None, (text[:200], f"[{obj.note}]" if obj.note else "")))

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "label", "created_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    list_select_related = ("user",)
    search_fields = ("prefix", "label", "user__username")
    fields = ("user", "label", "prefix", "created_at", "revoked_at")
    actions = ["revoke"]

    def get_readonly_fields(self, request, obj=None):
        return (
            ("user", "label", "prefix", "created_at", "revoked_at") if obj else ("prefix", "created_at", "revoked_at")
        )

    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None and super().has_change_permission(request, obj)  # the revoke action; nothing to edit

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "user":
            kwargs["queryset"] = db_field.related_model.objects.filter(is_staff=True, is_active=True)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def add_view(self, request, form_url="", extra_context=None):
        if request.method == "POST":
            form = self.get_form(request)(request.POST)
            if form.is_valid() and self.has_add_permission(request):
                token, plaintext = tokens.create_token(
                    user=form.cleaned_data["user"], label=form.cleaned_data["label"], actor=actor_of(request)
                )
                return TemplateResponse(
                    request,
                    "admin/gateway/new_token.html",
                    {
                        **self.admin_site.each_context(request),
                        "title": "New API token",
                        "token": token,
                        "plaintext": plaintext,
                        "opts": self.model._meta,
                    },
                )
        return super().add_view(request, form_url, extra_context)

    @admin.action(description="Revoke the selected tokens (at once)", permissions=["add"])
    def revoke(self, request: HttpRequest, queryset):
        count = sum(tokens.revoke_token(token=token, actor=actor_of(request)) for token in queryset)
        self.message_user(request, f"Revoked {count} token(s).", messages.SUCCESS)
