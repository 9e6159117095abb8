"""Circuit breakers end to end: real gunicorn with four workers, a real Redis, an upstream that fails, hangs and
recovers."""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import pytest
import requests
from django.urls import reverse

from breakers import services
from breakers.models import BreakerTransition
from limits.models import RateLimitPolicy
from proxy.models import Upstream
from tests.support.burst import burst
from tests.support.config import TEST_ACTOR, make_route, make_upstream, serve
from tests.support.servers import wait_until


@pytest.fixture
def gw(gw4):
    return gw4


def guarded(gw, upstream, **breaker) -> Upstream:
    """An upstream behind the /api route, without retries unless asked, with the given breaker settings."""
    fields = {"max_retries": 0, "backoff_factor": 0, "backoff_jitter": 0, "breaker_failure_rate": 0}
    fields.update({k if k in ("max_retries",) else f"breaker_{k}": v for k, v in breaker.items()})
    backend = make_upstream("backend", upstream.url, **fields)
    make_route("api", "/api", backend)
    serve(gw)
    return backend


def get(gw, path: str = "/api/x", **kwargs) -> requests.Response:
    return requests.get(gw.url(path), headers={"Connection": "close"}, timeout=10, **kwargs)


def state(name: str = "backend") -> str:
    (status,) = services.live_states(names=[name])
    return status.state


def test_opens_at_the_threshold_across_workers_and_the_upstream_then_gets_nothing(gw, upstream):
    guarded(gw, upstream, consecutive_failures=5, open_seconds=30)
    upstream.behave(status=503)
    codes = []
    while len(codes) < 20:
        response = get(gw)
        codes.append((response.status_code, response.json().get("error")))
        if response.json().get("error") == "circuit_open":
            break
    assert codes[:5] == [(503, None)] * 5
    assert codes[5][1] == "circuit_open"
    assert len(upstream.received) == 5
    time.sleep(0.1)  # other workers learn of the transition by pub/sub
    for _ in range(60):
        response = get(gw)
        assert response.status_code == 503
        assert response.json()["error"] == "circuit_open"
        assert 25 <= int(response.headers["Retry-After"]) <= 30
        assert response.json()["upstream"] == "backend"
    assert len(upstream.received) == 5
    assert state() == "open"


def test_exactly_n_probes_reach_the_upstream_while_200_requests_arrive(gw, upstream):
    guarded(gw, upstream, consecutive_failures=3, open_seconds=2, half_open_probes=2)
    upstream.behave(status=503)
    for _ in range(3):
        get(gw)
    assert state() == "open"
    upstream.reset()
    # Recovered, and slow enough that the probes are still in flight while every request is decided (they are
    # released together: connections first, then every request at once), yet done before the open time would
    # issue probes again.
    upstream.behave(status=200, delay=1.0)
    time.sleep(2.1)
    codes = burst([(gw.port, "/api/x")] * 200)
    assert len(upstream.received) == 2
    assert codes.count(200) == 2
    assert codes.count(503) == 198
    time.sleep(0.1)
    assert state() == "closed"
    assert get(gw).status_code == 200


@pytest.mark.slow
def test_exactly_n_probes_reach_the_upstream_when_300_requests_arrive_at_once(gw, upstream):
    """Released together, 300 requests saturate the workers; none may read that as a Redis outage (whose
    per-worker fallback would add probes of its own)."""
    guarded(gw, upstream, consecutive_failures=3, open_seconds=2, half_open_probes=2)
    upstream.behave(status=503)
    for _ in range(3):
        get(gw)
    assert state() == "open"
    upstream.reset()
    upstream.behave(status=200, delay=1.0)
    time.sleep(2.1)
    codes = burst([(gw.port, "/api/x")] * 300)
    assert len(upstream.received) == 2
    assert (codes.count(200), codes.count(503)) == (2, 298)
    assert "Redis unavailable for circuit breakers" not in gw.log()
    time.sleep(0.1)
    assert state() == "closed"  # (reading it also moves the transitions into this test's history)


