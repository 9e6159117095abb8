"""The Grafana dashboard against a real Prometheus scraping a real gateway.

Traffic with successes, 4xx, 5xx, retries, 429s, a breaker trip and Redis errors runs while Prometheus scrapes
every second; then every query of every panel is run through Prometheus's HTTP API and must be valid and
return data. Prometheus comes from Debian's package (`make test` installs it).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import requests

from limits.models import RateLimitPolicy
from tests.support.config import make_route, make_upstream, serve
from tests.support.gateways import talking_to
from tests.support.prometheus import running_prometheus
from tests.support.servers import REPO

pytestmark = pytest.mark.slow

DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "gateway.json"


def test_the_dashboard_names_its_data_source_only_through_a_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    assert "uid" not in dashboard or not dashboard["uid"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in (
        "requests per second",
        "latency",
        "upstream latency",
        "4xx",
        "5xx",
        "429",
        "breaker state",
        "transitions",
        "retries",
        "redis errors",
    ):
        assert topic in titles, topic


@pytest.fixture(scope="module")
def gateway(own_gateway):
    return own_gateway


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, gateway):
    with running_prometheus(tmp_path_factory.mktemp("prometheus"), [gateway.port]) as base:
        yield base


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def concrete(expr: str) -> str:
    """The query as Grafana sends it with every variable at 'All'."""
    return expr.replace("$__rate_interval", "30s").replace("$route", ".*").replace("$upstream", ".*")


def test_every_panel_query_is_valid_and_returns_data(prometheus, gateway, own_redis, transactional_db, upstream):
    with talking_to(gateway, own_redis):
        api = make_route("api", "/api", make_upstream("backend", upstream.url, max_retries=2, backoff_factor=0))
        make_route(
            "flaky",
            "/flaky",
            make_upstream(
                "flaky",
                upstream.url + "/status/503",
                max_retries=1,
                backoff_factor=0,
                breaker_consecutive_failures=5,
                breaker_failure_rate=0,
            ),
        )
        RateLimitPolicy.objects.create(name="api-per-ip", scope="route", route=api, limit=40, window_seconds=60)
        serve(gateway)

        stop = threading.Event()

        def traffic() -> None:
            session = requests.Session()
            while not stop.is_set():
                for path in ("/api/x", "/api/status/404", "/flaky/x", "/nowhere"):
                    session.get(gateway.url(path), timeout=10)
                time.sleep(0.02)

        thread = threading.Thread(target=traffic)
        thread.start()
        time.sleep(4)
        own_redis.pause()  # Redis errors: the limiter and breakers fall back
        time.sleep(0.5)
        own_redis.resume()
        time.sleep(4)
        stop.set()
        thread.join()
        time.sleep(2.5)  # two more scrapes after the last request

        problems = []
        for title, expr in panel_queries():
            reply = requests.get(f"{prometheus}/api/v1/query", params={"query": concrete(expr)}, timeout=10).json()
            if reply.get("status") != "success":
                problems.append(f"{title}: {reply.get('error')}")
            elif not reply["data"]["result"]:
                problems.append(f"{title}: no data for {concrete(expr)}")
    assert problems == []


def test_the_compose_scrape_config_and_provisioning_parse():
    import yaml

    docker = Path(REPO / "docker")
    scrape = yaml.safe_load((docker / "prometheus" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["metrics_path"] == "/metrics"
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    token = compose["services"]["gateway"]["environment"]["GATEWAY_METRICS_TOKEN"]  # ${VAR:-default}
    assert token == "${GATEWAY_METRICS_TOKEN:-" + scrape["scrape_configs"][0]["authorization"]["credentials"] + "}"
    datasource = yaml.safe_load((docker / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert datasource["datasources"][0]["type"] == "prometheus"
    provider = yaml.safe_load((docker / "grafana" / "provisioning" / "dashboards" / "gateway.yaml").read_text())
    mounted = [v for v in compose["services"]["grafana"]["volumes"] if "dashboards" in v and "provisioning" not in v]
    assert mounted[0].endswith(":" + provider["providers"][0]["options"]["path"] + ":ro")
