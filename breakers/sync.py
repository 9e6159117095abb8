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

from django.db import close_old_connections, connection
from redis.exceptions import RedisError

from breakers import service, storage
from gateway_project import store
from gateway_project.blocking import run_blocking

logger = logging.getLogger(__name__)

SYNC_INTERVAL = 1.0
SWEEP_EVERY = 10  # sync rounds between drains of every breaker's events


def flush_and_refresh(rounds: int = 0) -> None:
    now = time.monotonic()
    for found in service.entries():
        policy = found.policy
        pending, found.pending = found.pending, 0
        # Also for no new successes: re-reads the view, and judges the failure rate once the newest buckets
        # are complete. Entry.call falls back to the worker's own breaker when Redis fails; the successes then
        # wait for the next round.
        if pending or (now - found.last_used < service.ACTIVE_FOR and now >= found.local_until):
            found.call("flush", policy, extra=str(pending))
            if found.local is not None:
                found.pending += pending
        if found.drain or rounds % SWEEP_EVERY == 0:
            found.drain = False
            record_events(found.id)


def record_events(upstream_id: int, client=None) -> int:
    """Move an upstream's transition events from Redis into the database history."""
    from breakers.models import BreakerTransition

    try:
        events = storage.pop_events(upstream_id, client=client)
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
        storage.restore_events(upstream_id, events)  # not lost: the next drain tries again
        raise
    return len(events)


def _write(rows: list) -> None:
    from breakers.models import BreakerTransition

    BreakerTransition.objects.bulk_create(rows)


def _name_of(upstream_id: int) -> str:
    for found in service.entries():
        if found.id == upstream_id:
            return found.name
    from django.apps import apps

    upstream = apps.get_model("proxy", "Upstream").objects.filter(pk=upstream_id).first()
    return upstream.name if upstream is not None else f"#{upstream_id}"


class SyncThread(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="gateway-breaker-sync", daemon=True)
        self.stopped = threading.Event()

    def run(self) -> None:
        rounds = 0
        while not self.stopped.wait(SYNC_INTERVAL):
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
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self._listen()
            except (RedisError, OSError) as exc:
                logger.info("breaker change feed interrupted; re-reading breakers", extra={"error": str(exc)})
            except Exception:
                logger.exception("breaker change feed failed; restarting it")
            service.feed_live = False
            self.stopped.wait(1.0)

    def _listen(self) -> None:
        pubsub = store.pubsub_client().pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(storage.channel())
            service.feed_live = True
            # Anything published while we were not listening is covered by reading every view again.
            for found in service.entries():
                found.local_until = 0.0
                found.view = None
            while not self.stopped.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message is None or message.get("type") != "message":
                    continue
                parsed = storage.parse_message(message["data"])
                if parsed is None:
                    continue
                upstream_id, view = parsed
                found = service._entries.get(upstream_id)
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
    service.feed_live = False
    SyncThread().start()
    Subscriber().start()
