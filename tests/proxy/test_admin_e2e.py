"""An operator's path: log into the admin, add an upstream and a route, call it through the gateway.

Also: who may reach the admin, and which client addresses the gateway believes.
"""

from __future__ import annotations

import re
import time

import pytest
import requests

from breakers.models import BreakerConfig
from proxy.models import Target
from tests.support.admin import login, upstream_form
from tests.support.config import make_route, make_upstream, serve
from tests.support.gateways import start_gateway, talking_to


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory, redis_server, django_db_setup, django_db_blocker):
    """A gateway that trusts 127.0.0.1 as a proxy in front of it, and admits the admin from 10.0.0.0/8 only."""
    with django_db_blocker.unblock():
        gw = start_gateway(
            tmp_path_factory,
            redis_server,
            collectstatic=True,
            env={
                "GATEWAY_TRUSTED_PROXIES": "127.0.0.1",
                "GATEWAY_ADMIN_ALLOWED_NETWORKS": "10.0.0.0/8",
                "GATEWAY_SECURE_COOKIES": "0",
            },
        )
    yield gw
    gw.stop()


@pytest.fixture
def proxied(behind_proxy, transactional_db):
    with talking_to(behind_proxy):
        yield behind_proxy


def admin_post(session, gateway, path: str, data: dict) -> requests.Response:
    page = session.get(gateway.url(path), timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    return session.post(
        gateway.url(path),
        data={"csrfmiddlewaretoken": token, **data},
        headers={"Referer": gateway.url(path)},
        timeout=10,
    )


def test_an_operator_adds_a_route_in_the_admin_and_calls_it(proxied, upstream):
    session = login(proxied, "10.1.2.3")
    response = admin_post(
        session,
        proxied,
        "/admin/proxy/upstream/add/",
        # The base URL names the service (scheme, Host header, base path); the target is where it runs. The
        # targets' inline has one row filled in, the breaker's inline is sent as the page sends it.
        upstream_form(
            "orders",
            "http://orders.internal/v1/",
            targets=(f"127.0.0.1:{upstream.port}",),
            retry_on_statuses="502, 503,504",
            **{"breaker-0-consecutive_failures": "3"},
        ),
    )
    assert response.status_code == 200
    assert "was added successfully" in response.text
    assert BreakerConfig.objects.get(upstream__name="orders").consecutive_failures == 3
    assert [(t.address, t.weight) for t in Target.objects.filter(upstream__name="orders")] == [
        (f"127.0.0.1:{upstream.port}", 100)
    ]
    upstream_id = re.search(r"/admin/proxy/upstream/(\d+)/change/", response.text).group(1)

    bad = admin_post(
        session,
        proxied,
        "/admin/proxy/route/add/",
        {"name": "orders", "path_prefix": "orders", "host": "", "methods": "", "upstream": upstream_id},
    )
    assert "The path prefix must start with" in bad.text

    response = admin_post(
        session,
        proxied,
        "/admin/proxy/route/add/",
        {
            "name": "orders",
            "enabled": "on",
            "path_prefix": "/orders/",
            "host": "",
            "methods": "get, post",
            "strip_prefix": "on",
            "upstream": upstream_id,
        },
    )
    assert "was added successfully" in response.text
    saved = time.monotonic()
    route_id = re.search(r"/admin/proxy/route/(\d+)/change/", response.text).group(1)

    page = session.get(proxied.url(f"/admin/proxy/route/{route_id}/change/"), timeout=10).text
    assert "http://orders.internal/v1/example/path?q=1" in page

    time.sleep(max(0.0, saved + 1.0 - time.monotonic()))
    answer = requests.get(proxied.url("/orders/42?x=1"), timeout=10)
    assert answer.status_code == 200
    assert answer.json()["path"] == "/v1/42?x=1"
    assert upstream.received[-1].header("Host") == "orders.internal"
    assert requests.delete(proxied.url("/orders/42"), timeout=10).status_code == 405


def test_the_admin_is_refused_to_clients_outside_the_admin_networks(proxied):
    for address in ("203.0.113.9", "127.0.0.1"):
        response = requests.get(proxied.url("/admin/login/"), headers={"X-Forwarded-For": address}, timeout=10)
        assert response.status_code == 403
        assert response.json()["error"] == "forbidden"
    # The trusted proxy itself is not a client: without X-Forwarded-For, the client is the proxy (127.0.0.1).
    assert requests.get(proxied.url("/admin/login/"), timeout=10).status_code == 403
    assert requests.get(proxied.url("/admin/login/"), headers={"X-Forwarded-For": "10.9.9.9"}, timeout=10).ok


def test_untrusted_peers_cannot_spoof_their_address(live, upstream):
    """`live` trusts no proxy: a loopback client claiming 10.0.0.1 is still 127.0.0.1."""
    make_route("api", "/api", make_upstream("backend", upstream.url))
    serve(live)
    requests.get(live.url("/api/x"), headers={"X-Forwarded-For": "10.0.0.1", "X-Forwarded-Proto": "https"}, timeout=10)
    seen = upstream.received[-1]
    assert seen.header("X-Forwarded-For") == "127.0.0.1"
    assert seen.header("X-Forwarded-Proto") == "http"


def test_a_trusted_proxy_chain_is_extended(proxied, upstream):
    make_route("api", "/api", make_upstream("backend", upstream.url))
    serve(proxied)
    requests.get(
        proxied.url("/api/x"),
        headers={
            "X-Forwarded-For": "198.51.100.7, 203.0.113.9",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "api.example.com",
        },
        timeout=10,
    )
    seen = upstream.received[-1]
    assert seen.header("X-Forwarded-For") == "198.51.100.7, 203.0.113.9, 127.0.0.1"
    assert seen.header("X-Forwarded-Proto") == "https"
    assert seen.header("X-Forwarded-Host") == "api.example.com"


def test_a_browser_logged_into_the_admin_reads_the_api_with_the_same_session(proxied):
    """The session cookie's path covers the API too: a cookie jar that honours Path, as browsers do, sends it."""
    session = login(proxied, "10.1.2.3")
    cookie = next(c for c in session.cookies if c.name == "gateway-session")
    assert cookie.path == "/"
    assert session.get(proxied.url("/_gateway/api/v1/upstreams/"), timeout=10).status_code == 200
    anonymous = requests.get(proxied.url("/_gateway/api/v1/upstreams/"), headers={"X-Forwarded-For": "10.1.2.3"})
    assert anonymous.status_code in (401, 403)
