"""The audit trail's service layer: generic saves and deletes (validated, ETag-guarded, recorded) and imports."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db.models import ProtectedError

from gateway_project import changes, configfile
from gateway_project.audit import Actor
from gateway_project.models import AuditEntry
from proxy.models import Route, Upstream
from tests.support.config import make_policy, make_route, make_upstream

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_prefix")]

ALICE = Actor("user:alice", "admin", "10.0.0.7")


def entries() -> list[tuple]:
    return [
        (e.actor, e.via, e.address, e.action, e.object_type, e.object_name, e.changes, e.note)
        for e in AuditEntry.objects.order_by("id")
    ]


def test_a_save_is_validated_recorded_and_a_no_op_leaves_no_trace():
    upstream = Upstream(name="orders", base_url="HTTP://Orders.Internal/v1/")
    changes.save(upstream, actor=ALICE, object_type="upstream")
    assert upstream.base_url == "http://orders.internal/v1"  # normalize() ran
    (created,) = entries()
    assert created[:6] == ("user:alice", "admin", "10.0.0.7", "create", "upstream", "orders")
    assert created[6]["base_url"] == [None, "http://orders.internal/v1"]

    upstream.read_timeout = 5.0
    assert changes.save(upstream, actor=ALICE, object_type="upstream") == {"read_timeout": [30.0, 5.0]}
    assert changes.save(upstream, actor=ALICE, object_type="upstream") == {}
    assert [e[3] for e in entries()] == ["create", "update"]

    upstream.base_url = "ftp://x"
    with pytest.raises(ValidationError) as excinfo:
        changes.save(upstream, actor=ALICE, object_type="upstream")
    assert "base_url" in excinfo.value.message_dict
    assert len(entries()) == 2


def test_related_objects_are_recorded_by_name():
    route = make_route("r", "/r", make_upstream("a"))
    route.upstream = make_upstream("b")
    assert changes.save(route, actor=ALICE, object_type="route") == {"upstream": ["a", "b"]}


def test_a_stale_etag_is_refused_and_changes_nothing():
    upstream = make_upstream("orders")
    seen = changes.etag(upstream)
    other = Upstream.objects.get(pk=upstream.pk)
    other.read_timeout = 9.0
    changes.save(other, actor=ALICE, object_type="upstream", if_match=seen)  # the first writer wins
    upstream.read_timeout = 1.0
    with pytest.raises(changes.Conflict):
        changes.save(upstream, actor=ALICE, object_type="upstream", if_match=seen)
    assert Upstream.objects.get(pk=upstream.pk).read_timeout == 9.0
    with pytest.raises(changes.Conflict):
        changes.delete(upstream, actor=ALICE, object_type="upstream", if_match=seen)
    assert changes.etag(Upstream.objects.get(pk=upstream.pk)) != seen


def test_a_delete_names_what_goes_with_it_and_refuses_what_is_still_used():
    upstream = make_upstream("orders")
    route = make_route("r", "/r", upstream)
    make_policy("p1", scope="route", route=route)
    make_policy("p2", scope="route", route=route)
    with pytest.raises(ProtectedError):
        changes.delete(upstream, actor=ALICE, object_type="upstream")
    assert not AuditEntry.objects.exists()
    changes.delete(route, actor=ALICE, object_type="route")
    (deleted,) = entries()
    assert deleted[3:6] == ("delete", "route", "r")
    assert deleted[6]["path_prefix"] == ["/r", None]
    assert deleted[7] == "also deleted: 2 rate limit policies"
    assert not Route.objects.exists()


def test_an_import_records_every_change_with_its_actor_including_the_pruned():
    make_upstream("old")
    make_upstream("kept", read_timeout=3.0)
    document = configfile.export_document()
    document["upstreams"] = [u for u in document["upstreams"] if u["name"] != "old"]
    document["upstreams"][0]["read_timeout"] = 4.0
    document["upstreams"].append({"name": "new", "base_url": "http://new.internal"})
    configfile.import_document(document, actor=Actor("cli:ops", "cli", "host1"), dry_run=True, prune=True)
    assert entries() == []
    configfile.import_document(document, actor=Actor("cli:ops", "cli", "host1"), prune=True)
    recorded = {(e[3], e[5]): e for e in entries()}
    assert set(recorded) == {("update", "kept"), ("create", "new"), ("delete", "old")}
    assert recorded["update", "kept"][:3] == ("cli:ops", "cli", "host1")
    assert recorded["update", "kept"][6] == {"read_timeout": [3.0, 4.0]}
    assert recorded["create", "new"][6]["base_url"] == [None, "http://new.internal"]
    assert recorded["create", "new"][6]["breaker"][1]["mode"] == "normal"
    assert recorded["delete", "old"][6]["base_url"] == ["http://127.0.0.1:9", None]
    assert {e[7] for e in entries()} == {"import --prune"}
