"""Background work of each gateway worker for its breakers, kept off the request path.

- The subscriber thread listens on the changes channel and updates this worker's views within milliseconds.
- The sync thread, once a second: adds this worker's counted successes to the shared failure-rate windows,
  re-reads the views of breakers in use (in case a message was lost), and writes transitions into the
  database history (drained from each breaker's event list in Redis, so no transition is lost if a worker
  dies; whichever worker pops an event writes it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import UTC, datetime
from functools import partial

from django.conf import settings
from django.db import close_old_connections, connection
from redis.exceptions import RedisError

from breakers import gate, redis_storage
from breakers.storage import BreakerStorage, View
from gateway_project import store
from gateway_project.blocking import run_blocking

logger = logging.getLogger(__name__)

#: Sync rounds between drains of every breaker's events (a breaker that transitioned is drained at once).
SWEEP_EVERY = 10


def flush_and_refresh(rounds: int = 0) -> None:
    now = time.monotonic()
    for found in gate.entries():
        pending, found.pending = found.pending, 0
        # Also for no new successes: re-reads the view, and judges the failure rate once the newest buckets
        # are complete. Entry.call falls back to the worker's own breaker when Redis fails; the successes then
        # wait for the next round.
        if pending or (now - found.last_used < gate.timing.active_for and now >= found.local_until):
            found.call(partial(_flush, found, pending))
            if found.on_local:
                found.pending += pending
        if found.drain or rounds % SWEEP_EVERY == 0:
            found.drain = False
            record_events(found.id)


def _flush(found: gate.Entry, successes: int, storage: BreakerStorage) -> View:
    return storage.flush(found.ref, found.policy, successes=successes)


def record_events(upstream_id: int, client=None) -> int:
    """Move an upstream's transition events from Redis into the database history."""
    from breakers.models import BreakerTransition

    try:
        events = redis_storage.pop_events(upstream_id, client=client)
    except RedisError:
        return 0
    if not events:
        return 0
    name = _name_of(upstream_id)
    rows = [
        BreakerTransition(
            upstream_id=upstream_id,
            upstream_name=name,
            kind="state",
            from_state=from_state,
            to_state=to_state,
            reason=reason[:300],
            actor=actor[:150],
            at=datetime.fromtimestamp(at / 1000, tz=UTC),
        )
        for at, from_state, to_state, actor, reason in events
    ]
    try:
        run_blocking(_write, rows)
    except Exception:
        redis_storage.restore_events(upstream_id, events)  # not lost: the next drain tries again
        raise
    return len(events)


def _write(rows: list) -> None:
    from breakers.models import BreakerTransition

    BreakerTransition.objects.bulk_create(rows)


def _name_of(upstream_id: int) -> str:
    found = gate._entries.get(upstream_id)
    return found.name if found is not None else redis_storage.name_of(upstream_id)


class SyncThread(threading.Thread):
    def __init__(self, interval: float) -> None:
        super().__init__(name="gateway-breaker-sync", daemon=True)
        self.interval = interval

    def run(self) -> None:
        rounds = 0
        while True:
            time.sleep(self.interval)
            rounds += 1
            try:
                flush_and_refresh(rounds)
            except Exception:
                logger.exception("breaker sync failed")
                connection.close()
            finally:
                close_old_connections()


class Subscriber(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="gateway-breaker-subscriber", daemon=True)

    def run(self) -> None:
        while True:
            try:
                self._listen()
            except (RedisError, OSError) as exc:
                logger.info("breaker change feed interrupted; re-reading breakers", extra={"error": str(exc)})
            except Exception:
                logger.exception("breaker change feed failed; restarting it")
            gate.feed_live = False
            time.sleep(1.0)

    def _listen(self) -> None:
        pubsub = store.pubsub_client().pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(redis_storage.channel())
            gate.feed_live = True
            # Anything published while we were not listening is covered by reading every view again.
            for found in gate.entries():
                found.local_until = 0.0
                found.view = None
            while True:
                message = pubsub.get_message(timeout=1.0)
                if message is None or message.get("type") != "message":
                    continue
                parsed = redis_storage.parse_message(message["data"])
                if parsed is None:
                    continue
                upstream_id, view = parsed
                found = gate._entries.get(upstream_id)
                if found is not None:
                    found.adopt(view)
        finally:
            pubsub.close()


_started_pid: int | None = None


def start() -> None:
    """Start the two threads once per process (gunicorn workers; not management commands or tests)."""
    global _started_pid
    if _started_pid == os.getpid():
        return
    _started_pid = os.getpid()
    gate.feed_live = False
    SyncThread(settings.GATEWAY_BREAKER_SYNC_INTERVAL).start()
    Subscriber().start()
