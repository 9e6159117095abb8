"""The one place that decides which Redis the gateway uses and builds its clients.

`REDIS_URL` names one of:

- a Redis server (`redis://`, `rediss://`, `unix://`);
- a Redis Cluster, by any of its nodes (`redis://host:port`, or several seeds `redis://h1:7000,h2:7001`): a
  node that says `cluster_enabled:1` makes the gateway a cluster client, so pointing the URL at one node of a
  cluster works instead of every command failing on another node's slot;
- a primary watched by Sentinels (`redis+sentinel://s1:26379,s2:26379/<service>[/<db>]`): the primary is
  asked of the Sentinels at every (re)connection, so a failover is followed;
- left unset, a Redis on 127.0.0.1:6379 when one answers, and otherwise an embedded in-process store (fakeredis
  with Lua). The embedded store lives inside one process, so gunicorn then runs a single worker; with DEBUG off
  it is refused unless `GATEWAY_ALLOW_EMBEDDED_STORE` is set.

Which of the first two a `redis://` URL is, is asked of the server once per process, on first use.

Clients per process:

- the hot path (`Script` without a client): one pipelined connection per Redis node and worker
  (`redis_pipe.Pipe`), tens-of-milliseconds timeouts. A Redis that is down, hung or slow costs a request at
  most the timeout, then the caller's failure policy applies; the worker's own load never does.
- `client()`: redis-py with the same short timeouts, for the configuration watcher and `/readyz`.
- `ops_client()`: second-scale timeouts for commands, admin actions and config publishing, where waiting a
  little is better than failing.
- `page_client()`: a quarter-second budget for pages that only read, which say that Redis is unavailable
  rather than make an operator wait.
- `pubsub_client()`: long-lived subscriptions.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.conf import settings

from gateway_project import redis_url
from gateway_project.redis_url import is_embedded

if TYPE_CHECKING:  # redis is imported lazily: gunicorn.conf.py uses this module before gevent patches sockets
    import redis

    from gateway_project.redis_pipe import Pipe

logger = logging.getLogger(__name__)

SINGLE, CLUSTER, SENTINEL, EMBEDDED = "single", "cluster", "sentinel", "embedded"
#: A cluster's slot map is read again at most this often, after a connection to a node failed or a MOVED.
CLUSTER_REFRESH_EVERY = 0.5
#: After failing to reach Redis to learn what it is, callers fail at once for this long instead of each trying.
DISCOVERY_RETRY = 0.2

_lock = threading.RLock()
_topology: Topology | None = None
_discovery_failed: tuple[float, Exception] | None = None
_embedded_server = None


def _forget_after_fork() -> None:
    """A forked child (a gunicorn worker) must not share its parent's sockets or threads: it learns its own
    topology. Done once at the fork, not by asking the kernel for the process ID on every call (twice per
    proxied request, 2 of its system calls)."""
    global _lock, _topology, _discovery_failed
    _lock, _topology, _discovery_failed = threading.RLock(), None, None


os.register_at_fork(after_in_child=_forget_after_fork)


class Topology:
    """What REDIS_URL turned out to be in this process: its mode, its redis-py clients, its hot-path pipes."""

    def __init__(self, mode: str, url: str) -> None:
        self.mode = mode
        self.url = url
        self.clients: dict[str, Any] = {}
        self.pipes: dict[str, Pipe] = {}
        self.slots: list[str | None] = []  # cluster: slot -> the primary's node name
        self._refreshed_at = 0.0
        self._refreshing = False

    # --- redis-py clients ----------------------------------------------------------------------------------

    def client(self, kind: str):
        found = self.clients.get(kind)
        if found is None:
            with _lock:
                found = self.clients.get(kind)
                if found is None:
                    found = self.clients[kind] = self._build(kind)
        return found

    def _timeouts(self, kind: str) -> dict:
        if kind == "hot":
            return {
                "socket_connect_timeout": settings.GATEWAY_REDIS_CONNECT_TIMEOUT,
                "socket_timeout": settings.GATEWAY_REDIS_SOCKET_TIMEOUT,
                "max_connections": settings.GATEWAY_REDIS_MAX_CONNECTIONS,
            }
        if kind == "pubsub":
            return {"socket_connect_timeout": 1.0, "socket_timeout": 5.0, "health_check_interval": 10}
        if kind == "page":
            return {
                "socket_connect_timeout": settings.GATEWAY_REDIS_PAGE_TIMEOUT,
                "socket_timeout": settings.GATEWAY_REDIS_PAGE_TIMEOUT,
                "max_connections": settings.GATEWAY_REDIS_OPS_MAX_CONNECTIONS,
            }
        return {
            "socket_connect_timeout": settings.GATEWAY_REDIS_OPS_TIMEOUT,
            "socket_timeout": settings.GATEWAY_REDIS_OPS_TIMEOUT,
            "max_connections": settings.GATEWAY_REDIS_OPS_MAX_CONNECTIONS,
        }

    def _build(self, kind: str):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if self.mode == EMBEDDED:
            return _embedded_client()
        timeouts = self._timeouts(kind)
        if self.mode == CLUSTER:
            from redis.cluster import ClusterNode, RedisCluster

            seeds = [ClusterNode(host, port) for host, port in redis_url.hosts(self.url)]
            first = redis_url.with_host(self.url, seeds[0].host, seeds[0].port)
            options = {k: v for k, v in redis.connection.parse_url(first).items() if k not in ("host", "port", "db")}
            timeouts.pop("health_check_interval", None)
            return RedisCluster(
                startup_nodes=seeds,
                retry=Retry(NoBackoff(), 1 if kind == "ops" else 0),
                socket_keepalive=True,
                **options,
                **timeouts,
            )
        if self.mode == SENTINEL:
            from redis.sentinel import Sentinel

            sentinels = redis_url.hosts(self.url)
            options = _data_node_options(self.url)
            max_connections = timeouts.pop("max_connections", None)
            sentinel = Sentinel(
                sentinels,
                sentinel_kwargs={"socket_timeout": timeouts["socket_timeout"], "socket_connect_timeout": 1.0},
            )
            pool_options = {"max_connections": max_connections} if max_connections else {}
            return sentinel.master_for(
                redis_url.sentinel_service(self.url),
                retry=Retry(NoBackoff(), 0),
                socket_keepalive=True,
                **options,
                **timeouts,
                **pool_options,
            )
        if kind == "pubsub":
            return redis.Redis.from_url(self.url, retry=Retry(NoBackoff(), 0), **timeouts)
        max_connections = timeouts.pop("max_connections")
        pool = redis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=max_connections,
            # Waiting for a free connection counts against the same budget as the command itself.
            timeout=timeouts["socket_timeout"],
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            **timeouts,
        )
        return redis.Redis(connection_pool=pool)

    # --- the hot path --------------------------------------------------------------------------------------

    def pipe_for(self, key: str | None) -> Pipe:
        """The pipe of the node that serves `key` (any node for a call without keys)."""
        if self.mode != CLUSTER:
            return self._pipe("main", lambda: _connection_maker(self.client("hot").connection_pool))
        if not self.slots:
            self._load_slots()
        name = self.slots[_slot(key)] if key is not None else next(n for n in self.slots if n is not None)
        if name is None:
            import redis

            self.refresh()
            raise redis.ConnectionError(f"no Redis Cluster node serves the slot of {key!r}")
        return self.node_pipe(name)

    def node_pipe(self, name: str) -> Pipe:
        return self._pipe(name, lambda: self._node_connection_maker(name))

    def _pipe(self, name: str, maker: Callable[[], Callable[[], Any]]) -> Pipe:
        found = self.pipes.get(name)
        if found is None:
            from gateway_project.redis_pipe import Pipe

            with _lock:
                found = self.pipes.get(name)
                if found is None:
                    on_failure = self._on_pipe_failure if self.mode == CLUSTER else None
                    found = self.pipes[name] = Pipe(
                        maker(),
                        timeout=settings.GATEWAY_REDIS_SOCKET_TIMEOUT,
                        window=settings.GATEWAY_REDIS_PIPELINE_WINDOW,
                        on_failure=on_failure,
                    )
        return found

    def _node_connection_maker(self, name: str) -> Callable[[], Any]:
        cluster = self.client("hot")
        node = cluster.get_node(node_name=name)
        if node is None:  # a node only a MOVED told us of: the settings of any node, with its address
            host, _, port = name.rpartition(":")
            template = next(iter(cluster.get_nodes())).redis_connection.connection_pool
            kwargs = {**template.connection_kwargs, "host": host, "port": int(port), "driver_info": None}
            return lambda: template.connection_class(**kwargs)
        return _connection_maker(node.redis_connection.connection_pool)

    def partition(self, keys: Sequence[str]) -> list[list[int]]:
        """The indexes of `keys`, grouped by the calls that must carry them: one group, or one per slot."""
        if self.mode != CLUSTER or len(keys) < 2:
            return [list(range(len(keys)))]
        groups: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            groups.setdefault(_slot(key), []).append(index)
        return list(groups.values())

    # --- the cluster's slot map ----------------------------------------------------------------------------

    def _load_slots(self) -> None:
        cluster = self.client("hot")
        slots: list[str | None] = [None] * 16384
        for slot, nodes in cluster.nodes_manager.slots_cache.items():
            if nodes:
                slots[slot] = nodes[0].name
        self.slots = slots

    def _on_pipe_failure(self, error: BaseException) -> None:
        self.refresh()

    def moved(self, slot: int, name: str) -> None:
        """Redis said a slot lives elsewhere now (a failover, a resharding)."""
        if self.slots:
            self.slots[slot] = name
        self.refresh()

    def refresh(self) -> None:
        """Read the cluster's slot map again, in the background, at most every CLUSTER_REFRESH_EVERY."""
        now = time.monotonic()
        if self.mode != CLUSTER or self._refreshing or now - self._refreshed_at < CLUSTER_REFRESH_EVERY:
            return
        self._refreshing, self._refreshed_at = True, now
        threading.Thread(target=self._refresh, name="gateway-redis-cluster-refresh", daemon=True).start()

    def _refresh(self) -> None:
        from redis.exceptions import RedisError

        try:
            self.client("hot").nodes_manager.initialize()
            self._load_slots()
        except RedisError as exc:
            logger.warning("reading the Redis Cluster's slot map failed", extra={"error": str(exc)})
        finally:
            self._refreshing = False
            self._refreshed_at = time.monotonic()

    def uncovered_slots(self) -> int:
        if self.mode != CLUSTER:
            return 0
        if not self.slots:
            self._load_slots()
        return sum(1 for name in self.slots if name is None)

    def primaries(self) -> list[str]:
        """Names of the nodes the hot path writes to (one for anything but a cluster)."""
        if self.mode != CLUSTER:
            return ["main"]
        if not self.slots:
            self._load_slots()
        return sorted({name for name in self.slots if name is not None})

    def close(self) -> None:
        for pipe in self.pipes.values():
            pipe.close()
        for client in self.clients.values():
            client.close()