def test_a_failed_probe_reopens_and_a_late_result_from_an_earlier_cycle_changes_nothing(gw, upstream):
    guarded(gw, upstream, consecutive_failures=1, open_seconds=1)
    upstream.behave(status=503)
    get(gw)
    assert state() == "open"
    time.sleep(1.1)
    # Workers may reject from memory a few milliseconds past the open duration; then one probe goes through.
    deadline = time.monotonic() + 2
    while len(upstream.received) < 2 and time.monotonic() < deadline:
        assert get(gw).status_code == 503
        time.sleep(0.01)
    assert len(upstream.received) == 2  # the first failure, then the probe, which fails
    assert state() == "open"
    assert {get(gw).json()["error"] for _ in range(10)} == {"circuit_open"}
    assert len(upstream.received) == 2

    # A slow request is in flight when an operator resets the breaker; its failure arrives afterwards.
    services.reset_breakers(names=["backend"], actor=TEST_ACTOR)
    upstream.behave(status=503, delay=1.0)
    late = threading.Thread(target=get, args=(gw,))
    late.start()
    time.sleep(0.3)
    services.reset_breakers(names=["backend"], actor=TEST_ACTOR)
    late.join()
    assert state() == "closed"
    wait_until(lambda: BreakerTransition.objects.filter(upstream_name="backend").count() >= 5, 3, "the history")
    history = list(BreakerTransition.objects.filter(upstream_name="backend").order_by("at", "id"))
    assert [(t.from_state, t.to_state) for t in history] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "closed"),
        ("closed", "closed"),
    ]
    assert history[-1].actor == "test"


def test_recovery_closes_it(gw, upstream):
    guarded(gw, upstream, consecutive_failures=2, open_seconds=0.5)
    upstream.behave(status=502)
    get(gw), get(gw)
    assert state() == "open"
    upstream.behave()
    time.sleep(0.6)
    answers = [get(gw) for _ in range(10)]
    assert [a.status_code for a in answers] == [200] * 10
    assert state() == "closed"


