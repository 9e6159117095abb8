"""Who the client is: the only code that reads X-Forwarded-For and X-Forwarded-Proto from a request.

The client is the TCP peer, unless the peer is in GATEWAY_TRUSTED_PROXIES: then it is the right-most entry
of X-Forwarded-For that is not itself a trusted proxy, or "unknown" when the header holds none (a proxy passing
on a client's own X-Forwarded-For, say). Without the header, it is a direct connection from the trusted host.
A client that is not a trusted proxy cannot change its address, scheme or host by sending these headers.
(gunicorn's own forwarded-header handling is switched off in gunicorn.conf.py for the same reason.)
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

#: The client of a request whose trusted proxy's X-Forwarded-For names no usable untrusted address. It is in no
#: network, so it reaches neither the admin nor /metrics; rate limits count such requests together.
UNKNOWN = "unknown"


def normalize(address: str) -> str:
    """Canonical text of an address: IPv4-mapped IPv6 (::ffff:1.2.3.4) becomes IPv4; '' if not an address."""
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return ""
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@lru_cache(maxsize=4096)
def _in_networks(address: str, networks: tuple) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks if network.version == ip.version)


def in_networks(address: str, networks: tuple) -> bool:
    return bool(networks) and _in_networks(address, networks)


def identify(environ: dict, trusted: tuple) -> tuple[str, bool, str]:
    """(client address, whether the peer is a trusted proxy, scheme the client used); `trusted` is
    GATEWAY_TRUSTED_PROXIES."""
    peer = environ.get("REMOTE_ADDR", "")
    if ":" in peer and "." in peer:
        peer = normalize(peer) or peer
    scheme = environ.get("wsgi.url_scheme", "http")
    if not trusted or not _in_networks(peer, trusted):
        return peer, False, scheme
    forwarded_for = environ.get("HTTP_X_FORWARDED_FOR", "").strip()
    if not forwarded_for:
        # A direct connection from the trusted host itself (a proxy always says whom it forwards for).
        return peer, True, _scheme(environ, scheme)
    client = UNKNOWN
    for entry in reversed(forwarded_for.split(",")):
        entry = entry.strip()
        if entry.startswith("[") and "]" in entry:  # "[2001:db8::1]:443"
            entry = entry[1 : entry.index("]")]
        elif entry.count(":") == 1:  # "203.0.113.7:41234": some balancers append the port
            entry = entry.partition(":")[0]
        address = normalize(entry)
        if not address:
            break
        if not _in_networks(address, trusted):
            client = address
            break
    return client, True, _scheme(environ, scheme)


def _scheme(environ: dict, default: str) -> str:
    proto = environ.get("HTTP_X_FORWARDED_PROTO", "").strip().lower()
    return proto if proto in ("http", "https") else default