def _connection_maker(pool) -> Callable[[], Any]:
    """New connections with a redis-py pool's class and settings (timeouts, TLS, AUTH, Sentinel lookup); the
    pool itself never holds them. Without CLIENT SETINFO: two round trips less when (re)connecting, each of
    which a worker busy with a burst might take too long to read."""
    kwargs = {**pool.connection_kwargs, "driver_info": None}
    return lambda: pool.connection_class(**kwargs)


def _data_node_options(url: str) -> dict:
    """Credentials, database and TLS of a Sentinel URL, for the data nodes the Sentinels name."""
    import redis

    host, port = redis_url.hosts(url)[0]
    plain = urlsplit(redis_url.with_host(url, host, port))._replace(path="").geturl()
    options = {k: v for k, v in redis.connection.parse_url(plain).items() if k not in ("host", "port", "path")}
    if options.pop("connection_class", None) is not None:
        options["ssl"] = True
    options["db"] = redis_url.sentinel_db(url)
    return options


def _slot(key: str) -> int:
    from redis.crc import key_slot

    return key_slot(key.encode())


def _embedded_client():
    import fakeredis

    global _embedded_server
    if _embedded_server is None:
        _embedded_server = fakeredis.FakeServer()
    return fakeredis.FakeRedis(server=_embedded_server, lua_modules=set())


