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
