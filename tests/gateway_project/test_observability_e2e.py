"""Metrics, access logs and Server-Timing on a real multi-worker gunicorn."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from limits.models import RateLimitPolicy
from tests.support.config import make_route, make_upstream, serve
from tests.support.metrics import client_driven, scrape, total
from tests.support.servers import wait_until


@pytest.fixture(scope="module")
def gateway_options() -> dict:
    return {
        "workers": 4,
        "env": {"GATEWAY_TRUSTED_PROXIES": "127.0.0.1", "GATEWAY_METRICS_TOKEN": "a-long-metrics-token-0123"},
    }


@pytest.fixture
def gw(live, upstream):
    make_route("api", "/api", make_upstream("backend", upstream.url, max_retries=1, backoff_factor=0))
    serve(live)
    return live


def fresh(gateway, path: str, **kwargs) -> requests.Response:
    return requests.get(
        gateway.url(path), headers={"Connection": "close", **kwargs.pop("headers", {})}, timeout=10, **kwargs
    )


def test_counters_add_up_across_workers_including_a_dead_one(gw, upstream):
    def grew(since: dict, **labels) -> float:
        """What a counter grew by since `since`, once the workers have counted every request answered: a worker
        counts a request when it closes the response, a moment after the client has read its last byte."""
        now = scrape(gw)
        return total(now, **labels) - total(since, **labels)

    before = scrape(gw)
    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(lambda i: fresh(gw, f"/api/status/{200 if i % 4 else 404}").status_code, range(200)))
    assert codes.count(404) == 50
    wait_until(lambda: grew(before, name="gateway_request_duration_seconds_count", route="api") >= 200, 5, "counts")
    after = scrape(gw)
    ok = total(after, "gateway_requests_total", route="api", status="200") - total(
        before, "gateway_requests_total", route="api", status="200"
    )
    missing = total(after, "gateway_requests_total", route="api", status="404") - total(
        before, "gateway_requests_total", route="api", status="404"
    )
    assert (ok, missing) == (150, 50)
    assert (
        total(after, "gateway_request_duration_seconds_count", route="api")
        - total(before, "gateway_request_duration_seconds_count", route="api")
        == 200
    )

    # A worker dies; what it counted still counts, and its replacement adds to it.
    victim = gw.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(gw.worker_pids()) == 4 and victim not in gw.worker_pids(), 20, "a new worker")
    for _ in range(40):
        fresh(gw, "/api/x")
    wait_until(lambda: grew(after, name="gateway_requests_total", route="api") >= 40, 5, "counts")
    final = scrape(gw)
    assert (
        total(final, "gateway_requests_total", route="api", status="200")
        - total(after, "gateway_requests_total", route="api", status="200")
        == 40
    )
    assert (
        total(final, "gateway_requests_total", route="api") == total(after, "gateway_requests_total", route="api") + 40
    )


@pytest.mark.slow
def test_10000_random_paths_do_not_add_series(gw):
    for _ in range(50):
        fresh(gw, f"/{uuid.uuid4().hex}")
    scrape(gw)  # a scrape is a request too: its own series exist from the first one on
    before = scrape(gw)
    with ThreadPoolExecutor(max_workers=32) as pool:
        codes = list(
            pool.map(lambda _: fresh(gw, f"/{uuid.uuid4().hex}/{uuid.uuid4().hex}?q=1").status_code, range(10_000))
        )
    assert set(codes) == {404}
    after = scrape(gw)
    assert client_driven(after) == client_driven(before)
    assert (
        total(after, "gateway_requests_total", route="(none)") - total(before, "gateway_requests_total", route="(none)")
        == 10_000
    )


def test_metrics_are_not_public(gw):
    assert requests.get(gw.url("/metrics"), timeout=10).status_code == 200  # loopback
    remote = {"X-Forwarded-For": "203.0.113.9"}  # this gateway trusts 127.0.0.1 as a proxy in front of it
    refused = requests.get(gw.url("/metrics"), headers=remote, timeout=10)
    assert refused.status_code == 403
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
    wrong = {**remote, "Authorization": "Bearer nope"}
    assert requests.get(gw.url("/metrics"), headers=wrong, timeout=10).status_code == 403
    right = {**remote, "Authorization": "Bearer a-long-metrics-token-0123"}
    assert requests.get(gw.url("/metrics"), headers=right, timeout=10).status_code == 200


def test_rate_limit_retry_and_breaker_metrics(gw, upstream):
    route = make_route(
        "tight",
        "/tight",
        make_upstream(
            "flaky",
            upstream.url,
            max_retries=1,
            backoff_factor=0,
            breaker_consecutive_failures=4,
            breaker_failure_rate=0,
        ),
    )
    RateLimitPolicy.objects.create(name="tight-policy", scope="route", route=route, limit=3, window_seconds=60)
    serve(gw)
    codes = [fresh(gw, "/tight/x").status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    upstream.behave(status=503)
    RateLimitPolicy.objects.all().delete()
    serve(gw)
    for _ in range(4):
        fresh(gw, "/tight/x")
    time.sleep(0.3)
    samples = scrape(gw)
    assert total(samples, "gateway_ratelimit_decisions_total", policy="tight-policy", decision="allowed") == 3
    assert total(samples, "gateway_ratelimit_decisions_total", policy="tight-policy", decision="rejected") == 2
    assert total(samples, "gateway_upstream_retries_total", upstream="flaky", reason="status_503") >= 1
    assert (
        total(samples, "gateway_breaker_transitions_total", upstream="flaky", from_state="closed", to_state="open") == 1
    )
    assert total(samples, "gateway_breaker_state", upstream="flaky", state="open") == 1
    assert total(samples, "gateway_breaker_rejections_total", upstream="flaky") >= 1


def access_lines(gateway, request_id: str) -> list[dict]:
    lines = []
    for line in gateway.log().splitlines():
        if request_id in line:
            lines.append(json.loads(line))
    return lines


def test_one_json_access_line_per_request_with_every_field(gw, upstream):
    response = fresh(gw, "/api/x?secret=1", headers={"X-Request-ID": "log-test-1"}, data=b"12345")
    assert response.status_code == 200
    time.sleep(0.2)
    (line,) = [entry for entry in access_lines(gw, "log-test-1") if entry["event"] == "request"]
    for field in (
        "time",
        "level",
        "request_id",
        "method",
        "route",
        "upstream",
        "path",
        "status",
        "duration_ms",
        "upstream_ms",
        "retries",
        "breaker",
        "client_ip",
        "bytes_in",
        "bytes_out",
    ):
        assert field in line, field
    assert line["path"] == "/api/x"  # no query string by default
    assert line["route"] == "api"
    assert line["upstream"] == "backend"
    assert line["status"] == 200
    assert line["bytes_in"] == 5
    assert line["bytes_out"] == len(response.content)
    assert line["breaker"] == "closed"
    assert line["logger"] == "gateway.access"


def test_every_line_logged_during_a_request_carries_its_request_id(gw):
    fresh(gw, "/api/%2e%2e/x", headers={"X-Request-ID": "log-test-2"})
    fresh(gw, "/admin/does-not-exist/", headers={"X-Request-ID": "log-test-3"})
    time.sleep(0.2)
    lines = [json.loads(line) for line in gw.log().splitlines() if line.startswith("{")]
    assert lines, "the log is JSON lines"
    assert all("event" in line and "level" in line and "time" in line for line in lines)
    gunicorn_lines = [line for line in lines if line.get("logger") == "gunicorn.error"]
    assert gunicorn_lines, "gunicorn logs in the same format"
    assert access_lines(gw, "log-test-2")
    assert access_lines(gw, "log-test-3")


def test_server_timing_names_the_phases(gw):
    response = fresh(gw, "/api/x")
    phases = dict(item.split(";dur=") for item in response.headers["Server-Timing"].split(", "))
    assert set(phases) == {"breaker", "upstream", "total"}
    assert all(float(value) >= 0 for value in phases.values())
    assert float(phases["total"]) >= float(phases["upstream"])
    assert "Server-Timing" in fresh(gw, "/nowhere").headers
