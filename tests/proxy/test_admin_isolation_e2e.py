"""The admin and the routes share an origin unless the operator separates them: the admin's cookies never reach an
upstream, no upstream can set, replace or delete them, and the admin can be given a host and a listener of its own
where no route is served."""

from __future__ import annotations

import pytest
import requests

from tests.support.admin import login
from tests.support.config import make_route, make_upstream, serve
from tests.support.gateways import start_gateway, talking_to
from tests.support.rawupstream import RawUpstream, response, serve_each
from tests.support.servers import free_port

ADMIN_HOST = "admin.gateway.test"


@pytest.fixture(scope="module")
def plain(tmp_path_factory, redis_server, django_db_setup, django_db_blocker):
    """Admin and routes on one origin, over plain HTTP (as in development): the default set-up."""
    with django_db_blocker.unblock():
        gw = start_gateway(tmp_path_factory, redis_server, collectstatic=True, env={"GATEWAY_SECURE_COOKIES": "0"})
    yield gw
    gw.stop()


@pytest.fixture
def shared(plain, transactional_db):
    with talking_to(plain):
        yield plain


@pytest.fixture(scope="module")
def separated(tmp_path_factory, redis_server, django_db_setup, django_db_blocker):
    """The production recommendation: the admin on a host name and a listener of its own, cookies for HTTPS."""
    admin_port = free_port()
    with django_db_blocker.unblock():
        gw = start_gateway(
            tmp_path_factory,
            redis_server,
            collectstatic=True,
            env={
                "GATEWAY_ADMIN_HOST": ADMIN_HOST,
                "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
                "GATEWAY_SECURE_COOKIES": "1",
            },
        )
    gw.admin_port = admin_port
    yield gw
    gw.stop()


@pytest.fixture
def apart(separated, transactional_db, upstream):
    with talking_to(separated):
        make_route("api", "/api", make_upstream("backend", upstream.url))
        serve(separated)
        yield separated


def gateway_cookie_names(session: requests.Session) -> set[str]:
    names = {cookie.name for cookie in session.cookies}
    assert len(names) >= 2, names  # the session and the CSRF token
    return names


def test_the_admins_cookies_never_reach_an_upstream_and_others_do(shared, upstream):
    make_route("api", "/api", make_upstream("backend", upstream.url))
    serve(shared)
    session = login(shared, "127.0.0.1")
    own = gateway_cookie_names(session)
    for cookie in session.cookies:
        # Over plain HTTP: the narrowest path covering the admin (/admin) and the API (/_gateway/api).
        assert cookie.path == "/", (cookie.name, cookie.path)
    # A browser sends every cookie whose path matches; the gateway must remove its own from what it forwards.
    cookie_header = "; ".join([*(f"{name}=stolen-{name}" for name in sorted(own)), "theme=dark", "sessionid=app"])
    answer = requests.get(shared.url("/api/x"), headers={"Cookie": cookie_header}, timeout=10)
    assert answer.status_code == 200
    forwarded = upstream.received[-1].header("Cookie")
    assert forwarded == "theme=dark; sessionid=app"
    requests.get(shared.url("/api/y"), headers={"Cookie": "; ".join(f"{n}=x" for n in own)}, timeout=10)
    assert upstream.received[-1].header("Cookie") is None


def test_no_upstream_can_set_replace_or_delete_the_admins_cookies(shared):
    session = login(shared, "127.0.0.1")
    own = gateway_cookie_names(session)
    attacks = []
    for name in sorted(own):
        attacks += [
            ("Set-Cookie", f"{name}=planted; Path=/"),
            ("Set-Cookie", f"{name}=planted; Path=/admin; HttpOnly"),
            ("Set-Cookie", f"{name}=; Max-Age=0; Path=/admin"),
            ("Set-Cookie", f" {name.upper()}=planted"),
        ]
    harmless = [("Set-Cookie", "theme=dark; Path=/"), ("Set-Cookie", "sessionid=app-session; Path=/; HttpOnly")]
    with RawUpstream(serve_each(lambda request: response(200, b"ok", attacks + harmless))) as raw:
        make_route("raw", "/raw", make_upstream("raw", raw.url, max_retries=0))
        serve(shared)
        answer = session.get(shared.url("/raw/x"), timeout=10)
    assert answer.status_code == 200
    assert answer.raw.headers.getlist("Set-Cookie") == [value for _, value in harmless]
    assert "Log out" in session.get(shared.url("/admin/"), timeout=10).text


def test_with_https_the_admins_cookies_carry_the_host_prefix(apart):
    page = requests.get(f"http://127.0.0.1:{apart.admin_port}/admin/login/", headers={"Host": ADMIN_HOST}, timeout=10)
    assert page.status_code == 200
    (csrf,) = page.raw.headers.getlist("Set-Cookie")
    name, _, rest = csrf.partition("=")
    attributes = {a.strip().split("=")[0].lower(): a.strip() for a in rest.split(";")[1:]}
    assert name.startswith("__Host-"), csrf
    assert "secure" in attributes
    assert attributes["path"] == "Path=/"
    assert "domain" not in attributes


def test_the_admin_answers_only_on_its_own_host_and_listener(apart, upstream):
    admin_listener = f"http://127.0.0.1:{apart.admin_port}"
    assert requests.get(f"{admin_listener}/admin/login/", headers={"Host": ADMIN_HOST}, timeout=10).status_code == 200
    elsewhere = [
        (apart.url("/admin/login/"), ADMIN_HOST),  # the admin's host name on the routes' listener
        (apart.url("/admin/login/"), "127.0.0.1"),
        (f"{admin_listener}/admin/login/", "api.example.com"),  # the admin's listener with another host name
    ]
    for url, host in elsewhere:
        answer = requests.get(url, headers={"Host": host}, timeout=10)
        assert answer.status_code == 404, (url, host)
        assert "csrf" not in answer.headers.get("Set-Cookie", "").lower()


def test_no_route_is_served_on_the_admins_host_or_listener(apart, upstream):
    admin_listener = f"http://127.0.0.1:{apart.admin_port}"
    assert requests.get(apart.url("/api/x"), timeout=10).status_code == 200
    upstream.reset()
    for url, host in (
        (apart.url("/api/x"), ADMIN_HOST),
        (f"{admin_listener}/api/x", ADMIN_HOST),
        (f"{admin_listener}/api/x", "127.0.0.1"),
    ):
        answer = requests.get(url, headers={"Host": host}, timeout=10)
        assert answer.status_code == 404, (url, host)
    assert upstream.received == []
    for url in (apart.url("/healthz"), f"{admin_listener}/healthz"):
        assert requests.get(url, timeout=10).status_code == 200
