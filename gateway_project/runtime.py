"""The configuration a worker serves from, and how every worker follows changes within a second.

Each app registers a loader that compiles its part of the configuration (the route table, rate-limit
policies, breaker settings) from the database. A worker serves from one immutable `Snapshot` of all parts and
swaps it whole when the configuration revision moves; requests never read the database.

How a change travels: saving a tracked model bumps the `ConfigRevision` row in the same transaction; after
commit the new revision is written to Redis. A watcher thread in every worker reads that key every
GATEWAY_CONFIG_POLL_INTERVAL (250 ms) and reloads from the database when it differs from what it serves. The
database stays the source of truth: the watcher also compares against it every few seconds, and on every poll
while Redis is unreachable, so a lost publish or a flushed Redis delays a change but never loses it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import F, QuerySet
from django.db.models.signals import post_delete, post_save
from django.utils import timezone
from redis.exceptions import RedisError

from gateway_project import metrics, store
from gateway_project.blocking import Stalled, bounded

logger = logging.getLogger(__name__)

#: The revision's key in Redis outlives any outage worth waiting for; the database check covers the rest.
REVISION_TTL = 24 * 3600
#: The longest a load compiles before it gives the worker's requests a turn (see in_turns), and how long that
#: turn is at least.
TURN_AFTER = 0.005
TURN_SECONDS = 0.001
#: At most this share of GATEWAY_DB_TIMEOUT goes to turns in one load. The watcher gives up on a poll, load
#: included, after twice that; a worker saturated with requests makes every turn long, and without a bound its
#: load of a large configuration could never finish. Past it the load compiles the rest in one piece.
TURN_BUDGET = 0.5
#: Rows of a query made into model objects at a time, in a load (see in_turns).
TURN_ROWS = 100

T = TypeVar("T")


@dataclass(frozen=True)
class Snapshot:
    revision: int
    token: str = ""
    parts: dict[str, Any] = field(default_factory=dict)
    loaded_at: float = 0.0

    def __getitem__(self, name: str) -> Any:
        return self.parts[name]


@dataclass(frozen=True)
class _Loader:
    load: Callable[[], Any]
    empty: Any


_loaders: dict[str, _Loader] = {}
_current = Snapshot(revision=0)
_lock = threading.Lock()


def register(name: str, load: Callable[[], Any], *, empty: Any, models: tuple = ()) -> None:
    """Add a configuration part; saving or deleting any of `models` bumps the revision."""
    global _current
    _loaders[name] = _Loader(load, empty)
    if name not in _current.parts:
        _current = Snapshot(_current.revision, _current.token, {**_current.parts, name: empty}, _current.loaded_at)
    for model in models:
        uid = f"gateway-config-{model._meta.label}"
        post_save.connect(_changed, sender=model, dispatch_uid=uid + "-save")
        post_delete.connect(_changed, sender=model, dispatch_uid=uid + "-delete")


def in_turns(items: Iterable[T]) -> Iterator[T]:
    """`items`, with a turn for the worker's requests whenever TURN_AFTER has passed since the last one.

    Every worker compiles a changed configuration at once, on the event loop its requests run on (the watcher is
    a greenlet): with 1,000 routes and upstreams that held every request of the worker for about 100 ms, on
    every change. Loaders compile their rows through this, so requests go on between pieces of a few
    milliseconds; they are served from the current snapshot until the new one is whole (load() checks that the
    revision did not move meanwhile). A small configuration compiles in one piece, with no turn at all, and a
    load takes turns for at most TURN_BUDGET * GATEWAY_DB_TIMEOUT in all.
    """
    global _turns_left
    if isinstance(items, QuerySet):
        # Rows made into objects a chunk at a time as they are used, not all at the first one.
        items = items.iterator(chunk_size=TURN_ROWS)
    since = time.monotonic()
    for item in items:
        yield item
        now = time.monotonic()
        if now - since >= TURN_AFTER and _turns_left > 0:
            _turn()
            since = time.monotonic()
            _turns_left -= since - now


#: Seconds of turns the current load may still take (set by load()).
_turns_left = 0.0


def _turn() -> None:
    """Let the worker's loop serve what is ready, then go on: a gevent sleep lets the loop poll its sockets and run
    its timers (a sleep of 0 would come back before that); elsewhere a short plain sleep."""
    time.sleep(TURN_SECONDS)


def current() -> Snapshot:
    return _current


def get(name: str) -> Any:
    return _current.parts[name]


def revision_key() -> str:
    return store.key("config", "revision")


def _changed(sender, **kwargs) -> None:
    bump()


def bump() -> int:
    """Count a configuration change; workers pick it up once the surrounding transaction commits."""
    from gateway_project.models import ConfigRevision

    token = uuid.uuid4().hex
    with transaction.atomic():
        if not ConfigRevision.objects.filter(pk=1).update(revision=F("revision") + 1, token=token):
            ConfigRevision.objects.create(pk=1, revision=1, token=token)
        revision = ConfigRevision.objects.values_list("revision", flat=True).get(pk=1)
    transaction.on_commit(lambda: publish(token))
    return revision


def db_state() -> tuple[int, str]:
    """(revision, token) of the configuration in the database."""
    from gateway_project.models import ConfigRevision

    return ConfigRevision.objects.filter(pk=1).values_list("revision", "token").first() or (0, "")


def db_change() -> tuple[int, str, datetime | None]:
    """(revision, token, when it was made) of the configuration in the database."""
    from gateway_project.models import ConfigRevision

    return ConfigRevision.objects.filter(pk=1).values_list("revision", "token", "updated_at").first() or (0, "", None)


def max_lag() -> float:
    """How long after a change in the database a worker may still serve the previous configuration: a lost
    Redis message is made up for by the next database check, a few polls later at most."""
    return settings.GATEWAY_CONFIG_DB_CHECK_INTERVAL + 4 * settings.GATEWAY_CONFIG_POLL_INTERVAL


def freshness(db_revision: int, db_token: str, changed_at: datetime | None) -> str:
    """The served configuration, or an error when it is older than it should be (for /readyz)."""
    snapshot = _current
    if not snapshot.loaded_at:
        return "error: not loaded"
    served = describe(snapshot.revision, snapshot.token)
    if db_token and db_token != snapshot.token and changed_at is not None:
        behind = (timezone.now() - changed_at).total_seconds()
        if behind > max_lag():
            return f"error: serving {served}; the database has had revision {db_revision} for {behind:.0f} s"
    return served


def describe(revision: int, token: str) -> str:
    return f"revision {revision} ({token[:8]})"


def publish(token: str) -> None:
    try:
        store.ops_client().set(revision_key(), token, ex=REVISION_TTL)
    except RedisError as exc:
        metrics.redis_error("config")
        logger.warning(
            "config change not published to Redis; workers will see it through the database within %.0f s",
            settings.GATEWAY_CONFIG_DB_CHECK_INTERVAL,
            extra={"error": str(exc)},
        )


def lock() -> None:
    """Within a transaction: hold the revision row, so no other configuration change commits meanwhile."""
    from gateway_project.models import ConfigRevision

    list(ConfigRevision.objects.select_for_update().filter(pk=1))


def load() -> Snapshot:
    """Compile every part from the database and serve it from now on."""
    global _current, _turns_left
    with _lock:
        _turns_left = TURN_BUDGET * settings.GATEWAY_DB_TIMEOUT
        for _ in range(3):
            revision, token = db_state()
            parts = {name: loader.load() for name, loader in _loaders.items()}
            # The parts are read one query after another: if a change committed meanwhile, read them again,
            # so routes and policies always come from the same revision.
            if db_state() == (revision, token):
                break
        # Still changing after three tries (a burst of commits): the parts are at least as new as the revision
        # read before them, so that is the one this snapshot names; the watcher's next check finds the
        # database ahead of it and loads again. (Named after the newest revision instead, a snapshot missing
        # the last changes looked current and was never reloaded: policies went unenforced.)
        _current = Snapshot(revision, token, parts, time.time())
    logger.info("configuration loaded", extra={"revision": revision, "routes": len(parts.get("routes", ()))})
    return _current


class Watcher(threading.Thread):
    def __init__(self, interval: float, db_check_interval: float) -> None:
        super().__init__(name="gateway-config-watcher", daemon=True)
        self.interval = interval
        self.db_check_interval = db_check_interval
        self.last_db_check = 0.0

    def run(self) -> None:
        store.warm()
        bound = 2 * settings.GATEWAY_DB_TIMEOUT
        while True:
            time.sleep(self.interval)
            try:
                # Bounded as a whole: a database that hangs must not stop this worker following changes once it
                # is back (the connection it hung on is closed below, and the next poll connects anew).
                bounded(bound, self.poll)
            except Stalled:
                logger.warning("configuration check stalled for %.0f s; reconnecting to the database", bound)
                connection.close()
            except Exception:
                logger.exception("configuration reload failed; still serving revision %s", _current.revision)
                close_old_connections()
                connection.close()

    def poll(self) -> None:
        now = time.monotonic()
        try:
            raw = store.client().get(revision_key())
            hinted, redis_ok = (raw.decode() if raw is not None else None), True
        except RedisError:
            hinted, redis_ok = None, False
            metrics.redis_error("config")
        since_db = now - self.last_db_check
        if hinted is not None and hinted == _current.token and since_db < self.db_check_interval:
            return
        if not redis_ok and since_db < 1.0:
            return
        self.last_db_check = now
        _, token = db_state()
        if token != _current.token or not _current.loaded_at:
            load()
        if redis_ok and hinted != token:
            publish(token)


_watcher_pid: int | None = None


def start() -> None:
    """Load the configuration and, unless GATEWAY_CONFIG_WATCH is off, follow it (once per process)."""
    global _watcher_pid
    if _watcher_pid == os.getpid():
        return
    _watcher_pid = os.getpid()
    try:
        load()
    except Exception:
        logger.exception("initial configuration load failed; retrying in the background")
        connection.close()
    if settings.GATEWAY_CONFIG_WATCH:
        Watcher(settings.GATEWAY_CONFIG_POLL_INTERVAL, settings.GATEWAY_CONFIG_DB_CHECK_INTERVAL).start()
