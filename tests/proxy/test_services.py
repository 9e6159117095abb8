"""Target operations (proxy.services), as the admin, commands and the API call them."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from gateway_project import runtime
from gateway_project.models import AuditEntry
from proxy import services
from tests.support.config import TEST_ACTOR, make_route, make_upstream

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_prefix")]


def test_targets_are_added_changed_and_removed_and_each_change_is_a_new_revision():
    make_route("orders", "/orders", make_upstream("orders", "http://orders.internal"))
    revision = runtime.db_state()[0]
    services.add_target(upstream="orders", address="10.0.0.1:8080", actor=TEST_ACTOR, weight=70)
    services.add_target(upstream="orders", address="10.0.0.2:8080", actor=TEST_ACTOR)
    services.update_target(upstream="orders", address="10.0.0.2:8080", actor=TEST_ACTOR, weight=30, enabled=False)
    assert runtime.db_state()[0] == revision + 3
    runtime.load()
    (route,) = runtime.get("routes").routes
    assert [(t.address, t.weight) for t in route.upstream.targets] == [("10.0.0.1:8080", 70)]  # the enabled one

    services.remove_target(upstream="orders", address="10.0.0.1:8080", actor=TEST_ACTOR)
    runtime.load()
    (route,) = runtime.get("routes").routes
    assert route.upstream.targets == ()  # every target disabled: the view answers 503 no_target
    trail = AuditEntry.objects.filter(object_type="target").order_by("id")
    assert [(e.action, e.object_name, e.actor) for e in trail] == [
        ("create", "orders 10.0.0.1:8080", TEST_ACTOR.name),
        ("create", "orders 10.0.0.2:8080", TEST_ACTOR.name),
        ("update", "orders 10.0.0.2:8080", TEST_ACTOR.name),
        ("delete", "orders 10.0.0.1:8080", TEST_ACTOR.name),
    ]
    assert trail[2].changes == {"weight": [100, 30], "enabled": [True, False]}


def test_bad_or_unknown_targets_are_refused():
    make_upstream("orders", "http://orders.internal")
    with pytest.raises(ValidationError):
        services.add_target(upstream="orders", address="10.0.0.1", actor=TEST_ACTOR)
    services.add_target(upstream="orders", address="10.0.0.1:80", actor=TEST_ACTOR)
    with pytest.raises(ValidationError):
        services.add_target(upstream="orders", address="10.0.0.1:80", actor=TEST_ACTOR)  # twice
    with pytest.raises(services.UnknownTarget):
        services.update_target(upstream="orders", address="10.0.0.9:80", actor=TEST_ACTOR, weight=1)
    with pytest.raises(services.UnknownTarget):
        services.add_target(upstream="nope", address="10.0.0.1:80", actor=TEST_ACTOR)


def test_target_health_outside_an_instance_lists_the_configuration():
    make_upstream("solo", "https://solo.internal")
    (row,) = services.target_health(upstreams=["solo"], run_dir="")
    assert (row.address, row.workers, row.active, row.state) == ("solo.internal:443", 0, "unchecked", "untracked")
    assert row.as_dict()["state"] == "untracked"  # nobody tracks one target without checks
