"""The breakers' shared state in Redis: the one module of this app that talks to it.

Keys, per upstream, share a hash tag so one script can touch them all on Redis Cluster:
  {<prefix>:br:<upstream id>}:state    the state hash
  {<prefix>:br:<upstream id>}:window   failure-rate buckets
  {<prefix>:br:<upstream id>}:events   transitions not yet written to the database
Every change that other workers must know of is published on <prefix>:br:changes.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from breakers.policy import BreakerSettings, State
from breakers.storage import BreakerId, View
from gateway_project import store

_script = store.Script((Path(__file__).parent / "lua" / "breaker.lua").read_text(), deadline=True)


class _Op(StrEnum):
    """The operations lua/breaker.lua knows."""

    VIEW = "view"
    ACQUIRE = "acquire"
    FAIL = "fail"
    OK = "ok"
    FLUSH = "flush"
    RESET = "reset"
    RELEASE = "release"


def keys(upstream_id: int) -> list[str]:
    return [store.tagged_key(("br", upstream_id), part) for part in ("state", "window", "events")]


def channel() -> str:
    return store.key("br", "changes")


class RedisStorage:
    """BreakerStorage on Redis. `client`: None for the hot path's connections, or a redis-py client."""

    def __init__(self, client=None) -> None:
        self.client = client

    def _run(self, op: _Op, breaker: BreakerId, policy: BreakerSettings, gen: int | None = None, extra="") -> View:
        """Run one operation; raises redis.RedisError when Redis cannot answer in time."""
        upstream_id, name = breaker
        args = [op, "" if gen is None else str(gen), *policy.script_args(), name, channel(), extra, str(upstream_id)]
        reply = _script(keys(upstream_id), args, client=self.client)
        state, from_state = (r.decode() if isinstance(r, bytes) else r for r in (reply[0], reply[7]))
        return View(
            State(state),
            int(reply[1]),
            int(reply[2]),
            int(reply[3]) / 1000,
            bool(reply[4]),
            bool(reply[5]),
            bool(reply[6]),
            from_state,
        )

    def view(self, breaker: BreakerId, policy: BreakerSettings) -> View:
        return self._run(_Op.VIEW, breaker, policy)

    def acquire(self, breaker: BreakerId, policy: BreakerSettings) -> View:
        return self._run(_Op.ACQUIRE, breaker, policy)

    def failed(self, breaker: BreakerId, policy: BreakerSettings, *, gen: int | None, what: str) -> View:
        return self._run(_Op.FAIL, breaker, policy, gen, what)

    def succeeded(self, breaker: BreakerId, policy: BreakerSettings, *, gen: int | None) -> View:
        return self._run(_Op.OK, breaker, policy, gen)

    def flush(self, breaker: BreakerId, policy: BreakerSettings, *, successes: int) -> View:
        return self._run(_Op.FLUSH, breaker, policy, None, str(successes))

    def reset(self, breaker: BreakerId, policy: BreakerSettings, *, actor: str) -> View:
        return self._run(_Op.RESET, breaker, policy, None, actor)

    def release(self, breaker: BreakerId, policy: BreakerSettings, *, gen: int | None) -> View:
        return self._run(_Op.RELEASE, breaker, policy, gen)


def parse_message(data: bytes | str) -> tuple[int, View] | None:
    """A published change: 'id|state|gen|consec|open_remaining_ms|transitioned'."""
    try:
        text = data.decode() if isinstance(data, bytes) else data
        upstream_id, state, gen, consec, remaining, transitioned = text.split("|")
        view = View(State(state), int(gen), int(consec), int(remaining) / 1000, True, transitioned == "1")
        return int(upstream_id), view
    except (ValueError, UnicodeDecodeError):
        return None


def pop_events(upstream_id: int, limit: int = 100, client=None) -> list[tuple[int, str, str, str, str]]:
    """Take transition events off an upstream's list: (at ms, from, to, actor, reason), oldest first."""
    client = client or store.ops_client()
    raw = client.rpop(keys(upstream_id)[2], limit) or []
    events = []
    for item in raw:
        at, from_state, to_state, actor, reason = item.decode().split("|", 4)
        events.append((int(at), from_state, to_state, actor, reason))
    return events


def restore_events(upstream_id: int, events: list[tuple[int, str, str, str, str]]) -> None:
    """Put events taken with pop_events back where they were (the database write failed)."""
    if events:
        items = ["|".join(str(part) for part in event) for event in reversed(events)]
        store.ops_client().rpush(keys(upstream_id)[2], *items)


def name_of(upstream_id: int) -> str:
    """The upstream name the state hash was last written with (for history rows of breakers not in use here)."""
    name = store.ops_client().hget(keys(upstream_id)[0], "name")
    return name.decode() if name else f"#{upstream_id}"


def window_counts(upstream_id: int, policy: BreakerSettings, client=None) -> tuple[int, int]:
    """(calls, failures) in the failure-rate window, for operators (includes the newest buckets)."""
    client = client or store.ops_client()
    fields = {k.decode(): int(v) for k, v in client.hgetall(keys(upstream_id)[1]).items()}
    seconds = client.time()[0]
    width = max(1, -(-policy.window_seconds // 60))
    oldest = seconds // width - -(-policy.window_seconds // width)
    calls = failures = 0
    for key, value in fields.items():
        if key.startswith("i") and value >= oldest:
            slot = key[1:]
            calls += fields.get(f"c{slot}", 0)
            failures += fields.get(f"f{slot}", 0)
    return calls, failures
