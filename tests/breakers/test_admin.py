"""The breakers admin: the live page, operator actions, permissions, and the read-only history.

The Django test client comes from 127.0.0.1, inside GATEWAY_ADMIN_ALLOWED_NETWORKS. Transactional tests, as in
test_services_and_commands.py: the live page moves pending transitions into the history through breakers.sync.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from breakers import services
from breakers.models import BreakerTransition
from breakers.policy import CLOSED, DISABLED, FORCED_OPEN, NORMAL, OPEN, SHADOW
from gateway_project import store
from gateway_project.audit import Actor
from gateway_project.models import AuditEntry
from tests.support.config import breaker_modes, breaker_op, make_upstream, set_breaker_mode
from tests.support.servers import free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_prefix", "in_process")]

LIVE = "admin:breakers_breaker_changelist"
ACT = "admin:breakers_breaker_act"


@pytest.fixture
def upstreams():
    """alpha open (one failure), beta closed."""
    alpha = make_upstream("alpha", breaker_consecutive_failures=1, breaker_open_seconds=300)
    beta = make_upstream("beta")
    breaker_op("fail", alpha, "status 503")
    return alpha, beta


def staff_client(client, django_user_model, *codenames: str):
    user = django_user_model.objects.create_user("operator", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="breakers", codename__in=codenames))
    client.force_login(user)
    return client


def state_of(name: str) -> str:
    (status,) = services.live_states(names=[name])
    return status.state


def mode_of(name: str) -> str:
    return breaker_modes()[name]


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# the live page


def test_the_live_page_lists_every_upstream_with_its_live_state(admin_client, upstreams):
    response = admin_client.get(reverse(LIVE))
    assert response.status_code == 200
    assert [(s.upstream, s.mode, s.state) for s in response.context["statuses"]] == [
        ("alpha", NORMAL, OPEN),
        ("beta", NORMAL, CLOSED),
    ]
    page = response.content.decode()
    assert page.index('class="breaker-open"') < page.index("alpha") < page.index('class="breaker-closed"')
    assert page.index('class="breaker-closed"') < page.index("beta")
    assert "1 consecutive failures (last: status 503)" in page
    assert page.count('type="submit" value="Apply…"') == 2
    assert page.count('<option value="" selected>Choose an action…</option>') == 2  # nothing destructive preselected
    assert 'data-refresh-select="#breakers-live"' in page
    assert '<span class="gw-badge gw-breaker gw-breaker-open">open</span>' in page
    assert reverse(ACT) in page
    assert reverse("admin:breakers_breakertransition_changelist") in page


def test_the_live_page_without_upstreams(admin_client):
    assert "No upstreams yet." in admin_client.get(reverse(LIVE)).content.decode()


def test_the_live_page_says_so_when_redis_is_unavailable(admin_client, upstreams, settings):
    working = settings.GATEWAY_REDIS_URL
    store.reset_clients()
    settings.GATEWAY_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    try:
        response = admin_client.get(reverse(LIVE))
        assert response.status_code == 200
        assert response.content.decode().count("unknown (ConnectionError)") == 2
        acted = admin_client.post(reverse(ACT), {"confirm": "yes", "upstream": "alpha", "action": "reset"}, follow=True)
        assert messages_of(acted) == [
            "Redis is unavailable (ConnectionError); nothing changed.",
            "Redis did not answer (ConnectionError); the live state of the breakers is unknown. "
            "The gateways keep deciding on their own until it is back.",
        ]
    finally:
        settings.GATEWAY_REDIS_URL = working
        store.reset_clients()
    assert state_of("alpha") == OPEN


# actions


def test_an_action_asks_for_confirmation_first_and_changes_nothing_until_then(admin_client, upstreams):
    page = admin_client.post(reverse(ACT), {"upstream": "alpha", "action": "reset"})
    assert page.status_code == 200
    text = page.content.decode()
    assert "Reset (close and clear counts)</strong> for:" in text
    assert 'name="confirm" value="yes"' in text and "No, go back" in text
    assert state_of("alpha") == OPEN
    assert not AuditEntry.objects.exists()
    assert (
        admin_client.post(reverse(ACT), {"upstream": "alpha", "action": "reset", "confirm": "yes"}).status_code == 302
    )
    assert state_of("alpha") == CLOSED


def test_a_forced_open_breaker_reads_forced_open_not_closed(admin_client, upstreams):
    set_breaker_mode("beta", FORCED_OPEN)
    page = admin_client.get(reverse(LIVE)).content.decode()
    assert '<span class="gw-badge gw-breaker gw-breaker-forced">forced open by an operator</span>' in page


def test_reset_closes_the_breaker_and_redirects(admin_client, upstreams):
    response = admin_client.post(reverse(ACT), {"confirm": "yes", "upstream": "alpha", "action": "reset"})
    assert response.status_code == 302
    assert response.url == reverse(LIVE)
    assert state_of("alpha") == CLOSED
    page = admin_client.get(response.url)
    assert messages_of(page) == ["reset: alpha"]
    reset = BreakerTransition.objects.get(reason="reset by user:admin")
    assert (reset.upstream_name, reset.from_state, reset.to_state, reset.actor) == (
        "alpha",
        OPEN,
        CLOSED,
        "user:admin",
    )
    audited = AuditEntry.objects.get(action="reset")
    assert (audited.actor, audited.via, audited.address, audited.object_name, audited.changes) == (
        "user:admin",
        "admin",
        "127.0.0.1",
        "alpha",
        {"state": ["open", "closed"]},
    )


@pytest.mark.parametrize(
    ("start", "action", "message"),
    [
        (NORMAL, FORCED_OPEN, "force open: beta"),
        (FORCED_OPEN, NORMAL, "back to normal: beta"),
        (NORMAL, DISABLED, "disable: beta"),
        (NORMAL, SHADOW, "shadow: beta"),
    ],
)
def test_mode_actions_change_the_mode_and_redirect(admin_client, upstreams, start, action, message):
    set_breaker_mode("beta", start)
    response = admin_client.post(reverse(ACT), {"confirm": "yes", "upstream": "beta", "action": action})
    assert response.status_code == 302
    assert response.url == reverse(LIVE)
    assert (mode_of("beta"), mode_of("alpha")) == (action, NORMAL)
    assert messages_of(admin_client.get(response.url)) == [message]
    change = BreakerTransition.objects.get(kind="mode")
    assert (change.upstream_name, change.from_state, change.to_state, change.actor) == (
        "beta",
        start,
        action,
        "user:admin",
    )


def test_setting_the_current_mode_again_changes_nothing(admin_client, upstreams):
    response = admin_client.post(reverse(ACT), {"confirm": "yes", "upstream": "beta", "action": NORMAL}, follow=True)
    assert messages_of(response) == ["back to normal: nothing to change"]
    assert not BreakerTransition.objects.filter(kind="mode").exists()


def test_an_unknown_action_shows_an_error(admin_client, upstreams):
    response = admin_client.post(
        reverse(ACT), {"confirm": "yes", "upstream": "alpha", "action": "explode"}, follow=True
    )
    assert response.status_code == 200
    assert messages_of(response) == ["unknown action 'explode'"]
    assert (state_of("alpha"), mode_of("alpha")) == (OPEN, NORMAL)


def test_an_unknown_upstream_shows_an_error(admin_client, upstreams):
    response = admin_client.post(
        reverse(ACT), {"confirm": "yes", "upstream": "nope", "action": FORCED_OPEN}, follow=True
    )
    assert messages_of(response) == ["no upstream named 'nope'"]
    assert not BreakerTransition.objects.filter(kind="mode").exists()


def test_an_action_without_an_upstream_changes_nothing(admin_client, upstreams):
    admin_client.post(reverse(ACT), {"confirm": "yes", "action": FORCED_OPEN})
    assert (mode_of("alpha"), mode_of("beta")) == (NORMAL, NORMAL)


def test_actions_need_a_post(admin_client, upstreams):
    assert admin_client.get(reverse(ACT), {"upstream": "alpha", "action": "reset"}).status_code == 405
    assert state_of("alpha") == OPEN


# permissions


def test_view_permission_shows_the_page_without_actions(client, django_user_model, upstreams):
    viewer = staff_client(client, django_user_model, "view_breaker")
    response = viewer.get(reverse(LIVE))
    assert response.status_code == 200
    page = response.content.decode()
    assert "alpha" in page
    assert 'value="Apply"' not in page
    assert response.context["can_act"] is False


def test_without_change_permission_actions_are_refused(client, django_user_model, upstreams):
    viewer = staff_client(client, django_user_model, "view_breaker")
    assert viewer.post(reverse(ACT), {"confirm": "yes", "upstream": "alpha", "action": "reset"}).status_code == 403
    assert viewer.post(reverse(ACT), {"confirm": "yes", "upstream": "beta", "action": FORCED_OPEN}).status_code == 403
    assert (state_of("alpha"), mode_of("beta")) == (OPEN, NORMAL)


def test_change_permission_allows_actions(client, django_user_model, upstreams):
    operator = staff_client(client, django_user_model, "view_breaker", "change_breaker")
    assert operator.post(reverse(ACT), {"confirm": "yes", "upstream": "alpha", "action": "reset"}).status_code == 302
    assert state_of("alpha") == CLOSED
    assert BreakerTransition.objects.filter(actor="user:operator").exists()


def test_without_view_permission_the_page_is_refused(client, django_user_model, upstreams):
    stranger = staff_client(client, django_user_model)
    assert stranger.get(reverse(LIVE)).status_code == 403


def test_non_staff_users_are_sent_to_the_login(client, django_user_model, upstreams):
    user = django_user_model.objects.create_user("visitor", password="pw")
    client.force_login(user)
    response = client.get(reverse(LIVE))
    assert response.status_code == 302
    assert reverse("admin:login") in response.url
    assert client.post(reverse(ACT), {"confirm": "yes", "upstream": "alpha", "action": "reset"}).status_code == 302
    assert state_of("alpha") == OPEN


# history


def test_the_history_renders_and_is_read_only(admin_client, upstreams):
    services.reset_breakers(names=["alpha"], actor=Actor("user:someone", "admin"))
    services.set_mode(names=["beta"], mode=SHADOW, actor=Actor("user:someone", "admin"))
    changelist = reverse("admin:breakers_breakertransition_changelist")
    response = admin_client.get(changelist)
    assert response.status_code == 200
    page = response.content.decode()
    for reason in ("1 consecutive failures (last: status 503)", "reset by user:someone", "mode set to shadow"):
        assert reason in page
    assert reverse("admin:breakers_breakertransition_add") not in page
    assert admin_client.get(reverse("admin:breakers_breakertransition_add")).status_code == 403

    row = BreakerTransition.objects.get(kind="mode")
    change = reverse("admin:breakers_breakertransition_change", args=[row.pk])
    view = admin_client.get(change)
    assert view.status_code == 200
    assert 'name="_save"' not in view.content.decode()
    assert admin_client.post(change, {"reason": "edited"}).status_code == 403
    row.refresh_from_db()
    assert row.reason == "mode set to shadow"
    assert admin_client.get(changelist, {"q": "someone"}).context["cl"].result_count == 2
