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
_SCHEMES = frozenset({"redis", "rediss", "unix", "embedded"})


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
                f"REDIS_URL: scheme must be one of redis://, rediss://, unix:// or embedded://, got {configured!r}"
            )
        return configured
    if probe_local_redis():
        return "redis://{}:{}/0".format(*DEFAULT_LOCAL_REDIS)
    return EMBEDDED_URL


def is_embedded(url: str) -> bool:
    return url.startswith("embedded:")


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url
