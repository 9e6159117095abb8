"""The route tester, in-process against a real upstream and the suite's Redis: the trace of each decision,
the dry run that counts nothing, what is not sent, the audit trail, and the admin page and API endpoint."""

from __future__ import annotations

import json
import re

import pytest
from django.urls import reverse

from gateway_project.models import AuditEntry
from limits import limiter
from limits.compiled import compile_policy
from proxy import tester
from tests.support.config import TEST_ACTOR, make_policy, make_route, make_upstream, set_breaker_mode

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_prefix", "in_process")]


@pytest.fixture
def orders(upstream, reload_config):
    backend = make_upstream("orders-api", base_url=upstream.url + "/v1")
    make_route("orders", "/orders", backend, strip_prefix=True)
    make_route("other", "/other", backend)
    policy = make_policy("per-ip", limit=2, window_seconds=60)
    reload_config()
    return policy


def run(**fields):
    return tester.run(
        **{
            "route_name": "orders",
            "method": "GET",
            "path": "/orders/42?x=1",
            "host": "testserver",
            "client_ip": "198.51.100.9",
            "dry_run": True,
            "actor": TEST_ACTOR,
            **fields,
        }
    )


def used(policy, client_ip="198.51.100.9") -> int:
    outcome = limiter.check(
        (compile_policy(policy),), client_ip=client_ip, consumer=None, route_id=1, environ={}, dry_run=True
    )
    return 2 - outcome.results[0].remaining - 1


def test_a_dry_run_traces_every_step_and_counts_nothing(orders, upstream):
    trace = run(headers={"X-Trace-Me": "yes"})
    assert trace.matched == "orders"
    assert "path /orders/42 is under prefix /orders" in trace.why
    assert trace.ratelimit == [
        {
            "policy": "per-ip",
            "limit": "2 per 60 s",
            "decision": "allowed",
            "remaining": 1,
            "retry_after": 0,
            "shadow": False,
        }
    ]
    assert trace.ratelimit_note == "dry run: checked, nothing counted"
    assert trace.breaker == "closed"
    assert trace.upstream_url == f"http://127.0.0.1:{upstream.port}/v1/42?x=1"
    assert [a["outcome"] for a in trace.attempts] == ["status 200"]
    assert (trace.status, trace.answered_by) == (200, "upstream")
    (received,) = upstream.received
    assert received.path == "/v1/42?x=1"
    assert received.header("X-Trace-Me") == "yes"
    assert received.header("Cookie") is None
    assert used(orders) == 0
    assert not AuditEntry.objects.filter(action="test").exists()


def test_a_real_run_counts_and_is_audited_and_a_429_is_the_gateways(orders):
    assert run(dry_run=False).status == 200
    assert run(dry_run=False).status == 200
    trace = run(dry_run=False)
    assert (trace.status, trace.answered_by) == (429, "gateway")
    assert trace.ratelimit[0]["decision"] == "rejected"
    assert trace.upstream_url is None and trace.attempts == []
    assert trace.breaker.startswith("not reached")
    assert json.loads(trace.body)["error"] == "rate_limited"
    notes = list(AuditEntry.objects.filter(action="test").order_by("id").values_list("object_name", "note"))
    assert notes[-1] == ("orders", "GET /orders/42?x=1: 429 from the gateway")
    assert len(notes) == 3


def test_a_request_for_another_route_or_none_is_not_sent(orders, upstream):
    trace = run(path="/other/1")
    assert (trace.matched, trace.status) == ("other", None)
    assert "goes to route other, not orders: not sent" in trace.why
    assert run(path="/nothing").why.startswith("No route matches")
    assert upstream.received == []


def test_a_forced_open_breaker_is_in_the_trace(orders, reload_config):
    set_breaker_mode("orders-api", "forced_open")
    reload_config()
    trace = run()
    assert (trace.status, trace.answered_by, trace.breaker) == (503, "gateway", "forced_open")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"method": "BREW"}, "method must be one of"),
        ({"path": "orders"}, "must start with '/'"),
        ({"client_ip": "nope"}, "is not an IP address"),
        ({"headers": {"Bad Name": "x"}}, "is not a header name"),
        ({"headers": {"X": "a\r\nInjected: 1"}}, "control character"),
    ],
)
def test_what_cannot_be_sent_is_refused(orders, fields, message):
    with pytest.raises(tester.TestRequestError, match=message):
        run(**fields)


def test_the_route_page_shows_what_applies_and_the_tester_runs_from_it(orders, admin_client, upstream):
    route = orders.__class__._meta.apps.get_model("proxy", "Route").objects.get(name="orders")
    page = admin_client.get(reverse("admin:proxy_route_change", args=[route.pk])).content.decode()
    assert "Rate-limit policies that apply" in page and "per-ip: 2 per 60 s per" in page
    assert "Circuit breaker of orders-api" in page and "closed (mode normal)" in page
    url = reverse("admin:proxy_route_test", args=[route.pk])
    assert f'href="{url}"' in page
    form = admin_client.get(url).content.decode()
    assert 'name="dry_run" id="id_dry_run" checked' in form and 'value="/orders/"' in form
    result = admin_client.post(
        url,
        {
            "method": "GET",
            "path": "/orders/7",
            "host": "testserver",
            "headers": "X-A: 1",
            "client_ip": "127.0.0.1",
            "dry_run": "on",
        },
    )
    text = result.content.decode()
    assert '<strong id="trace-status">200 OK</strong>' in text
    assert re.search(r"<li>status 200 in [0-9.]+ ms</li>", text)
    assert upstream.received[-1].header("Cookie") is None  # the admin's session stays in the admin


def test_the_api_endpoint(orders, admin_client, upstream):
    response = admin_client.post(
        "/_gateway/api/v1/routes/orders/test/",
        json.dumps({"path": "/orders/9", "headers": {"X-B": "2"}, "dry_run": False}),
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    trace = response.json()
    assert (trace["status"], trace["matched"], trace["ratelimit"][0]["remaining"]) == (200, "orders", 1)
    assert upstream.received[-1].header("X-B") == "2"
    refused = admin_client.post(
        "/_gateway/api/v1/routes/orders/test/", json.dumps({"path": "nope"}), content_type="application/json"
    )
    assert refused.status_code == 400


def test_a_path_that_normalizes_to_another_route_is_not_sent(orders, upstream, reload_config):
    make_route("root", "/", make_upstream("root-api", base_url=upstream.url))
    reload_config()
    trace = run(route_name="root", path="/%EF%BD%8Frders/1")  # a fullwidth o: NFKC makes it /orders/1
    assert (trace.matched, trace.status) == (None, None)
    assert "normalizes to another route's path: a client would get 400" in trace.why
    assert upstream.received == []
    with pytest.raises(tester.TestRequestError, match="encoded '/'"):
        run(path="/orders/..%2Fother")