def test_4xx_client_aborts_and_the_gateways_own_rejections_do_not_trip_it(gw, upstream):
    backend = guarded(gw, upstream, consecutive_failures=1, open_seconds=30)
    route = backend.routes.get()
    route.max_body_bytes = 4 * 1024 * 1024
    route.save()
    RateLimitPolicy.objects.create(name="tight", scope="route", route=route, limit=30, window_seconds=60)
    serve(gw)

    upstream.behave(status=404)
    assert {get(gw).status_code for _ in range(5)} == {404}
    upstream.behave()
    assert requests.post(gw.url("/api/big"), data=b"x" * (5 * 1024 * 1024), timeout=10).status_code == 413
    for size in (1000, 3 * 1024 * 1024):  # buffered, then streamed: the client goes away mid-body
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall(f"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
            sock.sendall(b"y" * (size // 3))
        time.sleep(0.3)
    # A chunked body larger than the retry buffer streams; the client stops after 2 MiB and goes away.
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(b"POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(32):
            sock.sendall(b"10000\r\n" + b"z" * 65536 + b"\r\n")
    time.sleep(0.5)
    while get(gw).status_code != 429:
        pass
    assert state() == "closed"
    (status,) = services.live_states(names=["backend"])
    assert status.consecutive_failures == 0


def test_every_attempt_counts_retries_included_and_an_opening_stops_the_retries(gw, upstream):
    guarded(gw, upstream, consecutive_failures=3, open_seconds=30, max_retries=5)
    upstream.behave(status=503)
    response = get(gw)
    assert response.status_code == 503
    assert len(upstream.received) == 3  # three attempts, then the breaker opened and the retries stopped
    assert state() == "open"


def test_a_failure_rate_over_the_window_opens_it(gw, upstream):
    guarded(gw, upstream, consecutive_failures=0, failure_rate=50, minimum_calls=10, window_seconds=10)
    upstream.queue(503, 200, 503, 503, 200, 503, 200, 200, 200)
    assert [get(gw).status_code for _ in range(9)] == [503, 200, 503, 503, 200, 503, 200, 200, 200]
    assert state() == "closed"  # 4 failures in 9 calls: fewer than the minimum
    upstream.queue(503, 503)
    get(gw), get(gw)  # 6 failures in 11 calls: 54 %
    deadline = time.monotonic() + 5
    while state() != "open" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state() == "open"
    wait_until(lambda: BreakerTransition.objects.filter(upstream_name="backend").exists(), 3, "the history row")
    (transition,) = BreakerTransition.objects.filter(upstream_name="backend")
    # Successes reach the shared window once a second, so the rate is judged on what had arrived.
    rate, calls = re.match(r"failure rate (\d+)% of (\d+) calls", transition.reason).groups()
    assert int(rate) >= 50
    assert 10 <= int(calls) <= 11


def test_slow_calls_count_as_failures(gw, upstream):
    guarded(gw, upstream, consecutive_failures=2, slow_call_ms=100)
    upstream.behave(status=200, delay=0.3)
    assert [get(gw).status_code for _ in range(2)] == [200, 200]
    assert state() == "open"
    assert get(gw).json()["error"] == "circuit_open"


def test_commands_and_admin_actions_change_the_live_state(gw, upstream, admin_client):
    guarded(gw, upstream, consecutive_failures=1, open_seconds=300)
    upstream.behave(status=503)
    get(gw)
    upstream.behave()
    listed = json.loads(gw.manage("breakers", "--json").stdout)
    assert [(b["upstream"], b["state"]) for b in listed] == [("backend", "open")]
    assert listed[0]["last_transition"]["reason"].startswith("1 consecutive failures")

    result = gw.manage("reset_breakers", "backend")
    assert result.returncode == 0, result.stderr
    time.sleep(0.1)
    assert get(gw).status_code == 200
    unknown = gw.manage("reset_breakers", "nope")
    assert unknown.returncode != 0
    assert "no upstream named 'nope'" in unknown.stderr

    act = reverse("admin:breakers_breaker_act")
    admin_client.post(act, {"confirm": "yes", "upstream": "backend", "action": "forced_open"})
    serve(gw)
    assert {get(gw).json().get("error") for _ in range(8)} == {"circuit_open"}
    forced = get(gw)
    assert forced.json()["reason"] == "forced_open"
    assert forced.json()["message"].startswith("An operator has taken this upstream out of service")
    assert "Retry-After" not in forced.headers  # no wait would help: an operator decides when it ends
    page = admin_client.get(reverse("admin:breakers_breaker_changelist")).content.decode()
    assert "forced open by an operator" in page
    admin_client.post(act, {"confirm": "yes", "upstream": "backend", "action": "normal"})
    serve(gw)
    assert {get(gw).status_code for _ in range(8)} == {200}
    modes = BreakerTransition.objects.filter(kind="mode").order_by("at", "id")
    assert [(m.from_state, m.to_state, m.actor) for m in modes] == [
        ("normal", "forced_open", "user:admin"),
        ("forced_open", "normal", "user:admin"),
    ]


def test_disabled_passes_but_counts_and_shadow_records_but_never_rejects(gw, upstream):
    backend = guarded(gw, upstream, consecutive_failures=2, open_seconds=30, mode="disabled")
    upstream.behave(status=503)
    assert {get(gw).status_code for _ in range(6)} == {503}
    assert len(upstream.received) == 6
    (status,) = services.live_states(names=["backend"])
    assert status.state == "closed"
    assert status.consecutive_failures == 6

    services.set_mode(names=["backend"], mode="shadow", actor=TEST_ACTOR)
    serve(gw)
    services.reset_breakers(names=["backend"], actor=TEST_ACTOR)
    assert {get(gw).status_code for _ in range(6)} == {503}
    assert len(upstream.received) == 12
    assert state() == "open"
    assert backend.name == "backend"


def test_a_probe_the_gateway_answers_itself_gives_its_slot_back(gw, upstream):
    backend = guarded(gw, upstream, consecutive_failures=1, open_seconds=0.5, half_open_probes=1)
    route = backend.routes.get()
    route.max_body_bytes = 1000
    route.save()
    serve(gw)
    upstream.behave(status=503)
    get(gw)
    assert state() == "open"
    upstream.behave()
    time.sleep(0.7)
    # The first request after the open time takes the probe, but the gateway answers it (413) before the
    # upstream is contacted; the slot comes back and the next request probes.
    too_big = requests.post(gw.url("/api/x"), data=b"x" * 2000, headers={"Connection": "close"}, timeout=10)
    assert too_big.status_code == 413
    assert get(gw).status_code == 200
    assert state() == "closed"
