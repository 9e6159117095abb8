"""The management API in-process: authentication, permissions, errors with field paths, ETags, the audit
trail, and each app's endpoints. (tests/gateway_project/test_api_e2e.py drives it through real gunicorn.)"""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from breakers.models import BreakerTransition
from breakers.policy import CLOSED, FORCED_OPEN, OPEN
from gateway_project import tokens
from gateway_project.audit import Actor
from gateway_project.models import AuditEntry
from limits.compiled import hash_key
from limits.models import ApiKey
from proxy.models import Route, Upstream
from tests.support.config import TEST_ACTOR, breaker_op, hit, make_policy, make_upstream

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_prefix", "in_process")]

API = "/_gateway/api/v1"


class Api:
    """A client that sends JSON with a bearer token, as scripts do."""

    def __init__(self, token: str | None) -> None:
        self.client = Client()
        self.headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}

    def call(self, method: str, path: str, body=None, **headers):
        data = json.dumps(body) if body is not None else None
        return getattr(self.client, method)(
            API + path, data=data, content_type="application/json", **self.headers, **headers
        )

    def get(self, path, **headers):
        return self.call("get", path, **headers)

    def post(self, path, body=None, **headers):
        return self.call("post", path, body if body is not None else {}, **headers)

    def patch(self, path, body, **headers):
        return self.call("patch", path, body, **headers)

    def put(self, path, body, **headers):
        return self.call("put", path, body, **headers)

    def delete(self, path, **headers):
        return self.call("delete", path, **headers)


def user(name: str, *, superuser: bool = False, staff: bool = True, perms: tuple[str, ...] = ()):
    users = get_user_model().objects
    made = users.create_superuser(name, f"{name}@x", "pw") if superuser else users.create_user(name, password="pw")
    made.is_staff = staff
    made.save()
    for codename in perms:
        made.user_permissions.add(Permission.objects.get(codename=codename))
    return made


def token_of(account, label: str = "") -> str:
    return tokens.create_token(user=account, actor=TEST_ACTOR, label=label)[1]


@pytest.fixture
def ops() -> Api:
    return Api(token_of(user("ops", superuser=True)))


def upstream_body(name="orders", **fields):
    return {"name": name, "base_url": "http://orders.internal:8080/v1", **fields}


# authentication and permissions


