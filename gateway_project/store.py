"""The one place that decides which Redis the gateway uses and builds its clients.

`REDIS_URL` names a Redis server. Left unset, the gateway uses a Redis on 127.0.0.1:6379 when one answers,
and otherwise an embedded in-process store (fakeredis with Lua). The embedded store lives inside one
process, so gunicorn then runs a single worker; with DEBUG off it is refused unless
`GATEWAY_ALLOW_EMBEDDED_STORE` is set.

Three clients exist per process (and one for subscriptions):

- the hot-path client (`client()`): tens-of-milliseconds connect and socket timeouts, no retries, a bounded
  pool. A Redis that is down, hung or slow costs a request at most the timeout, then the caller's failure
  policy applies.
- the operations client (`ops_client()`): second-scale timeouts for commands, admin actions and config
  publishing, where waiting a little is better than failing;
- the page client (`page_client()`): a quarter-second budget for pages that only read, which say that Redis
  is unavailable rather than make an operator wait.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING

from django.conf import settings

from gateway_project.http import still_open
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
    elif kind == "page":
        connect_timeout = socket_timeout = settings.GATEWAY_REDIS_PAGE_TIMEOUT
        max_connections = settings.GATEWAY_REDIS_OPS_MAX_CONNECTIONS
    else:
        connect_timeout = socket_timeout = settings.GATEWAY_REDIS_OPS_TIMEOUT
        max_connections = settings.GATEWAY_REDIS_OPS_MAX_CONNECTIONS
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
                _connection_stacks.clear()
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
    """The client for management commands, admin actions and config publishing."""
    return _get("ops")


def page_client() -> redis.Redis:
    """The client for pages that read Redis: a short budget, so a mute Redis costs a page a fraction of a second."""
    return _get("page")


class Script:
    """A Lua script, loaded into Redis once and run by its SHA-1 (EVALSHA), loaded again after a restart.

    Run on the hot path (no `client`): EVALSHA on one of this worker's idle connections. Measured on this
    machine under gevent, redis-py's connection pool costs about 30 us per call (a readiness poll of the socket,
    observability hooks, a lock) and its command layer about 9 us more; for a script run on every proxied
    request that was a fifth of the gateway's CPU per request. The connections are still redis-py's (protocol,
    hiredis parsing, the hot-path timeouts); only the checkout is this short stack. A connection that saw an
    error is closed, never reused. With a `client` (operations, tests, the embedded store) it goes through it.
    """

    def __init__(self, text: str) -> None:
        import hashlib

        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1

    def __call__(self, keys: list[str], args: list[str], *, client=None):
        from redis.exceptions import NoScriptError, ResponseError

        if client is None and is_embedded(settings.GATEWAY_REDIS_URL):
            client = _get("hot")
        if client is not None:
            try:
                return client.evalsha(self.sha, len(keys), *keys, *args)
            except NoScriptError:
                client.script_load(self.text)
                return client.evalsha(self.sha, len(keys), *keys, *args)
        connections = _hot_connections()
        connection = connections.acquire()
        try:
            try:
                connection.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
                reply = connection.read_response()
            except NoScriptError:
                # After a Redis restart (or on a new server) the script must be loaded again, once.
                connection.send_command("SCRIPT", "LOAD", self.text)
                connection.read_response()
                connection.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
                reply = connection.read_response()
        except ResponseError:
            connections.release(connection)
            raise
        except BaseException:
            connections.discard(connection)
            raise
        connections.release(connection)
        return reply


class _HotConnections:
    """Idle connections of this worker, last in first out; at most `limit` in use at once.

    A caller waits for a free connection as long as a command may take (GATEWAY_REDIS_SOCKET_TIMEOUT), then
    gets redis.ConnectionError and the failure mode. An idle connection is checked with a non-blocking peek
    before reuse, so one that Redis closed (a restart, an idle timeout) is replaced instead of failing a request.
    """

    def __init__(self, pool, limit: int, wait: float) -> None:
        self.pool = pool  # the redis-py pool whose settings the connections take; it never holds them
        self.connection_class = pool.connection_class
        self.kwargs = dict(pool.connection_kwargs)
        self.slots = threading.BoundedSemaphore(limit)
        self.limit = limit
        self.wait = wait
        self.idle: list = []

    def acquire(self):
        if not self.slots.acquire(timeout=self.wait):
            import redis

            raise redis.ConnectionError(f"all {self.limit} hot-path Redis connections stayed busy")
        while self.idle:
            connection = self.idle.pop()
            if still_open(getattr(connection, "_sock", None)):
                return connection
            connection.disconnect()
        return self.connection_class(**self.kwargs)

    def release(self, connection) -> None:
        self.idle.append(connection)
        self.slots.release()

    def discard(self, connection) -> None:
        connection.disconnect()
        self.slots.release()


def _hot_connections() -> _HotConnections:
    hot = client()
    connections = _connection_stacks.get(id(hot))
    if connections is None or connections.pool is not hot.connection_pool:
        connections = _connection_stacks[id(hot)] = _HotConnections(
            hot.connection_pool, settings.GATEWAY_REDIS_MAX_CONNECTIONS, settings.GATEWAY_REDIS_SOCKET_TIMEOUT
        )
    return connections


_connection_stacks: dict[int, _HotConnections] = {}


def key(*parts) -> str:
    """A gateway key: the configured prefix, then the parts, joined by ':'."""
    return ":".join((settings.GATEWAY_REDIS_PREFIX, *map(str, parts)))


def tagged_key(tag: tuple, *parts) -> str:
    """A key whose prefix and `tag` are a Redis Cluster hash tag, '{<prefix>:<tag>}:<parts>': keys that one
    script touches together share their tag, so they share a slot."""
    return ":".join((f"{{{key(*tag)}}}", *map(str, parts)))


def reset_clients() -> None:
    """Forget every client; tests use it after changing the Redis settings."""
    global _embedded_server
    with _lock:
        for c in _clients.values():
            c.close()
        for stack in _connection_stacks.values():
            for connection in stack.idle:
                connection.disconnect()
        _clients.clear()
        _connection_stacks.clear()
        _embedded_server = None
