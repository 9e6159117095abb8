"""An operator's day through the management API alone, against a real gunicorn gateway, and the trail it
leaves; also who may reach the API at all."""

from __future__ import annotations

import pytest
import requests
from django.contrib.auth import get_user_model

from gateway_project import tokens
from tests.support.config import TEST_ACTOR, serve
from tests.support.servers import wait_until

OPERATOR_NETWORK = "10.1.2.3"  # the operator's address, as the trusted proxy in front reports it


@pytest.fixture(scope="module")
def gateway_options() -> dict:
    """Trusts 127.0.0.1 as a proxy, and admits the admin and the API from 10.0.0.0/8 only."""
    return {"env": {"GATEWAY_TRUSTED_PROXIES": "127.0.0.1", "GATEWAY_ADMIN_ALLOWED_NETWORKS": "10.0.0.0/8"}}


class Operator:
    """A script holding a bearer token, calling from the operator network."""

    def __init__(self, gateway, token: str) -> None:
        self.gateway = gateway
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {token}", "X-Forwarded-For": OPERATOR_NETWORK})

    def __call__(self, method: str, path: str, expect: int = 200, **kwargs):
        response = self.session.request(method, self.gateway.url("/_gateway/api/v1" + path), timeout=10, **kwargs)
        assert response.status_code == expect, (method, path, response.status_code, response.text)
        return response.json() if response.content else None


def test_an_operators_day_through_the_api_leaves_a_trail_of_every_step(live, upstream):
    ops = get_user_model().objects.create_superuser("ops", "ops@example.com", "unused password 1")
    token, plaintext = tokens.create_token(user=ops, label="day", actor=TEST_ACTOR)
    api = Operator(live, plaintext)

    # Configure: an upstream, a route that needs a key, a consumer with a key and its own limit.
    api("POST", "/upstreams/", 201, json={"name": "orders", "base_url": upstream.url + "/v1", "max_retries": 0})
    api(
        "POST",
        "/routes/",
        201,
        json={"name": "orders", "path_prefix": "/orders", "upstream": "orders", "require_api_key": True},
    )
    api("POST", "/consumers/", 201, json={"name": "acme"})
    key = api("POST", "/api-keys/", 201, json={"consumer": "acme", "label": "acme prod"})
    policy = {
        "name": "acme-per-minute",
        "scope": "consumer",
        "consumer": "acme",
        "key_by": "consumer",
        "limit": 1000,
        "window_seconds": 60,
    }
    api("POST", "/rate-limit-policies/", 201, json=policy)

    # Call the route, as acme would, once every worker has the new configuration.
    def call():
        return requests.get(live.url("/orders/42"), headers={"X-API-Key": key["key"]}, timeout=10)

    serve(live)  # every worker has the new route, consumer and key (/readyz names the revision it serves)
    assert call().status_code == 200
    assert upstream.received[-1].path == "/v1/42"
    assert upstream.received[-1].header("X-Consumer-Name") == "acme"
    assert requests.get(live.url("/orders/42"), timeout=10).status_code == 401

    # The upstream fails: five failures in a row open its breaker; the operator resets it once it is back.
    upstream.behave(status=503)
    for _ in range(5):
        assert call().status_code == 503
    assert call().json()["error"] == "circuit_open"
    assert api("GET", "/breakers/orders/")["state"] == "open"
    upstream.behave()
    reset = api("POST", "/breakers/orders/reset/")
    assert (reset["state"], reset["held_open"]) == ("closed", False)
    assert wait_until(lambda: call().status_code == 200, 5, "the reset breaker on every worker")

    # Export, change one value, look at the diff, then apply it.
    document = api("GET", "/config/")
    document["upstreams"][0]["read_timeout"] = 7.5
    diff = api("POST", "/config/import/", json={"document": document, "dry_run": True})
    change = {"action": "update", "object_type": "upstream", "name": "orders", "changes": {"read_timeout": [30.0, 7.5]}}
    assert diff == {"applied": False, "changes": [change]}
    assert api("POST", "/config/import/", json={"document": document}) == {"applied": True, "changes": [change]}
    assert api("GET", "/upstreams/orders/")["read_timeout"] == 7.5

    # Every step, in order, by this token, from the operator's address.
    trail = api("GET", f"/audit/?actor=token:{token.prefix}&limit=50")["results"]
    assert [(e["action"], e["object_type"], e["object_name"]) for e in reversed(trail)] == [
        ("create", "upstream", "orders"),
        ("create", "route", "orders"),
        ("create", "consumer", "acme"),
        ("create", "api_key", key["prefix"]),
        ("create", "rate_limit", "acme-per-minute"),
        ("reset", "breaker", "orders"),
        ("update", "upstream", "orders"),
    ]
    assert {(e["actor"], e["via"], e["address"]) for e in trail} == {
        (f"token:{token.prefix} (ops)", "api", OPERATOR_NETWORK)
    }
    assert trail[0]["changes"] == {"read_timeout": [30.0, 7.5]}
    assert trail[0]["note"] == "import"
    assert trail[1]["changes"] == {"state": ["open", "closed"]}
    by_object = api("GET", "/audit/?object_type=upstream&object_name=orders")["results"]
    assert [e["action"] for e in by_object] == ["update", "create"]


def test_only_the_admin_networks_reach_the_api(live):
    for address in ("203.0.113.9", "127.0.0.1"):
        response = requests.get(live.url("/_gateway/api/v1/status/"), headers={"X-Forwarded-For": address}, timeout=10)
        assert response.status_code == 403
        assert response.json()["error"] == "forbidden"
    inside = requests.get(live.url("/_gateway/api/v1/status/"), headers={"X-Forwarded-For": "10.9.9.9"}, timeout=10)
    assert inside.status_code == 401  # reachable; now it needs credentials
