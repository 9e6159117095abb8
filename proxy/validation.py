"""Validation and normalization of the values operators type into upstreams and routes.

Shared by the model fields, the admin forms and `gateway_import`, so every way in applies the same rules.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError

# RFC 3986 pchar without percent-encoding and without ';' (matching ignores ';parameters'): a prefix is
# compared with the decoded request path.
PREFIX_RE = re.compile(r"^/[A-Za-z0-9\-._~!$&'()*+,=:@/]*$")
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
# Upstream hosts may hold '_': container and service names often do, and resolvers accept them.
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
UPSTREAM_HOST_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
BASE_PATH_RE = re.compile(r"^(/([A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})*)*$")

#: Methods a route may allow. CONNECT is a forward-proxy verb and TRACE reflects credentials (XST).
ROUTE_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def normalize_base_url(value: str) -> str:
    """Check an upstream base URL and return it in canonical form (lower-case scheme and host, no trailing /)."""
    value = (value or "").strip()
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValidationError(f"Not a valid URL: {exc}.", code="invalid_url") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise ValidationError("The scheme must be http or https.", code="invalid_scheme")
    if not parts.hostname:
        raise ValidationError("The URL needs a host.", code="no_host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValidationError("Credentials in the URL (user:password@) are not allowed.", code="userinfo")
    if parts.query or value.rstrip().endswith("?"):
        raise ValidationError("A base URL cannot have a query string.", code="query")
    if parts.fragment or "#" in value:
        raise ValidationError("A base URL cannot have a fragment.", code="fragment")
    if port == 0:
        raise ValidationError("The port must be between 1 and 65535.", code="invalid_port")
    path = parts.path.rstrip("/")
    if not BASE_PATH_RE.match(path) or any(seg in (".", "..") for seg in path.split("/")) or "//" in path:
        raise ValidationError(
            "The path may hold only URL path characters, without empty, '.' or '..' segments.", code="invalid_path"
        )
    host = parts.hostname.lower()
    if not _valid_upstream_host(host):
        raise ValidationError("The host must be a DNS name or an IP address.", code="invalid_host")
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme.lower()}://{netloc}{path}"


def _valid_upstream_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(UPSTREAM_HOST_RE.match(host))
    return True


def normalize_prefix(value: str, reserved: tuple[str, ...] = ()) -> str:
    """Check a route path prefix and return it without a trailing slash ('/' stays '/')."""
    value = (value or "").strip()
    if not value.startswith("/"):
        raise ValidationError("The path prefix must start with '/'.", code="no_slash")
    if not PREFIX_RE.match(value):
        raise ValidationError(
            "The path prefix may hold letters, digits and -._~!$&'()*+,=:@/ only (no %, ;, ? or #).",
            code="invalid_prefix",
        )
    if "//" in value:
        raise ValidationError("The path prefix cannot contain an empty segment ('//').", code="empty_segment")
    if any(seg in (".", "..") for seg in value.split("/")):
        raise ValidationError("The path prefix cannot contain '.' or '..' segments.", code="dot_segment")
    prefix = value.rstrip("/") or "/"
    for own in reserved:
        if prefix == own or prefix.startswith(own + "/"):
            raise ValidationError(f"{own} is served by the gateway itself and cannot be routed.", code="reserved")
    return prefix


def normalize_host(value: str) -> str:
    """A route's host: a lower-case DNS name, optionally starting with '*.', without port; '' for any host."""
    value = (value or "").strip().lower().rstrip(".")
    if not value:
        return ""
    if not HOSTNAME_RE.match(value):
        raise ValidationError(
            "Enter a host name such as api.example.com or *.example.com, without scheme, port or path.",
            code="invalid_host",
        )
    return value


def normalize_methods(value: str) -> str:
    """A comma-separated, de-duplicated, sorted method list; '' means every method."""
    tokens = {t.strip().upper() for t in (value or "").replace(" ", ",").split(",") if t.strip()}
    unknown = sorted(tokens - set(ROUTE_METHODS))
    if unknown:
        raise ValidationError(
            f"Unknown or refused method(s): {', '.join(unknown)}. Allowed: {', '.join(ROUTE_METHODS)}.",
            code="invalid_method",
        )
    return ",".join(m for m in ROUTE_METHODS if m in tokens)


def normalize_address(value: str) -> str:
    """A target's host:port ([v6]:port for IPv6), lower-cased; the port is required."""
    value = (value or "").strip().lower()
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValidationError("Enter host:port, e.g. 10.0.0.5:8080 or [2001:db8::5]:8080.", code="invalid_address")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValidationError("Not an IPv6 address in brackets.", code="invalid_address") from None
        return f"[{host}]:{int(port)}"
    if ":" in host or not _valid_upstream_host(host):
        raise ValidationError(
            "The host must be a DNS name or an IP address (IPv6 in brackets).", code="invalid_address"
        )
    return f"{host}:{int(port)}"


def normalize_healthy_statuses(value: str) -> str:
    """Statuses an active health check accepts: a comma-separated list of 200-399."""
    statuses = set()
    for token in (t.strip() for t in (value or "").split(",")):
        if not token:
            continue
        if not (token.isdigit() and len(token) == 3 and 200 <= int(token) <= 399):
            raise ValidationError(f"{token!r} is not a status between 200 and 399.", code="invalid_status")
        statuses.add(int(token))
    if not statuses:
        raise ValidationError("List at least one status, e.g. 200.", code="no_status")
    return ",".join(str(s) for s in sorted(statuses))


def normalize_check_path(value: str) -> str:
    """An active health check's path: empty (no checks), or an absolute path that stays below the base path."""
    value = (value or "").strip()
    if not value:
        return ""
    path = value.partition("?")[0]
    if not path.startswith("/") or not BASE_PATH_RE.match(path.rstrip("/") or "") or "//" in path:
        raise ValidationError("Enter a path such as /healthz.", code="invalid_path")
    if any(seg in (".", "..") for seg in path.split("/")) or "#" in value:
        raise ValidationError("The path cannot hold '.' or '..' segments or a fragment.", code="invalid_path")
    return value


_HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,99}$")


def normalize_header_name(value: str) -> str:
    """A header name of letters, digits and '-', as typed; '' for none."""
    value = (value or "").strip()
    if value and not _HEADER_NAME_RE.match(value):
        raise ValidationError("A header name of letters, digits and '-', e.g. X-Request-Timeout-Ms.", code="header")
    return value


#: Tokens a route may allow in Upgrade (RFC 9110 §7.8): a token, optionally /version.
_PROTOCOL_RE = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+(/[a-z0-9!#$%&'*+.^_`|~-]+)?$")


def normalize_upgrade_protocols(value: str) -> str:
    """A comma-separated, lower-case, sorted list of upgrade protocols; '' for none.

    `h2c` is refused: an upgrade to cleartext HTTP/2 through a proxy lets a client send requests the gateway never
    sees (h2c smuggling), and the gateway speaks HTTP/1.1 to upstreams anyway.
    """
    tokens = {t.strip().lower() for t in (value or "").split(",") if t.strip()}
    bad = sorted(t for t in tokens if not _PROTOCOL_RE.match(t))
    if bad:
        raise ValidationError(f"Not a protocol token: {', '.join(bad)}.", code="invalid_protocol")
    if any(t.split("/")[0] == "h2c" for t in tokens):
        raise ValidationError("h2c cannot be proxied as an upgrade (it would hide requests from the gateway).")
    return ",".join(sorted(tokens))
