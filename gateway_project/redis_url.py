"""Which Redis the gateway uses: the configured URL, a local Redis that answers, or the embedded store.

Kept apart from `store` (and free of Django settings) because gunicorn.conf.py calls it in the master process,
before gevent patches the workers.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

EMBEDDED_URL = "embedded://"
DEFAULT_LOCAL_REDIS = ("127.0.0.1", 6379)
_SCHEMES = frozenset({"redis", "rediss", "unix", "embedded", "redis+sentinel", "rediss+sentinel"})


def probe_local_redis(timeout: float = 0.3) -> bool:
    """True when something on 127.0.0.1:6379 answers PING like a Redis."""
    try:
        with socket.create_connection(DEFAULT_LOCAL_REDIS, timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def resolve_redis_url(configured: str | None) -> str:
    """The Redis URL to use: the configured one, a local Redis that answers, or the embedded store."""
    if configured:
        scheme = urlsplit(configured).scheme
        if scheme not in _SCHEMES:
            raise ImproperlyConfigured(
                "REDIS_URL: scheme must be one of redis://, rediss://, redis+sentinel://, rediss+sentinel://, "
                f"unix:// or embedded://, got {redacted(configured)!r}"
            )
        if is_sentinel(configured) and not sentinel_service(configured):
            raise ImproperlyConfigured(
                "REDIS_URL: a Sentinel URL names the primary's service, redis+sentinel://host:26379,host:26379/"
                f"<service>[/<db>]; got {redacted(configured)!r}"
            )
        return configured
    if probe_local_redis():
        return "redis://{}:{}/0".format(*DEFAULT_LOCAL_REDIS)
    return EMBEDDED_URL


def is_embedded(url: str) -> bool:
    return url.startswith("embedded:")


def is_sentinel(url: str) -> bool:
    return urlsplit(url).scheme.endswith("+sentinel")


def hosts(url: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of a URL: several, comma-separated, for Sentinels or a cluster's seed nodes."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    default = 26379 if is_sentinel(url) else 6379
    found = []
    for item in netloc.split(","):
        if item.startswith("["):  # [v6]:port
            host, _, port = item[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = item.partition(":")
        found.append((host, int(port) if port else default))
    return found


def sentinel_service(url: str) -> str:
    """The service name a Sentinel URL's path names: redis+sentinel://h:26379/<service>/<db>."""
    return urlsplit(url).path.strip("/").partition("/")[0]


def sentinel_db(url: str) -> int:
    db = urlsplit(url).path.strip("/").partition("/")[2]
    return int(db) if db else 0


def with_host(url: str, host: str, port: int) -> str:
    """The URL for one of its hosts: credentials, TLS, path and query kept, the scheme's +sentinel dropped."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = (credentials + "@" if credentials else "") + (f"[{host}]" if ":" in host else host) + f":{port}"
    return parts._replace(scheme=parts.scheme.removesuffix("+sentinel"), netloc=netloc).geturl()


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url
