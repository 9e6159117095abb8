"""The admin's status page: the figures taken from a metrics registry (rates, error shares split between the
upstream's 5xx and the gateway's own, latency quantiles, 429s by policy), the samples an instance's workers
share, the page itself (staff only, the source named, "View site" gone) and a Prometheus that does not answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.urls import reverse
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess

from gateway_project import metrics, status
from gateway_project.conf import read
from limits.models import RateLimitPolicy
from tests.support.config import make_route, make_upstream
from tests.support.servers import free_port


class Registry:
    """The gateway's metric families, in a registry of the test's own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("gateway_requests", "", ["route", "method", "status"], registry=self.registry)
        self.errors = Counter("gateway_errors", "", ["route", "status", "error"], registry=self.registry)
        self.duration = Histogram(
            "gateway_request_duration_seconds", "", ["route"], buckets=status.BUCKETS[:-1], registry=self.registry
        )
        self.decisions = Counter("gateway_ratelimit_decisions", "", ["policy", "decision"], registry=self.registry)

    def serve(self, route: str, code: int, seconds: float, times: int = 1, own: str | None = None) -> None:
        for _ in range(times):
            self.requests.labels(route, "GET", str(code)).inc()
            self.duration.labels(route).observe(seconds)
            if own:
                self.errors.labels(route, str(code), own).inc()

    def sample(self, at: float) -> dict:
        return status.take_sample(self.registry, now=at)


def test_rates_shares_latency_and_429s_over_the_window():
    metrics = Registry()
    metrics.serve("orders", 200, 0.004, times=10)
    metrics.serve("(gateway)", 200, 0.001, times=50)  # the admin's own traffic is not a route
    first = metrics.sample(1000.0)
    metrics.serve("orders", 200, 0.004, times=60)  # p50 in the 2.5-5 ms bucket
    metrics.serve("orders", 200, 0.2, times=20)  # p95 in the 100-250 ms bucket
    metrics.serve("orders", 404, 0.004, times=4)
    metrics.serve("orders", 429, 0.001, times=6, own="rate_limited")
    metrics.decisions.labels("per-ip", "rejected").inc(6)
    metrics.decisions.labels("per-ip", "allowed").inc(94)
    metrics.serve("orders", 503, 0.01, times=6)  # the upstream's own 503s
    metrics.serve("orders", 503, 0.001, times=4, own="circuit_open")  # the gateway's
    second = metrics.sample(1010.0)

    figures = status.summarize([first, second])
    (orders,) = figures.routes
    assert orders.route == "orders"
    assert orders.requests == 100
    assert orders.rps == pytest.approx(10.0)
    assert orders.share_4xx == pytest.approx(0.10)
    assert orders.share_upstream_5xx == pytest.approx(0.06)
    assert orders.share_own_5xx == pytest.approx(0.04)
    assert orders.rejected_429 == 6
    assert 2.5 < orders.p50_ms <= 5.0
    assert 100 < orders.p95_ms <= 250
    assert figures.policies == [
        {"policy": "per-ip", "allowed": 94, "rejected": 6, "shadow_rejected": 0, "fallback": 0, "rejected_total": 6}
    ]
    assert orders.series == [pytest.approx(10.0)]
    assert orders.error_series == [pytest.approx(1.0)]


def test_one_sample_is_no_rate_yet_and_quantiles_follow_prometheus():
    metrics = Registry()
    metrics.serve("orders", 200, 0.004)
    (orders,) = status.summarize([metrics.sample(1.0)]).routes
    assert (orders.rps, orders.p50_ms, orders.share_4xx) == (None, None, None)
    counts = [0, 0, 0, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10]  # all ten in (0.005, 0.01]
    assert status.quantile(0.5, counts) == pytest.approx(0.0075)
    assert status.quantile(0.5, [0] * 16) is None


def test_the_workers_of_an_instance_share_one_series_of_samples(tmp_path):
    taken = []

    def take(now):
        taken.append(now)
        return {"t": now, "routes": {"r": {"n": 10.0 * len(taken)}}, "policies": {}}

    every = status.SAMPLE_EVERY
    assert len(status.samples(str(tmp_path), now=100.0, take=take)) == 1
    assert len(status.samples(str(tmp_path), now=100.0 + every / 2, take=take)) == 1  # too young: no new one
    assert len(status.samples(str(tmp_path), now=100.0 + every, take=take)) == 2
    kept = status.samples(str(tmp_path), now=100.0 + status.KEEP + 1, take=take)
    assert [s["t"] for s in kept] == [100.0 + every, 100.0 + status.KEEP + 1]  # older than KEEP: dropped
    assert taken == [100.0, 100.0 + every, 100.0 + status.KEEP + 1]

    def restarted(now):
        return {"t": now, "routes": {"r": {"n": 1.0}}, "policies": {}}

    assert len(status.samples(str(tmp_path), now=2000.0, take=restarted)) == 1  # counters went back: start again


