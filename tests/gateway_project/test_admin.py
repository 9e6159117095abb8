"""The core's admin: API tokens (made and shown once, revoked), the read-only audit trail, and admin saves
recorded in it through the apps' services (inline objects included)."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from gateway_project import tokens
from gateway_project.models import ApiToken, AuditEntry
from proxy.models import Upstream
from tests.support.admin import upstream_form

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_prefix", "in_process")]


def test_a_token_made_in_the_admin_is_shown_once_and_can_be_revoked(admin_client, admin_user):
    page = admin_client.post(reverse("admin:gateway_apitoken_add"), {"user": admin_user.pk, "label": "ci"})
    assert page.status_code == 200
    (plaintext,) = set(re.findall(r"gwt_[A-Za-z0-9_-]{20,}", page.content.decode()))
    token = tokens.authenticate(plaintext)
    assert (token.user, token.label) == (admin_user, "ci")
    assert plaintext not in admin_client.get(reverse("admin:gateway_apitoken_changelist")).content.decode()
    admin_client.post(
        reverse("admin:gateway_apitoken_changelist"), {"action": "revoke", "_selected_action": [token.pk]}
    )
    assert tokens.authenticate(plaintext) is None
    assert [(e.actor, e.via, e.action, e.object_name) for e in AuditEntry.objects.order_by("id")] == [
        ("user:admin", "admin", "create", token.prefix),
        ("user:admin", "admin", "revoke", token.prefix),
    ]
    assert ApiToken.objects.get().key_hash == tokens.hash_token(plaintext)


def test_admin_saves_go_through_the_services_and_the_trail_is_read_only(admin_client):
    form = upstream_form(
        "orders", "http://orders.internal", **{"breaker-0-mode": "shadow", "breaker-0-consecutive_failures": "3"}
    )
    response = admin_client.post(reverse("admin:proxy_upstream_add"), form)
    assert response.status_code == 302, response.content.decode()[:2000]
    upstream = Upstream.objects.get()
    form["read_timeout"] = "5"
    form.update({"breaker-INITIAL_FORMS": "1", "breaker-0-upstream": str(upstream.pk)})
    assert admin_client.post(reverse("admin:proxy_upstream_change", args=[upstream.pk]), form).status_code == 302
    admin_client.post(reverse("admin:proxy_upstream_delete", args=[upstream.pk]), {"post": "yes"})
    assert not Upstream.objects.exists()
    trail = [(e.actor, e.via, e.action, e.object_type, e.object_name) for e in AuditEntry.objects.order_by("id")]
    assert trail == [
        ("user:admin", "admin", "create", "upstream", "orders"),
        ("user:admin", "admin", "create", "breaker", "orders"),
        ("user:admin", "admin", "update", "upstream", "orders"),
        ("user:admin", "admin", "delete", "upstream", "orders"),
    ]
    assert AuditEntry.objects.get(action="update").changes == {"read_timeout": [30.0, 5.0]}
    assert AuditEntry.objects.get(action="delete").note == "also deleted: 1 circuit breaker settings"

    changelist = admin_client.get(reverse("admin:gateway_auditentry_changelist"), {"object_type": "upstream"})
    assert changelist.status_code == 200
    assert "read_timeout: 30.0 → 5.0" in changelist.content.decode()
    assert admin_client.get(reverse("admin:gateway_auditentry_add")).status_code == 403
    entry = AuditEntry.objects.first()
    assert (
        admin_client.post(reverse("admin:gateway_auditentry_delete", args=[entry.pk]), {"post": "yes"}).status_code
        == 403
    )