def _discover(url: str) -> str:
    """Ask the server named by a redis:// URL whether it is a cluster node."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    if len(redis_url.hosts(url)) > 1:
        return CLUSTER
    timeout = settings.GATEWAY_REDIS_OPS_TIMEOUT
    probe = redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )
    try:
        return CLUSTER if probe.info("cluster").get("cluster_enabled") else SINGLE
    finally:
        probe.close()


def topology() -> Topology:
    """This process's Topology; learnt on first use (raises redis.RedisError while Redis cannot be asked)."""
    global _topology, _discovery_failed
    found = _topology
    if found is not None and found.url == settings.GATEWAY_REDIS_URL:
        return found
    with _lock:
        url = settings.GATEWAY_REDIS_URL
        if _topology is not None and _topology.url == url:
            return _topology
        if _discovery_failed is not None and time.monotonic() - _discovery_failed[0] < DISCOVERY_RETRY:
            raise _discovery_failed[1]
        from redis.exceptions import RedisError

        if is_embedded(url):
            mode = EMBEDDED
        elif redis_url.is_sentinel(url):
            mode = SENTINEL
        elif url.startswith("unix:"):
            mode = SINGLE
        else:
            try:
                mode = _discover(url)
            except RedisError as exc:
                _discovery_failed = (time.monotonic(), exc)
                raise
        _discovery_failed = None
        _topology = Topology(mode, url)
        if mode == CLUSTER:
            logger.info("REDIS_URL names a Redis Cluster node; using the cluster")
        return _topology


