"""Header hygiene in both directions (RFC 9110 §7.6.1) and the headers the gateway owns.

Hop-by-hop headers, and every header a `Connection` header names, describe one connection and are never
passed on. Headers that say who the client is or how it reached us are the gateway's: a client's values are
replaced, never forwarded, except that a trusted proxy's `X-Forwarded-*` chain is extended.
"""

from __future__ import annotations

from gunicorn.http.message import TOKEN_RE
from gunicorn.http.wsgi import HEADER_VALUE_RE
from urllib3.util import SKIP_HEADER

from gateway_project.client_ip import normalize
from gateway_project.http import environ_key
from proxy.cookies import sets_gateway_cookie, without_gateway_cookies

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

#: Request headers a client may not set: the gateway writes them (or, for Expect, already answered them), or
#: upstreams commonly trust them from their proxy to say who the client is, how it connected or which URL it
#: asked for. Every X-Forwarded-* header is dropped too (see FORWARDED_FAMILY).
GATEWAY_REQUEST_HEADERS = frozenset(
    {
        "host",
        "forwarded",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-cluster-client-ip",
        "x-original-forwarded-for",
        "x-original-url",
        "x-original-host",
        "x-rewrite-url",
        "x-request-id",
        "via",
        "expect",
    }
)
#: X-Forwarded-For, -Proto, -Host, -Port, -Prefix, -Ssl, -Scheme, -Server, -Uri, -Client-Cert, ...
FORWARDED_FAMILY = "HTTP_X_FORWARDED_"

#: Upstream response headers replaced by the gateway's own (gunicorn writes Server and Date).
GATEWAY_RESPONSE_HEADERS = frozenset({"server", "date", "x-request-id"})
#: The legacy rate-limit fields: when the gateway sends any, none of the upstream's go with them, so a client
#: never reads a mixture of two limiters.
LEGACY_RATELIMIT_PREFIX = "x-ratelimit-"


_DROP_REQUEST_KEYS = frozenset(environ_key(n) for n in HOP_BY_HOP | GATEWAY_REQUEST_HEADERS)
_DROP_RESPONSE = HOP_BY_HOP | GATEWAY_RESPONSE_HEADERS
_NAME_CACHE: dict[str, str] = {}
_NAME_CACHE_MAX = 4096


def _header_name(environ_key: str) -> str:
    name = _NAME_CACHE.get(environ_key)
    if name is None:
        name = environ_key[5:].replace("_", "-").title()
        if len(_NAME_CACHE) < _NAME_CACHE_MAX:
            _NAME_CACHE[environ_key] = name
    return name


def connection_tokens(value: str | None) -> set[str]:
    """Lower-case header names listed in a Connection header."""
    if not value:
        return set()
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def request_drop_keys(*names: str) -> frozenset[str]:
    """The environ keys of request headers never forwarded: hop-by-hop, the gateway's own, and `names`."""
    return _DROP_REQUEST_KEYS | {environ_key(name) for name in names}


def upstream_request_headers(
    environ: dict,
    *,
    drop: frozenset[str],
    host_header: str,
    client_ip: str,
    peer_trusted: bool,
    scheme: str,
    request_id: str,
    via: str,
    prefix: str | None,
    consumer: tuple[str, str] | None = None,
) -> dict[str, str]:
    """The headers sent upstream for this request (content framing headers are added by the caller).

    `drop` comes from `request_drop_keys` (compiled per route); `consumer` is (header name, consumer name).
    """
    connection = environ.get("HTTP_CONNECTION")
    if connection:
        drop = drop | {environ_key(token) for token in connection_tokens(connection)}
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_") and key not in drop and not key.startswith(FORWARDED_FAMILY):
            headers[_header_name(key)] = value
    cookie = headers.get("Cookie")
    if cookie:
        cookie = without_gateway_cookies(cookie)
        if cookie:
            headers["Cookie"] = cookie
        else:
            del headers["Cookie"]
    content_type = environ.get("CONTENT_TYPE")
    if content_type:
        headers["Content-Type"] = content_type

    prior = environ.get("HTTP_X_FORWARDED_FOR") if peer_trusted else None
    if prior:
        peer = environ.get("REMOTE_ADDR", "")
        headers["X-Forwarded-For"] = f"{prior}, {normalize(peer) or peer}"
    else:
        headers["X-Forwarded-For"] = client_ip
    headers["X-Forwarded-Proto"] = scheme
    forwarded_host = environ.get("HTTP_X_FORWARDED_HOST") if peer_trusted else None
    headers["X-Forwarded-Host"] = forwarded_host or environ.get("HTTP_HOST", "")
    if prefix:
        headers["X-Forwarded-Prefix"] = prefix
    protocol = environ.get("SERVER_PROTOCOL", "HTTP/1.1")[5:]
    prior_via = environ.get("HTTP_VIA")
    headers["Via"] = f"{prior_via}, {protocol} {via}" if prior_via else f"{protocol} {via}"
    headers["X-Request-ID"] = request_id
    headers["Host"] = host_header
    if consumer is not None:
        headers[consumer[0]] = consumer[1]
    # Without these, http.client would add its own User-Agent and Accept-Encoding.
    headers.setdefault("User-Agent", SKIP_HEADER)
    headers.setdefault("Accept-Encoding", SKIP_HEADER)
    return headers


