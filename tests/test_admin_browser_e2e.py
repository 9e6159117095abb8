"""The admin in a real browser (Debian's chromium, driven by Playwright) against a real gunicorn gateway: an
operator's first session, start to end.

Log in; create an upstream (with breaker thresholds) and a route, call it; create a consumer and a key (shown
once, a reload makes no second one), call with it; trip the breaker with the demo's failure switch and watch the
status page and the breakers page change, reset it through its confirmation; add a rate-limit policy and see its
429s counted on the status page; run the route tester. Any console error or any 5xx page fails the test.

Screenshots of each page are written to $BROWSER_SCREENSHOTS, else a temporary directory the test prints.
`make test` installs chromium from Debian's packages; no browser is ever downloaded.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
import requests
from django.contrib.auth import get_user_model

from gateway_project import runtime
from limits.models import ApiKey, RateLimitPolicy
from limits.services import policy_usage
from tests.support.gateways import start_gateway, talking_to

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def browser_gateway(tmp_path_factory, redis_server, django_db_setup, django_db_blocker):
    """Two workers, the demo upstream, static files collected, cookies over plain HTTP (loopback)."""
    with django_db_blocker.unblock():
        gw = start_gateway(
            tmp_path_factory,
            redis_server,
            env={"GATEWAY_DEMO": "1", "GATEWAY_SECURE_COOKIES": "0"},
            collectstatic=True,
        )
    yield gw
    gw.stop()


@pytest.fixture
def browser(tmp_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own database calls are plain
    # synchronous ones all the same (Django would refuse them, seeing the loop).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    assert shutil.which(CHROMIUM), "chromium is not installed; `make test` installs Debian's package"
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        yield context
        context.close()


@pytest.fixture
def shots(tmp_path):
    directory = Path(os.environ.get("BROWSER_SCREENSHOTS") or tmp_path / "screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {directory}")
    return directory


class Operator:
    """A browser page that fails on console errors and 5xx answers, and names its screenshots."""

    def __init__(self, context, gateway, shots: Path) -> None:
        self.page = context.new_page()
        self.page.set_default_timeout(10_000)
        self.gw = gateway
        self.shots = shots
        self.problems: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on(
            "response",
            lambda r: self.problems.append(f"{r.status} {r.url}") if r.status >= 500 else None,
        )

    def _console(self, message) -> None:
        # Chromium asks for /favicon.ico on its own; on a gateway that is a client path (no route here: 404).
        if message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico"):
            self.problems.append(f"console: {message.text} ({message.location.get('url')})")

    def go(self, path: str):
        self.page.goto(self.gw.url(path))
        return self.page

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text()

    def wait_for_text(self, selector: str, pattern: str, timeout: float = 15.0) -> str:
        """Until the element's text matches: the page refreshes itself, the test does not reload it."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.page.locator(selector).first.inner_text() if self.page.locator(selector).count() else ""
            if re.search(pattern, found):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{selector}: {pattern!r} not in {found!r}")
            self.page.wait_for_timeout(250)


def serve(gw) -> None:
    gw.wait_for_config(runtime.describe(*runtime.db_state()))


def test_an_operators_first_session(browser_gateway, transactional_db, browser, shots):
    gw = browser_gateway
    get_user_model().objects.create_superuser("operator", "op@example.com", PASSWORD)
    me = Operator(browser, gw, shots)
    try:
        _session(gw, me, me.page)
    except Exception:
        me.shot("failure")
        raise
    assert me.problems == []