def test_without_credentials_a_script_is_told_how_to_authenticate():
    response = Api(None).get("/upstreams/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="gateway"'
    assert response.json()["error"] == "not_authenticated"
    assert response.json()["request_id"] == response["X-Request-ID"]


def test_unknown_revoked_and_non_staff_tokens_are_refused():
    assert Api("gwt_not-a-real-token").get("/upstreams/").status_code == 401
    ops = user("ops", superuser=True)
    plaintext = token_of(ops)
    assert Api(plaintext).get("/upstreams/").status_code == 200
    tokens.revoke_token(token=tokens.authenticate(plaintext), actor=TEST_ACTOR)
    assert Api(plaintext).get("/upstreams/").status_code == 401
    plaintext = token_of(ops)
    ops.is_staff = False
    ops.save()
    assert Api(plaintext).get("/upstreams/").status_code == 401
    with pytest.raises(Exception, match="not an active staff user"):
        token_of(user("visitor", staff=False))


def test_a_view_only_operator_reads_and_changes_nothing(ops):
    make_upstream("orders")
    viewer = Api(token_of(user("viewer", perms=("view_upstream", "view_breaker"))))
    assert viewer.get("/upstreams/").json()[0]["name"] == "orders"
    assert viewer.get("/upstreams/orders/").status_code == 200
    assert viewer.get("/breakers/orders/").status_code == 200
    for response in (
        viewer.patch("/upstreams/orders/", {"read_timeout": 1}),
        viewer.post("/upstreams/", upstream_body("other")),
        viewer.delete("/upstreams/orders/"),
        viewer.post("/breakers/orders/reset/"),
        viewer.post("/breakers/orders/mode/", {"mode": "forced_open"}),
        viewer.get("/routes/"),  # no view permission on routes
        viewer.get("/config/"),
        viewer.post("/config/import/", {"document": {"version": 1}}),
    ):
        assert response.status_code == 403, response.content
        assert response.json()["error"] == "permission_denied"
    assert Upstream.objects.get().read_timeout == 30.0
    assert not AuditEntry.objects.exclude(object_type="api_token").exists()


def test_the_admin_session_works_and_needs_csrf(ops):
    user("browser", superuser=True)
    client = Client(enforce_csrf_checks=True)
    assert client.login(username="browser", password="pw")
    assert client.get(f"{API}/upstreams/").status_code == 200
    refused = client.post(f"{API}/upstreams/", json.dumps(upstream_body()), content_type="application/json")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["message"]
    assert not Upstream.objects.exists()


# configuration objects


def test_create_read_update_delete_an_upstream_with_etags(ops):
    created = ops.post("/upstreams/", upstream_body(retry_on_statuses=[504, 502]))
    assert created.status_code == 201, created.content
    assert created.json()["retry_on_statuses"] == [502, 504]
    etag = created["ETag"]
    read = ops.get("/upstreams/orders/")
    assert read.json()["base_url"] == "http://orders.internal:8080/v1"
    assert read["ETag"] == etag

    changed = ops.patch("/upstreams/orders/", {"read_timeout": 5}, HTTP_IF_MATCH=etag)
    assert changed.status_code == 200
    assert changed["ETag"] != etag
    stale = ops.patch("/upstreams/orders/", {"read_timeout": 6}, HTTP_IF_MATCH=etag)
    assert stale.status_code == 412
    assert stale.json()["error"] == "precondition_failed"
    assert Upstream.objects.get().read_timeout == 5.0
    assert ops.delete("/upstreams/orders/", HTTP_IF_MATCH=etag).status_code == 412
    assert ops.delete("/upstreams/orders/", HTTP_IF_MATCH=changed["ETag"]).status_code == 204
    assert not Upstream.objects.exists()

    trail = [(e.action, e.changes.get("read_timeout")) for e in AuditEntry.objects.filter(object_type="upstream")]
    assert trail == [("delete", [5.0, None]), ("update", [30.0, 5.0]), ("create", [None, 30.0])]
    assert {e.actor for e in AuditEntry.objects.filter(object_type="upstream")} == {
        f"token:{AuditEntry.objects.get(object_type='api_token').object_name} (ops)"
    }


def test_errors_name_each_refused_field_by_its_path(ops):
    response = ops.post("/upstreams/", upstream_body(base_url="ftp://x", retry_on_statuses=[502, 200]))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid"
    assert set(response.json()["fields"]) == {"retry_on_statuses[1]"}
    # The model's own rules (normalize()) answer the same way.
    response = ops.post("/upstreams/", upstream_body(base_url="ftp://x"))
    assert response.json()["fields"] == {"base_url": ["The scheme must be http or https."]}
    make_upstream("orders")
    response = ops.post("/routes/", {"name": "r", "path_prefix": "/_gateway/x", "upstream": "orders"})
    assert response.json()["fields"] == {
        "path_prefix": ["/_gateway is served by the gateway itself and cannot be routed."]
    }
    response = ops.post("/routes/", {"name": "r", "path_prefix": "/r", "upstream": "nope"})
    assert response.json()["fields"] == {"upstream": ["Object with name=nope does not exist."]}
    response = ops.post(
        "/routes/", {"name": "r", "path_prefix": "/r", "upstream": "orders", "methods": ["GET", "FETCH"]}
    )
    assert response.json()["fields"] == {
        "methods": ["Unknown or refused method(s): FETCH. Allowed: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS."]
    }
    assert not Route.objects.exists()


def test_routes_are_named_by_upstream_name_and_conflicts_are_refused(ops):
    make_upstream("orders")
    body = {"name": "r1", "path_prefix": "/orders/", "upstream": "orders", "methods": ["get", "post"]}
    created = ops.post("/routes/", body)
    assert created.status_code == 201, created.content
    assert (created.json()["path_prefix"], created.json()["methods"]) == ("/orders", ["GET", "POST"])
    clash = ops.post("/routes/", {**body, "name": "r2", "methods": ["POST"]})
    assert clash.status_code == 400
    assert "already matches the same requests" in clash.json()["message"]
    in_use = ops.delete("/upstreams/orders/")
    assert in_use.status_code == 409
    assert in_use.json() | {"request_id": None} == {
        "error": "in_use",
        "message": "Still in use by r1: change or delete those first.",
        "request_id": None,
    }


def test_consumers_keys_and_policies(ops):
    assert ops.post("/consumers/", {"name": "acme"}).status_code == 201
    created = ops.post("/api-keys/", {"consumer": "acme", "label": "ci"})
    assert created.status_code == 201
    plaintext = created.json()["key"]
    stored = ApiKey.objects.get()
    assert stored.key_hash == hash_key(plaintext)
    assert "key" not in ops.get(f"/api-keys/{stored.pk}/").json()
    assert plaintext not in ops.get("/api-keys/?consumer=acme").content.decode()
    revoked = ops.post(f"/api-keys/{stored.pk}/revoke/")
    assert revoked.json()["revoked_at"] is not None
    assert ops.get("/api-keys/?consumer=nobody").json() == []

    policy = ops.post(
        "/rate-limit-policies/",
        {
            "name": "acme-rate",
            "scope": "consumer",
            "consumer": "acme",
            "key_by": "consumer",
            "limit": 5,
            "window_seconds": 1,
        },
    )
    assert policy.status_code == 201, policy.content
    bad = ops.post("/rate-limit-policies/", {"name": "x", "scope": "route", "limit": 5, "window_seconds": 1})
    assert bad.json()["fields"] == {"route": ["Choose the route this policy applies to."]}

    actions = [(e.action, e.object_type, e.object_name) for e in AuditEntry.objects.order_by("id")][1:]
    assert actions == [
        ("create", "consumer", "acme"),
        ("create", "api_key", stored.prefix),
        ("revoke", "api_key", stored.prefix),
        ("create", "rate_limit", "acme-rate"),
    ]


def test_live_usage_and_clearing_a_clients_counter(ops):
    policy = make_policy("per-ip")
    hit(policy, "192.0.2.1", 3)
    usage = ops.get("/rate-limit-policies/per-ip/usage/")
    assert [(row["client"], row["used"], row["limit"]) for row in usage.json()] == [("ip:<192.0.2.1>", 3, 5)]
    cleared = ops.post("/rate-limit-policies/per-ip/clear/", {"client": "ip:<192.0.2.1>"})
    assert cleared.json() == {"client": "ip:<192.0.2.1>", "cleared": True}
    assert ops.get("/rate-limit-policies/per-ip/usage/").json() == []
    entry = AuditEntry.objects.get(action="clear_counter")
    assert (entry.via, entry.object_name, entry.note) == ("api", "per-ip", "ip:<192.0.2.1>: cleared")
    assert ops.post("/rate-limit-policies/per-ip/clear/", {"client": ""}).json()["fields"] == {
        "client": ["This field may not be blank."]
    }


@pytest.mark.django_db(transaction=True)
def test_breakers_live_state_reset_and_modes(ops):
    upstream = make_upstream("orders", breaker_consecutive_failures=1, breaker_open_seconds=300)
    breaker_op("fail", upstream, "status 503")
    seen = ops.get("/breakers/orders/").json()
    assert seen["state"] == OPEN, seen
    forced = ops.post("/breakers/orders/mode/", {"mode": FORCED_OPEN})
    assert (forced.json()["mode"], forced.json()["held_open"]) == (FORCED_OPEN, True)
    reset = ops.post("/breakers/orders/reset/")
    assert (reset.json()["state"], reset.json()["held_open"]) == (CLOSED, True)
    assert ops.post("/breakers/orders/mode/", {"mode": "sideways"}).json()["fields"]["mode"]
    assert ops.get("/breakers/nope/").status_code == 404
    for path in ("/breakers/", "/breakers/orders/", "/breakers/orders/reset/"):  # found by schemathesis: were 500
        assert ops.call("trace", path).status_code == 405
    assert [b["upstream"] for b in ops.get("/breakers/").json()] == ["orders"]
    trail = [(e.action, e.object_type, e.changes, e.note) for e in AuditEntry.objects.filter(object_type="breaker")]
    assert trail == [
        ("reset", "breaker", {"state": [OPEN, CLOSED]}, "mode forced_open still holds it open"),
        ("update", "breaker", {"mode": ["normal", FORCED_OPEN]}, ""),
    ]
    assert BreakerTransition.objects.filter(kind="mode", actor__startswith="token:").exists()


def test_export_and_import_with_a_dry_run_that_returns_the_diff(ops):
    make_upstream("orders")
    document = ops.get("/config/").json()
    assert [u["name"] for u in document["upstreams"]] == ["orders"]
    document["upstreams"][0]["read_timeout"] = 5.0
    document["upstreams"][0]["breaker"]["mode"] = "shadow"
    dry = ops.post("/config/import/", {"document": document, "dry_run": True})
    assert dry.json() == {
        "applied": False,
        "changes": [
            {
                "action": "update",
                "object_type": "upstream",
                "name": "orders",
                "changes": {"read_timeout": [30.0, 5.0], "breaker.mode": ["normal", "shadow"]},
            }
        ],
    }
    assert Upstream.objects.get().read_timeout == 30.0
    applied = ops.post("/config/import/", {"document": document})
    assert applied.json()["applied"] is True
    assert Upstream.objects.get().read_timeout == 5.0
    assert AuditEntry.objects.get(note="import").changes == {
        "read_timeout": [30.0, 5.0],
        "breaker.mode": ["normal", "shadow"],
    }
    document["routes"] = [{"name": "r", "path_prefix": "nope", "upstream": "ghost"}]
    refused = ops.post("/config/import/", {"document": document})
    assert refused.status_code == 400
    assert refused.json()["fields"] == {
        "document.routes[0].path_prefix": ["The path prefix must start with '/'."],
        "document.routes[0].upstream": ["no upstream named 'ghost'"],
    }


def test_the_audit_trail_is_filterable_by_object_and_actor(ops):
    make_upstream("a")
    ops.patch("/upstreams/a/", {"read_timeout": 3})
    Api(token_of(user("other", superuser=True))).patch("/upstreams/a/", {"read_timeout": 4})
    by_object = ops.get("/audit/?object_type=upstream&object_name=a").json()
    assert by_object["count"] == 2
    assert [e["changes"]["read_timeout"] for e in by_object["results"]] == [[3.0, 4.0], [30.0, 3.0]]
    mine = ops.get("/audit/?actor=token:&object_type=upstream").json()["results"]
    assert len(mine) == 2
    assert ops.get("/audit/?actor=cli:").json()["count"] == 0


def test_status_and_schema(ops):
    status = ops.get("/status/").json()
    assert set(status) == {"instance", "pid", "ready", "checks", "revision", "redis", "workers_share_state"}
    assert status["checks"]["database"] == "ok"
    schema = Client().get(f"{API}/schema/")
    assert schema.status_code == 200
    assert b"openapi: 3" in schema.content
    assert Client().get(f"{API}/docs/").status_code == 200


def test_actors_are_named_by_how_they_came_in():
    assert Actor.cli().name.startswith("cli:")
    assert Actor.cli().via == "cli"


def test_an_upstreams_targets_are_listed_added_changed_and_removed_each_audited(ops):
    make_upstream("orders", "http://orders.internal")
    assert ops.get("/upstreams/orders/targets/").json() == []
    created = ops.post("/upstreams/orders/targets/", {"address": "10.0.0.1:8080", "weight": 70})
    assert created.status_code == 201, created.json()
    assert ops.post("/upstreams/orders/targets/", {"address": "10.0.0.2:8080"}).status_code == 201
    assert ops.get("/upstreams/orders/").json()["targets"] == ["10.0.0.1:8080", "10.0.0.2:8080"]
    one = ops.get("/upstreams/orders/targets/10.0.0.2:8080/")
    assert one.json() == {"address": "10.0.0.2:8080", "weight": 100, "enabled": True}
    drained = ops.patch("/upstreams/orders/targets/10.0.0.2:8080/", {"enabled": False}, HTTP_IF_MATCH=one["ETag"])
    assert drained.status_code == 200
    stale = ops.patch("/upstreams/orders/targets/10.0.0.2:8080/", {"weight": 5}, HTTP_IF_MATCH=one["ETag"])
    assert stale.status_code == 412
    assert ops.delete("/upstreams/orders/targets/10.0.0.1:8080/").status_code == 204
    assert [t["address"] for t in ops.get("/upstreams/orders/targets/").json()] == ["10.0.0.2:8080"]

    refused = ops.post("/upstreams/orders/targets/", {"address": "10.0.0.3"})
    assert refused.status_code == 400, refused.json()
    assert "address" in refused.json()["fields"], refused.json()
    assert ops.get("/upstreams/nope/targets/").status_code == 404
    trail = AuditEntry.objects.filter(object_type="target").order_by("id")
    assert [(e.action, e.object_name, e.via) for e in trail] == [
        ("create", "orders 10.0.0.1:8080", "api"),
        ("create", "orders 10.0.0.2:8080", "api"),
        ("update", "orders 10.0.0.2:8080", "api"),
        ("delete", "orders 10.0.0.1:8080", "api"),
    ]
