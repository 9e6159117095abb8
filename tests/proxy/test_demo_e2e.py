"""The first-run experience: embedded store, demo upstream and route, the failure switch."""

from __future__ import annotations

import pytest
import requests

from tests.support.servers import Gateway


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """What `make run` starts on a machine without Redis: embedded store, demo data, its own SQLite file."""
    workdir = tmp_path_factory.mktemp("first-run")
    gateway = Gateway(
        workdir,
        redis_url="embedded://",
        database_url=f"sqlite:///{workdir / 'gateway.sqlite3'}",
        prefix="gw",
        workers=4,
        expect_workers=1,
        env={"GATEWAY_ALLOW_EMBEDDED_STORE": "1", "GATEWAY_DEMO": "1"},
    )
    for command in (("migrate", "--noinput"), ("gateway_demo", "--no-admin")):
        result = gateway.manage(*command)
        assert result.returncode == 0, result.stderr
    gateway.start()
    yield gateway
    gateway.stop()


def test_embedded_store_runs_one_worker_and_says_so(first_run):
    assert len(first_run.worker_pids()) == 1
    assert "using the embedded in-process store and a single worker" in first_run.log()
    assert requests.get(first_run.url("/readyz"), timeout=5).json()["status"] == "ready"


def test_the_demo_route_reaches_the_demo_upstream(first_run):
    response = requests.get(first_run.url("/demo/hello?who=me"), timeout=5)
    assert response.status_code == 200
    echo = response.json()
    assert echo["service"] == "demo"
    assert echo["path"] == "/_demo/hello"
    assert echo["query"] == "who=me"
    assert echo["headers"]["X-Forwarded-Prefix"] == "/demo"
    assert echo["headers"]["X-Request-Id"] == response.headers["X-Request-ID"]
    assert requests.get(first_run.url("/demo/status/418"), timeout=5).status_code == 418


def test_the_failure_switch_fails_and_recovers_the_demo_upstream(first_run):
    assert requests.post(first_run.url("/_demo/simulate-failure"), timeout=5).json() == {
        "failing": True,
        "note": "every /_demo/ answer is 503 for up to 3600 s",
    }
    try:
        assert requests.get(first_run.url("/demo/x"), timeout=5).status_code == 503
    finally:
        requests.post(first_run.url("/_demo/simulate-recovery"), timeout=5).raise_for_status()
    assert requests.get(first_run.url("/demo/x"), timeout=5).status_code == 200


def test_the_demo_and_its_switch_are_off_unless_enabled(live):
    """`live` runs with DEBUG off and GATEWAY_DEMO unset, as production does."""
    assert requests.post(live.url("/_demo/simulate-failure"), timeout=5).status_code == 404
    assert requests.get(live.url("/_demo/hello"), timeout=5).status_code == 404