def _wide(now: float, routes: int = 100) -> dict:
    """A sample of an instance with many routes (about 20 KB as a line)."""
    row = {"n": now, "4xx": 1.0, "429": 0.0, "5xx": 2.0, "own5xx": 0.0, "b": [now] * len(status.BUCKETS)}
    return {"t": now, "routes": {f"route-{i}": dict(row) for i in range(routes)}, "policies": {}}


def _bytes_read() -> int:
    return int(dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())["rchar"])


def test_the_background_sampler_reads_only_the_last_sample_however_long_the_history(tmp_path):
    every = status.SAMPLE_EVERY
    count = int(status.KEEP / every)
    for index in range(count):
        status.samples(str(tmp_path), now=1000.0 + index * every, take=_wide, wait=False)
    history = (tmp_path / status.SAMPLES_FILE).stat().st_size
    assert history > 2_000_000

    # Rewriting the whole history on every sample stalled a worker for 144-251 ms every SAMPLE_EVERY here.
    taken = []

    def take(now):
        taken.append(now)
        return _wide(now)

    for now in (1000.0 + count * every - every / 2, 1000.0 + count * every):  # one too young, one due
        before = _bytes_read()
        status.samples(str(tmp_path), now=now, take=take, wait=False)
        assert _bytes_read() - before < 100_000
    assert taken == [1000.0 + count * every]
    kept = status.samples(str(tmp_path), now=1000.0 + count * every + 1)
    assert [s["t"] for s in kept] == [1000.0 + index * every for index in range(count + 1)]  # KEEP back from the last


def test_the_history_on_disk_stays_within_its_window(tmp_path):
    every = status.SAMPLE_EVERY
    for index in range(int(3 * status.KEEP / every)):
        status.samples(str(tmp_path), now=1000.0 + index * every, take=_wide, wait=False)
        lines = (tmp_path / status.SAMPLES_FILE).read_bytes().splitlines()
        assert len(lines) <= 1.5 * status.KEEP / every + 1


def test_a_sample_cut_short_is_skipped_and_the_next_one_gets_its_own_line(tmp_path):
    every = status.SAMPLE_EVERY
    status.samples(str(tmp_path), now=100.0, take=_wide, wait=False)
    with open(tmp_path / status.SAMPLES_FILE, "ab") as file:
        file.write(b'{"t":104.0,"routes":{"route-0":{"n":')  # a worker killed while writing its line
    status.samples(str(tmp_path), now=100.0 + 2 * every, take=_wide, wait=False)
    assert [s["t"] for s in status.samples(str(tmp_path), now=100.0 + 2 * every)] == [100.0, 100.0 + 2 * every]


_A_WORKER_SERVES = """
import sys
import django; django.setup()
from gateway_project import metrics
from limits import metrics as limit_metrics
for r in range(int(sys.argv[1])):
    for method, status in (("GET", 200), ("GET", 404), ("POST", 503), ("GET", 429)):
        took = 0.003 * r
        metrics.observe_request(route=f"route-{r}", method=method, status=status, seconds=took, body_in=1, body_out=9)
    metrics.own_error(route=f"route-{r}", status=503, error="circuit_open")
    metrics.observe_upstream(upstream=f"up-{r}", seconds=0.002, retry_reasons=["connect"])
    limit_metrics.ratelimit_decisions.labels(f"policy-{r % 3}", "allowed").inc()
"""


def test_a_sample_reads_the_same_figures_as_the_whole_collection(tmp_path, monkeypatch):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(Path.cwd())}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    for routes in ("30", "20"):  # two workers, a route only one of them served
        subprocess.run([sys.executable, "-c", _A_WORKER_SERVES, routes], env=env, check=True, timeout=60)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    def rows(families):
        return sorted((f.name, f.type, s.name, sorted(s.labels.items()), s.value) for f in families for s in f.samples)

    collected = multiprocess.MultiProcessCollector(None, str(tmp_path)).collect()
    everything = [f for f in collected if f.name in status.SAMPLED]
    assert {f.name for f in everything} == status.SAMPLED
    assert rows(metrics.families(status.SAMPLED)) == rows(everything)
    assert rows(metrics.families(status.SAMPLED)) == rows(everything)  # again, with its keys decoded before
    sample = status.take_sample(now=1.0)
    assert sample["routes"]["route-25"]["n"] == 4 and sample["routes"]["route-5"]["n"] == 8
    assert sample["policies"]["policy-0"]["allowed"] == 10 + 7


