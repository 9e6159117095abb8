"""Target operations (proxy.services), as the admin, commands and the API call them."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from gateway_project import runtime
from proxy import services
from tests.support.config import make_route, make_upstream

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_prefix")]


def test_targets_are_added_changed_and_removed_and_each_change_is_a_new_revision():
    make_route("orders", "/orders", make_upstream("orders", "http://orders.internal"))
    revision = runtime.db_state()[0]
    services.add_target(upstream="orders", address="10.0.0.1:8080", weight=70)
    services.add_target(upstream="orders", address="10.0.0.2:8080")
    services.update_target(upstream="orders", address="10.0.0.2:8080", weight=30, enabled=False)
    assert runtime.db_state()[0] == revision + 3
    runtime.load()
    (route,) = runtime.get("routes").routes
    assert [(t.address, t.weight) for t in route.upstream.targets] == [("10.0.0.1:8080", 70)]  # the enabled one

    services.remove_target(upstream="orders", address="10.0.0.1:8080")
    runtime.load()
    (route,) = runtime.get("routes").routes
    assert route.upstream.targets == ()  # every target disabled: the view answers 503 no_target


def test_bad_or_unknown_targets_are_refused():
    make_upstream("orders", "http://orders.internal")
    with pytest.raises(ValidationError):
        services.add_target(upstream="orders", address="10.0.0.1")
    services.add_target(upstream="orders", address="10.0.0.1:80")
    with pytest.raises(ValidationError):
        services.add_target(upstream="orders", address="10.0.0.1:80")  # twice
    with pytest.raises(services.UnknownTarget):
        services.update_target(upstream="orders", address="10.0.0.9:80", weight=1)
    with pytest.raises(services.UnknownTarget):
        services.add_target(upstream="nope", address="10.0.0.1:80")


def test_target_health_outside_an_instance_lists_the_configuration():
    make_upstream("solo", "https://solo.internal")
    (row,) = services.target_health(upstreams=["solo"], run_dir="")
    assert (row.address, row.workers, row.active, row.state) == ("solo.internal:443", 0, "unchecked", "healthy")
    assert row.as_dict()["state"] == "healthy"
