"""Active health checks on a real gunicorn with two workers: one worker of the instance probes (not both), the
verdict reaches every worker, another worker takes over when the prober dies, and the breakers page and
proxy.services.target_health show each target's health."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
import requests

from proxy import services
from proxy.models import Target
from tests.support.admin import login
from tests.support.config import make_route, make_upstream, serve
from tests.support.servers import wait_until
from tests.support.upstream import Upstream

INTERVAL = 0.2


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def gateway_options(run_dir) -> dict:
    return {"collectstatic": True, "env": {"GATEWAY_RUN_DIR": run_dir, "GATEWAY_SECURE_COOKIES": "0"}}


@pytest.fixture
def two():
    servers = [Upstream().start() for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def checked(live, two):
    upstream = make_upstream(
        "checked",
        "http://service.internal",
        health_check_path="/healthz",
        health_check_interval=INTERVAL,
        health_check_timeout=1.0,
        healthy_threshold=1,
        unhealthy_threshold=2,
        eject_consecutive_failures=0,
        max_retries=0,
    )
    for server in two:
        Target.objects.create(upstream=upstream, address=f"127.0.0.1:{server.port}")
    make_route("checked", "/checked", upstream)
    serve(live)
    return live


def probes(server) -> list:
    return [r for r in server.requests_to("/healthz") if (r.header("User-Agent") or "").startswith("gateway-health")]


def prober_pids(server) -> set[int]:
    return {int(re.search(r"pid (\d+)", r.header("User-Agent")).group(1)) for r in probes(server)}


def health(run_dir: str) -> dict[str, str]:
    return {t.address: t.state for t in services.target_health(upstreams=["checked"], run_dir=run_dir)}


def test_one_worker_of_the_instance_probes_and_another_takes_over_when_it_dies(checked, two):
    wait_until(lambda: len(probes(two[0])) >= 3, 10, "probes")
    first = len(probes(two[0]))
    time.sleep(2.0)
    during = len(probes(two[0])) - first
    (leader,) = prober_pids(two[0])  # exactly one process probes
    assert leader in checked.worker_pids()
    # One prober: about one probe per interval (two would make it twice as many).
    assert 2.0 / INTERVAL * 0.5 <= during <= 2.0 / INTERVAL * 1.3
    assert probes(two[0])[0].header("Host") == "service.internal"

    os.kill(leader, signal.SIGKILL)
    wait_until(lambda: len(prober_pids(two[0])) == 2, 10, "another worker probing")
    assert (prober_pids(two[0]) - {leader}) <= set(checked.worker_pids())


def test_a_target_that_fails_its_checks_gets_no_traffic_until_it_passes_again(checked, two, run_dir):
    sick, well = two
    sick.behave(status=503)
    wait_until(lambda: health(run_dir)[f"127.0.0.1:{sick.port}"] == "unhealthy", 10, "the verdict")
    time.sleep(0.5)  # every worker read it (they look every 0.25 s)
    sick_before = len(sick.received) - len(probes(sick))
    answers = [requests.get(checked.url("/checked/x"), timeout=5).status_code for _ in range(40)]
    assert answers == [200] * 40
    assert len(sick.received) - len(probes(sick)) == sick_before
    assert len(well.received) - len(probes(well)) == 40

    sick.behave()
    wait_until(lambda: health(run_dir)[f"127.0.0.1:{sick.port}"] == "healthy", 10, "recovery")
    time.sleep(0.5)
    for _ in range(20):
        requests.get(checked.url("/checked/x"), timeout=5)
    assert len(sick.received) - len(probes(sick)) > sick_before


def test_the_breakers_page_shows_each_targets_health(checked, two, run_dir):
    two[0].behave(status=503)
    wait_until(lambda: health(run_dir)[f"127.0.0.1:{two[0].port}"] == "unhealthy", 10, "the verdict")
    session = login(checked, "127.0.0.1")
    page = session.get(checked.url("/admin/breakers/breaker/"), timeout=10).text
    row = re.search(rf"127\.0\.0\.1:{two[0].port}.*?</tr>", page, re.DOTALL).group(0)
    assert "unhealthy" in row
    assert f"127.0.0.1:{two[1].port}" in page
    reports = services.target_health(upstreams=["checked"], run_dir=run_dir)
    assert {r.workers for r in reports} == {2}  # both workers published their view
