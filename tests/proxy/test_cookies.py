"""The gateway's own cookies in proxied traffic (proxy.cookies)."""

from __future__ import annotations

import pytest

from proxy.cookies import gateway_cookie_names, sets_gateway_cookie, without_gateway_cookies


@pytest.fixture(autouse=True)
def names(settings):
    settings.SESSION_COOKIE_NAME = "__Host-gateway-session"
    settings.CSRF_COOKIE_NAME = "__Host-gateway-csrf"
    return gateway_cookie_names()


@pytest.mark.parametrize(
    ("cookie", "forwarded"),
    [
        ("theme=dark; sessionid=app", "theme=dark; sessionid=app"),
        ("__Host-gateway-session=s; theme=dark; __Host-gateway-csrf=c", "theme=dark"),
        ("__host-GATEWAY-session=s;theme=dark", "theme=dark"),
        ("__Host-gateway-session=s", ""),
        ("theme=dark, __Host-gateway-session=s; a=1", "a=1"),  # two Cookie lines joined by ','
        ("note=__Host-gateway-session; a=1", "note=__Host-gateway-session; a=1"),
    ],
)
def test_the_gateways_cookies_are_removed_from_what_is_forwarded(cookie, forwarded):
    assert without_gateway_cookies(cookie) == forwarded


def test_the_names_follow_the_settings(settings):
    settings.SESSION_COOKIE_NAME = "other"
    assert without_gateway_cookies("other=1; __Host-gateway-session=2") == "__Host-gateway-session=2"


@pytest.mark.parametrize(
    ("set_cookie", "refused"),
    [
        ("__Host-gateway-session=x; Path=/; Secure", True),
        ("__Host-gateway-csrf=; Max-Age=0", True),
        (" __HOST-gateway-session =x", True),
        ("sessionid=x; Path=/", False),
        ("theme=__Host-gateway-session", False),
    ],
)
def test_an_upstream_may_not_set_the_gateways_cookies(set_cookie, refused):
    assert sets_gateway_cookie(set_cookie) is refused
