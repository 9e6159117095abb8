"""The one place that decides which Redis the gateway uses and builds its clients.

`REDIS_URL` names a Redis server. Left unset, the gateway uses a Redis on 127.0.0.1:6379 when one answers,
and otherwise an embedded in-process store (fakeredis with Lua). The embedded store lives inside one
process, so gunicorn then runs a single worker; with DEBUG off it is refused unless
`GATEWAY_ALLOW_EMBEDDED_STORE` is set.

Two clients exist per process:

- the hot-path client (`client()`): tens-of-milliseconds connect and socket timeouts, no retries, a bounded
  pool. A Redis that is down, hung or slow costs a request at most the timeout, then the caller's failure
  policy applies.
- the operations client (`ops_client()`): second-scale timeouts for admin pages, commands and config
  publishing, where waiting a little is better than failing.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING

from django.conf import settings

from gateway_project.redis_url import is_embedded

if TYPE_CHECKING:  # redis is imported lazily: gunicorn.conf.py uses this module before gevent patches sockets
    import redis

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_clients: dict[str, redis.Redis] = {}
_pid: int | None = None
_embedded_server = None


def _embedded_client():
    import fakeredis

    global _embedded_server
    if _embedded_server is None:
        _embedded_server = fakeredis.FakeServer()
    return fakeredis.FakeRedis(server=_embedded_server, lua_modules=set())


def _build(kind: str) -> redis.Redis:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    url = settings.GATEWAY_REDIS_URL
    if is_embedded(url):
        return _embedded_client()
    if kind == "pubsub":
        return redis.Redis.from_url(
            url, socket_connect_timeout=1.0, socket_timeout=5.0, health_check_interval=10, retry=Retry(NoBackoff(), 0)
        )
    if kind == "hot":
        connect_timeout = settings.GATEWAY_REDIS_CONNECT_TIMEOUT
        socket_timeout = settings.GATEWAY_REDIS_SOCKET_TIMEOUT
        max_connections = settings.GATEWAY_REDIS_MAX_CONNECTIONS
    else:
        connect_timeout = socket_timeout = settings.GATEWAY_REDIS_OPS_TIMEOUT
        max_connections = 16
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        # Waiting for a free connection counts against the same budget as the command itself.
        timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    return redis.Redis(connection_pool=pool)


def _get(kind: str) -> redis.Redis:
    global _pid
    pid = os.getpid()
    if _pid != pid:
        # A forked child must not share its parent's sockets.
        with _lock:
            if _pid != pid:
                _clients.clear()
                _pid = pid
    client = _clients.get(kind)
    if client is None:
        with _lock:
            client = _clients.get(kind)
            if client is None:
                client = _clients[kind] = _build(kind)
    return client


def pubsub_client() -> redis.Redis:
    """A client for long-lived subscriptions: blocking reads with a health check, separate from the pools."""
    return _get("pubsub")


def client() -> redis.Redis:
    """The hot-path client: short timeouts, no retries."""
    return _get("hot")


def ops_client() -> redis.Redis:
    """The client for admin pages, management commands and config publishing."""
    return _get("ops")


def key(*parts: str) -> str:
    """A gateway key: the configured prefix, then the parts, joined by ':'."""
    return ":".join((settings.GATEWAY_REDIS_PREFIX, *parts))


def reset_clients() -> None:
    """Forget every client; tests use it after changing the Redis settings."""
    global _embedded_server
    with _lock:
        for c in _clients.values():
            c.close()
        _clients.clear()
        _embedded_server = None
