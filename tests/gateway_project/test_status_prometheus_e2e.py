"""The status page's fleet figures: a real Prometheus scraping two real gateway instances (one fleet: same
Redis, same prefix) every second; the figures come from its HTTP API with PromQL and add both instances up, and
the page says they are the fleet's."""

from __future__ import annotations

import time
import uuid

import pytest
import requests
from django.urls import reverse

from gateway_project import runtime, status
from tests.support.config import make_route, make_upstream, serve
from tests.support.gateways import start_gateway, talking_to
from tests.support.prometheus import running_prometheus
from tests.support.servers import wait_until


class SlowPrometheus(status.Prometheus):
    def _get(self, path: str, **fields) -> list[dict]:
        time.sleep(0.3)
        return super()._get(path, **fields)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, redis_server, django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        prefix = f"fleet{uuid.uuid4().hex[:8]}"
        first = start_gateway(tmp_path_factory, redis_server, prefix=prefix)
        second = start_gateway(tmp_path_factory, redis_server, prefix=prefix)
    yield first, second
    first.stop()
    second.stop()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, fleet):
    with running_prometheus(tmp_path_factory.mktemp("prometheus"), [gw.port for gw in fleet]) as base:
        yield base


def test_the_fleets_figures_come_from_prometheus(fleet, prometheus, transactional_db, upstream, settings, client):
    first, second = fleet
    with talking_to(first):
        backend = make_upstream(
            "backend", upstream.url, max_retries=0, breaker_consecutive_failures=0, breaker_failure_rate=0
        )
        make_route("orders", "/orders", backend)
        make_route("closed", "/closed", make_upstream("shut", upstream.url, breaker_mode="forced_open"))
        serve(first)
        serve(second)

        def scraped(total: int) -> bool:
            query = 'sum(gateway_requests_total{route="orders"})'
            found = requests.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=2).json()
            return bool(found["data"]["result"]) and float(found["data"]["result"][0]["value"][1]) == total

        # A first 200 and 503 each, scraped (a rate counts what a series grew by after its first scrape); then
        # 20 successes and 5 upstream 503s on each instance, and a path no route serves.
        for gw in fleet:
            requests.get(gw.url("/orders/x"), timeout=5)
            requests.get(gw.url("/orders/status/503"), timeout=5)
            requests.get(gw.url("/closed/x"), timeout=5)
        wait_until(lambda: scraped(4), 20, "both instances scraped")
        for gw in fleet:
            for index in range(25):
                path = "/orders/status/503" if index % 5 == 0 else "/orders/x"
                requests.get(gw.url(path), timeout=5)
            requests.get(gw.url("/nowhere"), timeout=5)
            for _ in range(5):
                assert requests.get(gw.url("/closed/x"), timeout=5).json()["reason"] == "forced_open"
        wait_until(lambda: scraped(54), 20, "the traffic scraped")
        time.sleep(1.5)
        figures = status.Prometheus(prometheus).figures()
        assert figures.source == "prometheus"
        orders = next(r for r in figures.routes if r.route == "orders")
        assert orders.rps > 0
        assert orders.share_upstream_5xx == pytest.approx(10 / 50, abs=0.02)
        assert orders.share_own_5xx == 0
        closed = next(r for r in figures.routes if r.route == "closed")
        assert closed.share_own_5xx == pytest.approx(1.0, abs=0.01)  # the gateway's own 503s, not the upstream's
        assert closed.share_upstream_5xx == pytest.approx(0.0, abs=0.01)
        # A Prometheus slow to answer: the figures are still taken at one instant, so the shares hold.
        slow = SlowPrometheus(prometheus).figures()
        assert next(r for r in slow.routes if r.route == "closed").share_own_5xx == pytest.approx(1.0, abs=0.01)
        assert next(r for r in slow.routes if r.route == "orders").share_upstream_5xx == pytest.approx(0.2, abs=0.02)
        assert orders.p50_ms is not None and orders.p95_ms is not None
        assert orders.series and max(orders.series) > 0
        assert "(gateway)" not in {r.route for r in figures.routes}

        # The page names the source.
        settings.GATEWAY_PROMETHEUS_URL = prometheus
        settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
        from django.contrib.auth import get_user_model

        get_user_model().objects.create_superuser("fleet-admin", "f@example.com", "pw")
        client.login(username="fleet-admin", password="pw")
        runtime.load()
        page = client.get(reverse("admin:gateway_status")).content.decode()
        assert "Figures: <strong>fleet-wide</strong>" in page and prometheus in page
        assert 'data-route="orders"' in page
