"""Request-target safety: what a client's path may look like before any of it is forwarded.

The forwarded URL is the upstream's base URL plus the rest of the client's path, sent byte for byte as the
client wrote it. To keep "the rest" inside the base path whatever the upstream's own decoding does, a path is
refused (400) when, after decoding any number of times, it holds a '.' or '..' segment (also as '..;'), an
empty segment, a backslash or a control character, or when decoding adds a '/' (an encoded slash, singly or
doubly encoded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

_RAW_PATH_RE = re.compile(r"^/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*$")
_MAX_DECODE_ROUNDS = 4


class BadPath(ValueError):
    """The request target cannot be forwarded safely."""


@dataclass(frozen=True, slots=True)
class Target:
    raw_path: str
    query: str
    path: str  # decoded once, for matching


def parse_target(environ: dict) -> Target:
    """Split the request target into its raw path, raw query and decoded path; raise BadPath if unsafe."""
    raw = environ.get("RAW_URI")
    if raw is None:
        # Not under gunicorn (Django's test client): rebuild the target from the decoded WSGI path.
        raw = quote(environ.get("PATH_INFO", "/"), safe="/-._~!$&'()*+,;=:@")
        if environ.get("QUERY_STRING"):
            raw += "?" + environ["QUERY_STRING"]
    if not raw.startswith("/"):
        raise BadPath("only origin-form request targets (starting with '/') are accepted")
    raw_path, _, query = raw.partition("?")
    if "#" in raw:
        raise BadPath("a request target cannot carry a fragment")
    return Target(raw_path=raw_path, query=query, path=check_path(raw_path))


def check_path(raw_path: str) -> str:
    """Validate a raw (percent-encoded) path; return it decoded once."""
    if not _RAW_PATH_RE.match(raw_path):
        raise BadPath("the path holds characters that must be percent-encoded, or a malformed %-escape")
    if "//" in raw_path:
        raise BadPath("the path holds an empty segment ('//')")
    if "%" not in raw_path:
        _check_segments(raw_path)
        return raw_path
    slashes = raw_path.count("/")
    once = decoded = unquote(raw_path, errors="surrogateescape")
    for _ in range(_MAX_DECODE_ROUNDS):
        if decoded.count("/") != slashes or "\\" in decoded:
            raise BadPath("the path holds an encoded '/' or '\\'")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
            raise BadPath("the path holds an encoded control character")
        _check_segments(decoded)
        if "%" not in decoded:
            return once
        again = unquote(decoded, errors="surrogateescape")
        if again == decoded:
            return once
        decoded = again
    raise BadPath("the path is percent-encoded too many times")


def _check_segments(path: str) -> None:
    if "/." in path:
        for segment in path.split("/"):
            # ';' starts path parameters; some servers (Tomcat) read "..;" as "..".
            if segment.partition(";")[0] in (".", ".."):
                raise BadPath("the path holds a '.' or '..' segment")
