"""Several targets behind one upstream, end to end on a real gunicorn (2 workers) with three real targets:
the split follows the weights, a killed target costs at most the failures before its ejection and comes back
after recovery, a retry lands on another target, the retry budget caps retries when every target fails, and a
POST is retried only with an Idempotency-Key."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from proxy.models import Target
from tests.support.config import make_route, make_upstream, serve
from tests.support.metrics import scrape, total
from tests.support.servers import wait_until
from tests.support.target import TargetProcess
from tests.support.upstream import Upstream

WORKERS = 2  # the module's `gateway` fixture


@pytest.fixture
def three():
    servers = [Upstream().start() for _ in range(3)]
    yield servers
    for server in servers:
        server.stop()


def with_targets(name: str, addresses_weights, **fields):
    """An upstream whose base URL names the service (a host nobody resolves) and whose targets are given."""
    upstream = make_upstream(name, "http://service.internal/api", **fields)
    for address, weight in addresses_weights:
        Target.objects.create(upstream=upstream, address=address, weight=weight)
    return upstream


def address(server) -> str:
    return f"127.0.0.1:{server.port}"


def hammer(url: str, count: int, *, threads: int = 8, method: str = "GET", **kwargs) -> list[requests.Response]:
    local = threading.local()

    def one(_):
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        return session.request(method, url, timeout=10, **kwargs)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


@pytest.mark.slow
def test_the_split_follows_the_weights_over_3000_requests(live, three):
    weights = (50, 30, 20)
    upstream = with_targets("weighted", [(address(s), w) for s, w in zip(three, weights, strict=True)])
    make_route("weighted", "/weighted", upstream)
    serve(live)
    answers = hammer(live.url("/weighted/x"), 3000)
    assert Counter(a.status_code for a in answers) == {200: 3000}
    shares = [len(s.received) / 3000 for s in three]
    # Each worker runs its own smooth round robin, exact over every cycle of 100: the total is off by at most
    # a cycle's remainder per worker.
    assert shares == pytest.approx([0.5, 0.3, 0.2], abs=0.02)
    assert three[0].received[0].header("Host") == "service.internal"
    assert three[0].received[0].path.startswith("/api/x")
    samples = scrape(live)
    for server in three:
        counted = total(samples, "gateway_upstream_attempts_total", upstream="weighted", target=address(server))
        assert counted == len(server.received)


def kill_under_load(live, targets, route: str, *, seconds: float = 7.0) -> tuple[list, dict]:
    """8 clients call the route for `seconds`; the second target is killed after 1.5 s and started again at
    3.5 s. Returns every answer (status, served by, time) and when the kill and restart happened."""
    victim = targets[1]
    answers: list[tuple[int, str | None, float]] = []
    started = time.monotonic()
    events = {}

    def client():
        session = requests.Session()
        while time.monotonic() - started < seconds:
            response = session.get(live.url(f"/{route}/x"), timeout=10)
            answers.append((response.status_code, response.headers.get("X-Served-By"), time.monotonic() - started))

    workers = [threading.Thread(target=client) for _ in range(8)]
    for worker in workers:
        worker.start()
    time.sleep(1.5)
    victim.kill()
    events["killed"] = time.monotonic() - started
    time.sleep(2.0)
    victim.start()
    events["restarted"] = time.monotonic() - started
    for worker in workers:
        worker.join()
    return answers, events


@pytest.fixture
def processes():
    targets = [TargetProcess().start() for _ in range(3)]
    yield targets
    for target in targets:
        target.kill()


@pytest.mark.slow
@pytest.mark.parametrize("retries", [0, 2])
def test_killing_a_target_under_load_costs_at_most_the_failures_before_its_ejection(live, processes, retries):
    consecutive = 3
    upstream = with_targets(
        f"crashy{retries}",
        [(t.address, 1) for t in processes],
        max_retries=retries,
        eject_consecutive_failures=consecutive,
        eject_seconds=1.0,
        eject_max_percent=34,
    )
    make_route(f"crashy{retries}", f"/crashy{retries}", upstream)
    serve(live)
    answers, events = kill_under_load(live, processes, f"crashy{retries}")
    failed = [a for a in answers if a[0] != 200]
    victim = str(processes[1].port)
    print(f"retries={retries}: {len(answers)} requests, {len(failed)} failed; events {events}")
    if retries:
        # Each failed attempt (a reset or a refused connection) was retried on another target: no client saw one.
        assert failed == []
    else:
        # Each worker sends the dead target at most `consecutive` attempts before ejecting it, plus those that
        # were already under way when it died (at most the 8 clients' requests).
        assert len(failed) <= WORKERS * consecutive + 8
        assert all(a[2] >= events["killed"] - 0.1 for a in failed)
    served_after = [a for a in answers if a[1] == victim and a[2] > events["restarted"]]
    assert served_after, "the target got no traffic after it came back"
    ejections = total(scrape(live), "gateway_target_ejections_total", upstream=f"crashy{retries}")
    assert ejections >= 1


def test_a_retry_lands_on_another_target(live, three):
    failing, *healthy = three
    failing.behave(status=503)
    # No ejection and an ample budget: every request the failing target answers is retried once.
    upstream = with_targets(
        "retrying",
        [(address(s), 1) for s in three],
        max_retries=1,
        eject_consecutive_failures=0,
        retry_budget_percent=100,
    )
    make_route("retrying", "/retrying", upstream)
    serve(live)
    answers = hammer(live.url("/retrying/x"), 60, threads=4)
    # A retry to the failing target again would have been relayed as its 503: every one went elsewhere.
    assert Counter(a.status_code for a in answers) == {200: 60}
    assert len(failing.received) >= 10
    assert sum(len(s.received) for s in healthy) == 60


def test_the_retry_budget_caps_retries_while_every_target_fails(live, three):
    for server in three:
        server.behave(status=503)
    # The breaker would soon stop everything (it counts the upstream as a whole): disabled here, it only counts.
    upstream = with_targets(
        "outage",
        [(address(s), 1) for s in three],
        max_retries=2,
        backoff_factor=0,
        eject_consecutive_failures=0,
        breaker_mode="disabled",
    )
    make_route("outage", "/outage", upstream)
    serve(live)
    requests_sent = 200
    started = time.monotonic()
    answers = hammer(live.url("/outage/x"), requests_sent, threads=4)
    windows = int((time.monotonic() - started) // 10) + 2
    assert Counter(a.status_code for a in answers) == {503: requests_sent}
    attempts = sum(len(s.received) for s in three)
    retries = attempts - requests_sent
    print(f"outage: {requests_sent} requests, {retries} retries in {time.monotonic() - started:.1f} s")
    # Without a budget: 400 retries. With 20 % / 3: 20 % of the requests, plus 3 per worker and 10 s window.
    assert retries <= requests_sent * 0.2 + 3 * WORKERS * windows
    assert retries >= requests_sent * 0.15
    assert total(scrape(live), "gateway_retry_budget_exhausted_total", upstream="outage") >= requests_sent * 0.5


def test_a_post_with_an_idempotency_key_is_retried_and_one_without_is_sent_once(live, three):
    for server in three:
        server.behave(status=503)
    upstream = with_targets(
        "orders", [(address(s), 1) for s in three], max_retries=2, eject_consecutive_failures=0, breaker_mode="disabled"
    )
    make_route("orders", "/orders", upstream, retry_idempotency_key=True)
    make_route("no-keys", "/no-keys", upstream)
    serve(live)

    keyed = requests.post(live.url("/orders/x"), data=b"order", headers={"Idempotency-Key": "k-1"}, timeout=10)
    assert keyed.status_code == 503
    # Three attempts, each on a target of its own.
    assert [len(s.received) for s in three] == [1, 1, 1]
    assert all(s.received[0].header("Idempotency-Key") == "k-1" for s in three)

    for server in three:
        server.reset()
        server.behave(status=503)
    plain = requests.post(live.url("/orders/x"), data=b"order", timeout=10)
    assert plain.status_code == 503
    assert sum(len(s.received) for s in three) == 1

    # A route that does not opt in never retries a POST, key or not.
    requests.post(live.url("/no-keys/x"), data=b"order", headers={"Idempotency-Key": "k-2"}, timeout=10)
    assert sum(len(s.received) for s in three) == 2


def test_the_deadline_goes_upstream_and_a_spent_one_is_not_sent(live, three):
    upstream = with_targets("timed", [(address(three[0]), 1)], deadline=5.0)
    make_route("timed", "/timed", upstream, deadline_header="X-Deadline-Ms")
    serve(live)
    requests.get(live.url("/timed/x"), timeout=10)
    assert 4500 < int(three[0].received[-1].header("X-Deadline-Ms")) <= 5000
    requests.get(live.url("/timed/x"), headers={"X-Deadline-Ms": "1200"}, timeout=10)
    assert 1000 < int(three[0].received[-1].header("X-Deadline-Ms")) <= 1200
    spent = requests.get(live.url("/timed/x"), headers={"X-Deadline-Ms": "0"}, timeout=10)
    assert spent.status_code == 504
    assert len(three[0].received) == 2
    # A client cannot lengthen the deadline past the upstream's.
    requests.get(live.url("/timed/x"), headers={"X-Deadline-Ms": "99999999"}, timeout=10)
    assert int(three[0].received[-1].header("X-Deadline-Ms")) <= 5000


def test_without_a_run_dir_set_the_instance_makes_its_own_and_probes(live, upstream):
    """gunicorn.conf.py makes a run directory when GATEWAY_RUN_DIR is unset; the workers must see it (they
    inherit the settings the master imported), or no worker ever starts the health checks."""
    checked = make_upstream(
        "self-made-run-dir",
        "http://service.internal",
        health_check_path="/healthz",
        health_check_interval=0.2,
        max_retries=0,
    )
    Target.objects.create(upstream=checked, address=f"127.0.0.1:{upstream.port}")
    make_route("self-made-run-dir", "/self", checked)
    serve(live)
    assert "GATEWAY_RUN_DIR" not in live.env
    wait_until(
        lambda: len(upstream.requests_to("/healthz")) >= 2, 10, "probes from a gateway started without GATEWAY_RUN_DIR"
    )
