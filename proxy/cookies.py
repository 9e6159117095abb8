"""The gateway's own cookies (the admin's session and CSRF token) are no upstream's business.

Routes share the admin's origin unless GATEWAY_ADMIN_HOST separates them, so an operator's browser sends the
admin's cookies with every proxied request, and an upstream's Set-Cookie for the same name would replace them.
The proxy removes them from the Cookie header it forwards and relays no Set-Cookie that names one of them.
Cookie names are compared without regard to case, since browsers treat the __Host-/__Secure- prefixes so.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

logger = logging.getLogger(__name__)

_names: frozenset[str] | None = None


def gateway_cookie_names() -> frozenset[str]:
    """Lower-case names of the cookies the gateway sets itself."""
    global _names
    if _names is None:
        _names = frozenset({settings.SESSION_COOKIE_NAME.lower(), settings.CSRF_COOKIE_NAME.lower()})
    return _names


@receiver(setting_changed)
def _forget_names(*, setting: str, **kwargs) -> None:
    global _names
    if setting in ("SESSION_COOKIE_NAME", "CSRF_COOKIE_NAME"):
        _names = None


def _named(pair: str, names: frozenset[str]) -> bool:
    # Several Cookie lines arrive joined by ',' (gunicorn joins repeated fields): look behind each comma too.
    return any(part.partition("=")[0].strip().lower() in names for part in pair.split(","))


def without_gateway_cookies(cookie: str) -> str:
    """The Cookie header minus the gateway's cookies ('' when none is left)."""
    names = gateway_cookie_names()
    lowered = cookie.lower()
    if not any(name in lowered for name in names):
        return cookie
    return "; ".join(pair.strip() for pair in cookie.split(";") if pair.strip() and not _named(pair, names))


def sets_gateway_cookie(set_cookie: str) -> bool:
    """True when an upstream's Set-Cookie would set, replace or delete one of the gateway's cookies."""
    name = set_cookie.partition(";")[0].partition("=")[0].strip().lower()
    if name in gateway_cookie_names():
        logger.warning("an upstream tried to set the gateway's cookie %r; not relayed", name)
        return True
    return False