#: What a response field may hold (RFC 9110 §5.1, §5.5): gunicorn's own rules, which it applies before it writes a
#: response (a token for the name; blanks, visible characters and obs-text for the value and a reason phrase).
_TOKEN = TOKEN_RE.fullmatch
_FIELD_TEXT = HEADER_VALUE_RE.fullmatch


class InvalidUpstreamHeader(ValueError):
    """An upstream response field the gateway cannot relay (a control character, a name that is no token)."""


def client_response_headers(upstream_headers) -> list[tuple[str, str]]:
    """The upstream's response headers as (name, value) lines, repeated ones (Set-Cookie) kept apart; never a
    Set-Cookie for one of the gateway's own cookies.

    Raises InvalidUpstreamHeader for a relayed field that is not valid HTTP: the server would refuse to write
    it, after the upstream's answer was taken (nginx answers such a response with 502 too)."""
    drop = _DROP_RESPONSE
    connection = upstream_headers.get("Connection")
    if connection:
        drop = drop | connection_tokens(connection)
    lines = [
        (name, value)
        for name, value in upstream_headers.iteritems()
        if name.lower() not in drop and not (name.lower() == "set-cookie" and sets_gateway_cookie(value))
    ]
    for name, value in lines:
        check_field(name, value)
    return lines


def check_field(name: str, value: str) -> None:
    """Raise InvalidUpstreamHeader unless `name: value` is a field the gateway can write to a client."""
    if not _TOKEN(name) or not _FIELD_TEXT(value):
        raise InvalidUpstreamHeader(f"the upstream sent a header field that is not valid HTTP: {name!r}")


def relayable_reason(reason: str | None) -> str | None:
    """The upstream's reason phrase, or None (the status code's standard phrase) when it holds what a status line
    may not."""
    if not reason or not _FIELD_TEXT(reason):
        return None
    return reason


def merge_response_headers(own, upstream_lines: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The lines of a relayed response: the gateway's own fields, then the upstream's, minus its copies of any
    field the gateway set (RateLimit, X-RateLimit-*, X-Request-ID, ...); Server-Timing becomes one list, the
    gateway's entries first, then the upstream's whose names the gateway does not use."""
    lines = list(own.items())
    if not upstream_lines:
        return lines
    owned = {name.lower() for name in own}
    legacy = any(name.startswith(LEGACY_RATELIMIT_PREFIX) for name in owned)
    timings: list[str] = []
    relayed = []
    for name, value in upstream_lines:
        lower = name.lower()
        if lower in owned or (legacy and lower.startswith(LEGACY_RATELIMIT_PREFIX)):
            if lower == "server-timing":
                timings.append(value)
            continue
        relayed.append((name, value))
    if timings:
        own_timing = own["Server-Timing"]
        taken = {_metric_name(entry) for entry in list_members(own_timing)}
        extra = [entry for value in timings for entry in list_members(value) if _metric_name(entry) not in taken]
        if extra:
            merged = ", ".join([own_timing, *extra])
            lines = [(name, merged if name.lower() == "server-timing" else value) for name, value in lines]
    return lines + relayed


def list_members(value: str) -> list[str]:
    """The members of a comma-separated field value, a comma inside a quoted string kept (RFC 9110 §5.6.1)."""
    members, start, quoted, escaped = [], 0, False, False
    for index, char in enumerate(value):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            members.append(value[start:index].strip())
            start = index + 1
    members.append(value[start:].strip())
    return [member for member in members if member]


def _metric_name(entry: str) -> str:
    return entry.partition(";")[0].strip().lower()