def pubsub_client() -> redis.Redis:
    """A client for long-lived subscriptions: blocking reads with a health check, separate from the pools."""
    return topology().client("pubsub")


def client() -> redis.Redis:
    """Short timeouts, no retries: the configuration watcher and /readyz."""
    return topology().client("hot")


def ops_client() -> redis.Redis:
    """The client for management commands, admin actions and config publishing."""
    return topology().client("ops")


def partition(keys: Sequence[str]) -> list[list[int]]:
    """Group the keys of one request by the script calls they need: all in one, except on a Redis Cluster,
    where keys of different slots go to different calls (see Topology.partition)."""
    return topology().partition(keys)


def page_client() -> redis.Redis:
    """The client for pages that read Redis: a short budget, so a mute Redis costs a page a fraction of a second."""
    return topology().client("page")


class Script:
    """A Lua script, run by its SHA-1 (EVALSHA), loaded again (EVAL) when Redis does not know it.

    Without a `client` it runs on the hot path: on this worker's pipe to the node that serves its keys. With
    `deadline`, ARGV[1] is the Redis time (microseconds) after which the script must change nothing: the pipe
    fills it in when it writes the call (see redis_pipe), a client call passes '' (no deadline). The script
    refuses with an error starting with EXPIRED, which becomes redis.TimeoutError here.
    """

    def __init__(self, text: str, *, deadline: bool = False) -> None:
        import hashlib

        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
        self.deadline = deadline

    def __call__(self, keys: Sequence[str], args: Sequence[Any], *, client=None):
        if client is None:
            return self.submit(keys, args).result()
        return self._via(client, keys, args)

    def submit(self, keys: Sequence[str], args: Sequence[Any]) -> Pending:
        """Send the call now and return at once; `result()` waits for it. Calls submitted one after another
        run in parallel."""
        found = topology()
        if found.mode == EMBEDDED:
            return Pending(self, keys, args, value=self._via(found.client("hot"), keys, args))
        return Pending(self, keys, args, found=found)

    def _via(self, client, keys, args):
        from redis.exceptions import NoScriptError

        args = ["", *args] if self.deadline else list(args)
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.text)
            return client.evalsha(self.sha, len(keys), *keys, *args)

    def command(self, verb: str, keys: Sequence[str], args: Sequence[Any]) -> tuple:
        from gateway_project.redis_pipe import DEADLINE

        head = (verb, self.sha if verb == "EVALSHA" else self.text, len(keys), *keys)
        return (*head, DEADLINE, *args) if self.deadline else (*head, *args)