def _session(gw, me: Operator, page) -> None:
    with talking_to(gw):
        # Log in: the admin opens on the status page, says where its figures come from; no "View site".
        me.go("/admin/")
        page.fill("#id_username", "operator")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_selector("#gateway-status")
        assert "this instance" in me.text(".gw-source")
        assert page.locator("text=View site").count() == 0
        assert me.text("[data-check=database]") == "database: ok"

        # An upstream (the demo upstream this gateway serves itself) with breaker thresholds, and a route.
        me.go("/admin/proxy/upstream/add/")
        page.fill("#id_name", "shop-api")
        page.fill("#id_base_url", gw.url("/_demo"))
        page.fill("#id_breaker-0-consecutive_failures", "3")
        page.fill("#id_breaker-0-open_seconds", "120")
        me.shot("upstream-form")
        page.click("input[name=_save]")
        page.wait_for_selector(".messagelist .success")
        me.go("/admin/proxy/route/add/")
        page.fill("#id_name", "shop")
        page.fill("#id_path_prefix", "/shop")
        page.select_option("#id_upstream", label="shop-api")
        page.click("input[name=_continue]")
        page.wait_for_selector(".messagelist .success")
        assert "closed (mode normal)" in me.text(".field-live")
        serve(gw)
        assert requests.get(gw.url("/shop/items"), timeout=5).json()["path"] == "/_demo/items"

        # A consumer and its key: shown once, with a copy button and an example; a reload makes no second key.
        me.go("/admin/limits/consumer/add/")
        page.fill("#id_name", "acme")
        page.click("input[name=_continue]")
        page.click("#create-api-key")
        page.fill("#id_label", "browser test")
        page.click("#create-key")
        key = me.text("#key-1")
        assert key.startswith("gw_")
        assert f"X-API-Key: {key}" in me.text("#example-request")
        me.shot("api-key-shown-once")
        page.reload()
        page.wait_for_selector("#keys-already-shown")
        assert ApiKey.objects.filter(consumer__name="acme").count() == 1
        serve(gw)
        echo = requests.get(gw.url("/shop/who"), headers={"X-API-Key": key}, timeout=5).json()
        assert echo["headers"]["X-Consumer-Name"] == "acme"

        # The demo's failure switch trips the breaker after three failures (the threshold set in the upstream's
        # form): the breakers page, open before, turns red by itself; the status page shows it open too.
        me.go("/admin/breakers/breaker/")
        assert me.text('#breakers [data-upstream="shop-api"] .gw-breaker') == "closed"
        requests.post(gw.url("/_demo/simulate-failure"), timeout=5).raise_for_status()
        try:
            codes = [requests.get(gw.url("/shop/x"), timeout=5).status_code for _ in range(5)]
        finally:
            requests.post(gw.url("/_demo/simulate-recovery"), timeout=5).raise_for_status()
        assert codes == [503] * 5
        me.wait_for_text('#breakers [data-upstream="shop-api"] .gw-breaker', r"^open$")
        assert "3 consecutive failures" in me.text('#breakers [data-upstream="shop-api"]')
        assert page.locator('[data-upstream="shop-api"] select').input_value() == ""  # nothing preselected
        me.shot("breakers-open")
        me.go("/admin/")
        badge = page.locator('#gw-breakers [data-upstream="shop-api"] .gw-breaker')
        assert badge.inner_text() == "open" and "gw-breaker-open" in badge.get_attribute("class")
        me.wait_for_text('[data-route="shop"]', r"\d")
        me.shot("status-breaker-open")
        me.go("/admin/breakers/breaker/")

        # Reset it: a confirmation first, then it is closed, and the page says so without a reload.
        page.locator('[data-upstream="shop-api"] select').select_option("reset")
        page.locator('[data-upstream="shop-api"] input[type=submit]').click()
        page.wait_for_selector("#confirm-action")
        me.shot("breaker-reset-confirmation")
        page.click("#confirm-action")
        page.wait_for_selector(".messagelist .success")
        assert me.text('#breakers [data-upstream="shop-api"] .gw-breaker') == "closed"
        assert requests.get(gw.url("/shop/x"), timeout=5).status_code == 200

        # A policy: 3 requests a minute on the route; the fourth and fifth are 429s, counted on the status page.
        me.go("/admin/limits/ratelimitpolicy/add/")
        page.fill("#id_name", "shop-per-ip")
        page.select_option("#id_scope", "route")
        page.select_option("#id_route", label="shop")
        page.fill("#id_limit", "3")
        page.fill("#id_window_seconds", "60")
        page.click("input[name=_continue]")
        page.wait_for_selector(".messagelist .success")
        serve(gw)
        me.go("/admin/")
        codes = [requests.get(gw.url("/shop/y"), timeout=5).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        me.wait_for_text('[data-policy="shop-per-ip"] [data-col=rejected]', r"^[2-9]$")
        me.wait_for_text("#gw-clients", r"shop-per-ip\s+ip 127\.0\.0\.1\s+3 / 3")
        me.shot("status")

        # The policy's own page: its live counts first, rejections included.
        me.go("/admin/limits/ratelimitpolicy/")
        page.click("text=shop-per-ip")
        assert re.search(r"\d+ rejected since this instance started", me.text(".field-live_usage"))
        assert "ip 127.0.0.1" in me.text(".field-live_usage")
        me.shot("policy")

        # The route tester, from the route's page: a dry run from another address counts nothing.
        me.go("/admin/proxy/route/")
        page.click("text=shop >> nth=0")
        assert "shop-per-ip: 3 per 60 s" in me.text(".field-live")
        page.click("#test-route")
        page.fill("#id_path", "/shop/tested?x=1")
        page.fill("#id_client_ip", "192.0.2.44")
        page.fill("#id_headers", f"X-API-Key: {key}")
        page.click("#send-test")
        page.wait_for_selector("#trace")
        assert me.text("#trace-status") == "200 OK"
        assert me.text("#trace-upstream-url").endswith("/_demo/tested?x=1")
        assert re.search(r"status 200 in [0-9.]+ ms", me.text("#trace-attempts"))
        assert "allowed" in me.text("#trace-ratelimit") and me.text("#trace-breaker") == "closed"
        me.shot("route-tester")
        counted = {u.client for u in policy_usage(policy=RateLimitPolicy.objects.get(name="shop-per-ip"))}
        assert counted == {"ip:<127.0.0.1>"}  # the dry run from 192.0.2.44 counted nothing