_SAMPLER_IN_A_GEVENT_WORKER = """
from gevent import monkey; monkey.patch_all()
import sys, tempfile, time
import django; django.setup()
import gevent
from gateway_project import status

def busy(run_dir, wait=True):  # a sample, or reading the history, that takes the interpreter for 300 ms
    ends = time.perf_counter() + 0.3
    while time.perf_counter() < ends:
        pass
    taken.append(wait)
    return [{"t": 1.0, "routes": {}, "policies": {}}]

taken, late = [], []
status.samples = busy
status.Sampler(tempfile.mkdtemp(), every=0.05).start()  # the background sampler
page = gevent.spawn(status.figures, prometheus_url="", run_dir=tempfile.mkdtemp())  # an admin opens the page
ends = time.perf_counter() + 1.5
while time.perf_counter() < ends:
    started = time.perf_counter()
    gevent.sleep(0.001)
    late.append(time.perf_counter() - started)
print(taken.count(False), int(page.get().source == "instance"), max(late))
"""


def test_a_gevent_workers_sampler_and_status_page_leave_its_requests_running(tmp_path):
    # The sampler and the page run in a gunicorn worker between requests: on the worker's own loop, a sample held
    # every request of the worker until it was done (30-90 ms with 100 routes), reading the history for the page
    # 160 ms. They run in a real thread instead.
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(Path.cwd())}
    out = subprocess.run(
        [sys.executable, "-c", _SAMPLER_IN_A_GEVENT_WORKER], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    sampled, page, longest_wait = out.stdout.split()
    assert int(sampled) >= 2 and page == "1"
    assert float(longest_wait) < 0.15  # on the loop: 0.3 s


def test_the_sparkline_is_an_svg_of_numbers():
    drawn = status.sparkline([0, 1, 2, 1])
    assert drawn.startswith("<svg") and "<polyline" in drawn and 'points="0.0,' in drawn
    assert "<polyline" not in status.sparkline([3.0])


def test_a_prometheus_url_must_be_http():
    with pytest.raises(Exception, match="GATEWAY_PROMETHEUS_URL"):
        read({"GATEWAY_PROMETHEUS_URL": "prometheus:9090", "DEBUG": "1"})
    assert read({"GATEWAY_PROMETHEUS_URL": "http://prom:9090/", "DEBUG": "1"})["GATEWAY_PROMETHEUS_URL"] == (
        "http://prom:9090"
    )


@pytest.fixture
def in_process(in_process, settings, tmp_path):
    settings.GATEWAY_RUN_DIR = str(tmp_path)


@pytest.mark.django_db
@pytest.mark.usefixtures("redis_prefix", "in_process")
def test_the_admin_opens_on_the_status_page(admin_client, client):
    upstream = make_upstream("orders-api", breaker_mode="forced_open")
    make_route("orders", "/orders", upstream=upstream)
    RateLimitPolicy.objects.create(name="per-ip", limit=5, window_seconds=60)
    metrics.observe_request(route="orders", method="GET", status=200, seconds=0.01, body_in=0, body_out=10)
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert 'id="gateway-status"' in page and "Figures: <strong>this instance</strong>" in page
    assert 'data-check="database"' in page and 'data-check="redis"' in page and 'data-check="config"' in page
    assert 'data-upstream="orders-api"' in page and "forced open by an operator" in page
    assert "gw-breaker-forced" in page
    assert "View site" not in page
    assert page.index('id="gateway-status"') < page.index("Configuration</h2>")

    panel = admin_client.get(reverse("admin:gateway_status")).content.decode()
    assert panel.lstrip().startswith('<div class="gw-status">') and "<html" not in panel
    data = json.loads(admin_client.get(reverse("admin:gateway_status_json")).content)
    assert data["figures"]["source"] == "instance"
    (orders,) = [r for r in data["figures"]["routes"] if r["route"] == "orders"]
    assert "spark" not in orders and "series" in orders
    assert data["health"]["database"] == "ok"
    assert [b["upstream"] for b in data["breakers"]] == ["orders-api"]

    for name in ("admin:index", "admin:gateway_status", "admin:gateway_status_json"):
        anonymous = client.get(reverse(name))
        assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]


@pytest.mark.django_db
@pytest.mark.usefixtures("redis_prefix", "in_process")
def test_a_prometheus_that_does_not_answer_is_named_and_the_instance_figures_shown(admin_client, settings):
    settings.GATEWAY_PROMETHEUS_URL = f"http://127.0.0.1:{free_port()}"
    data = json.loads(admin_client.get(reverse("admin:gateway_status_json")).content)
    assert data["figures"]["source"] == "instance"
    assert data["figures"]["error"].startswith(f"Prometheus at {settings.GATEWAY_PROMETHEUS_URL} did not answer")


@pytest.mark.django_db
@pytest.mark.usefixtures("redis_prefix", "in_process")
def test_staff_without_the_permissions_see_no_upstream_or_client(client, django_user_model):
    make_upstream("orders-api")
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    client.force_login(user)
    page = client.get(reverse("admin:gateway_status")).content.decode()
    assert "orders-api" not in page
    assert "Needs the permission to view breakers." in page
    assert "Needs the permission to view rate limit policies." in page
    assert 'data-check="redis"' in page