class Pending:
    """A hot-path script call on its way; `result()` returns its reply or raises redis.RedisError."""

    __slots__ = ("args", "call", "error", "found", "keys", "script", "value")

    def __init__(self, script: Script, keys, args, *, found: Topology | None = None, value=None) -> None:
        self.script, self.keys, self.args, self.found, self.value = script, keys, args, found, value
        self.error: Exception | None = None
        self.call = None
        if found is not None:
            try:
                self.call = self._send("EVALSHA")
            except Exception as exc:
                self.error = exc

    def _send(self, verb: str, pipe: Pipe | None = None):
        pipe = pipe or self.found.pipe_for(self.keys[0] if self.keys else None)
        return pipe.submit(self.script.command(verb, self.keys, self.args), read_own=True)

    def result(self):
        import redis

        if self.found is None:
            return self.value
        if self.error is not None:
            raise self.error
        redirected = expired = False
        while True:
            try:
                return self.call.result()
            except redis.ResponseError as exc:
                message = str(exc)
                if message.startswith("NOSCRIPT"):
                    # After a Redis restart (or on a new node) the script is sent whole once, which loads it.
                    self.call = self._send("EVAL")
                elif message.startswith("MOVED ") and not redirected:
                    # A failover or resharding moved the slot; the command did not run, so it may go again.
                    _, slot, name = message.split()
                    self.found.moved(int(slot), name)
                    self.call = self._send("EVALSHA", self.found.node_pipe(name))
                    redirected = True
                elif message.startswith("EXPIRED") and not expired:
                    # Redis answered, only later than the deadline (a busy machine): nothing was counted, and
                    # this caller still waits, so it asks again with a new deadline rather than fail.
                    self.call = self._send("EVALSHA")
                    expired = True
                elif message.startswith("EXPIRED"):
                    raise redis.TimeoutError(f"Redis ran the script after its deadline twice: {message}") from None
                elif message.startswith(("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "LOADING", "MASTERDOWN")):
                    raise redis.ConnectionError(message) from None
                else:
                    raise


def key(*parts) -> str:
    """A gateway key: the configured prefix, then the parts, joined by ':'."""
    return ":".join((settings.GATEWAY_REDIS_PREFIX, *map(str, parts)))


def tagged_key(tag: tuple, *parts) -> str:
    """A key whose prefix and `tag` are a Redis Cluster hash tag, '{<prefix>:<tag>}:<parts>': keys that one
    script touches together share their tag, so they share a slot."""
    return ":".join((f"{{{key(*tag)}}}", *map(str, parts)))


_HEALTH = Script("return redis.call('TIME')[1]")


def readiness() -> str:
    """What the hot path needs, checked: 'ok', or what is wrong.

    Every node the hot path writes to runs a script through this worker's own pipe (so scripting works and the
    pipe connects), and on a cluster every slot has a primary.
    """
    from redis.exceptions import RedisError

    try:
        found = topology()
        if found.mode == EMBEDDED:
            found.client("hot").ping()
            return "ok"
        uncovered = found.uncovered_slots()
        if uncovered:
            found.refresh()
            return f"error: {uncovered} cluster slots have no primary"
        calls = [found.node_pipe(name) if found.mode == CLUSTER else found.pipe_for(None) for name in found.primaries()]
        pending = [pipe.submit(_HEALTH.command("EVAL", [], [])) for pipe in calls]
        for call in pending:
            call.result()
    except RedisError as exc:
        return f"error: {type(exc).__name__}"
    if found.mode == CLUSTER:
        return f"ok (cluster, {len(calls)} primaries)"
    return "ok"


def warm() -> None:
    """Connect this worker's hot-path pipes now, in the background: a worker's first requests may be a burst,
    and connecting while its greenlets crowd the CPU is slower than the connect timeout allows."""
    from redis.exceptions import RedisError

    try:
        found = topology()
        if found.mode == EMBEDDED:
            return
        for name in found.primaries():
            pipe = found.node_pipe(name) if found.mode == CLUSTER else found.pipe_for(None)
            pipe.submit(("TIME",))  # connects; nobody waits for the answer
    except RedisError as exc:
        logger.info("Redis not reachable yet; the first request connects", extra={"error": str(exc)})


def reset_clients() -> None:
    """Forget every client and pipe; tests use it after changing the Redis settings."""
    global _topology, _embedded_server, _discovery_failed
    with _lock:
        if _topology is not None:
            _topology.close()
        _topology = None
        _discovery_failed = None
        _embedded_server = None
