"""Request-target safety: what a client's path may look like before any of it is forwarded.

The forwarded URL is the upstream's base URL plus the rest of the client's path, sent byte for byte as the
client wrote it. To keep "the rest" inside the base path whatever the upstream's own decoding does, a path is
refused (400) when, decoded, it holds a '.' or '..' segment (also as '..;'), an empty segment, a backslash or a
control character, when decoding adds a '/' (an encoded slash), or when it is percent-encoded twice; and when
its Unicode normalization (NFKC), which some servers apply after decoding, does any of that (the fullwidth
forms of '%2e' become '%2e'). Matching ignores ';parameters', as many servers do.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote, unquote

_RAW_PATH_RE = re.compile(r"^/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*$")
_ESCAPE_RE = re.compile(r"%[0-9A-Fa-f]{2}")


class BadPath(ValueError):
    """The request target cannot be forwarded safely."""


@dataclass(frozen=True, slots=True)
class Target:
    raw_path: str
    query: str
    path: str  # for matching: decoded once, ';parameters' removed from every segment
    folded: str | None = None  # `path` after Unicode normalization (NFKC), when that changes it


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
    path, folded = _check(raw_path)
    if ";" in path:
        # Servers such as Tomcat and Spring ignore ';parameters': /admin;x=1/users must match as /admin/users.
        path = _without_parameters(path)
        if folded is not None:
            folded = _without_parameters(folded)
    return Target(raw_path=raw_path, query=query, path=path, folded=folded)


def _without_parameters(path: str) -> str:
    return "/".join(segment.partition(";")[0] for segment in path.split("/"))


def check_path(raw_path: str) -> str:
    """Validate a raw (percent-encoded) path; return it decoded once."""
    return _check(raw_path)[0]


def _check(raw_path: str) -> tuple[str, str | None]:
    """(the path decoded once, the same after NFKC normalization if that changes it); BadPath if unsafe."""
    if not _RAW_PATH_RE.match(raw_path):
        raise BadPath("the path holds characters that must be percent-encoded, or a malformed %-escape")
    if "//" in raw_path:
        raise BadPath("the path holds an empty segment ('//')")
    if "%" not in raw_path:
        _check_segments(raw_path)
        return raw_path, None
    slashes = raw_path.count("/")
    once = unquote(raw_path, errors="surrogateescape")
    if once.count("/") != slashes or "\\" in once:
        raise BadPath("the path holds an encoded '/' or '\\'")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in once):
        raise BadPath("the path holds an encoded control character")
    if _ESCAPE_RE.search(once):
        # Double encoding (%2561 for 'a') only serves to look different to the gateway than to an upstream
        # that decodes twice.
        raise BadPath("the path is percent-encoded more than once")
    _check_segments(once)
    if once.isascii():
        return once, None
    # Fullwidth dots, slashes and percent signs become '.', '/' and '%' under Unicode normalization (NFKC),
    # which some servers apply after decoding: the normalized path must pass the same checks.
    folded = unicodedata.normalize("NFKC", once)
    if folded.count("/") != slashes or "\\" in folded:
        raise BadPath("the path holds a character that normalizes to '/' or '\\'")
    if _ESCAPE_RE.search(folded):
        raise BadPath("the path holds characters that normalize to a %-escape")
    _check_segments(folded)
    return once, (folded if folded != once else None)


def _check_segments(path: str) -> None:
    if "/." in path:
        for segment in path.split("/"):
            # ';' starts path parameters; some servers (Tomcat) read "..;" as "..".
            if segment.partition(";")[0] in (".", ".."):
                raise BadPath("the path holds a '.' or '..' segment")
