"""The breakers' Redis: the one module of this app that talks to it.

Keys, per upstream, share a hash tag so one script can touch them all on Redis Cluster:
  {<prefix>:br:<upstream id>}:state    the state hash
  {<prefix>:br:<upstream id>}:window   failure-rate buckets
  {<prefix>:br:<upstream id>}:events   transitions not yet written to the database
Every change that other workers must know of is published on <prefix>:br:changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from breakers.policy import BreakerSettings
from gateway_project import store

SCRIPT = (Path(__file__).parent / "lua" / "breaker.lua").read_text()
_registered: tuple[object, object] | None = None  # (client, script)


@dataclass(frozen=True, slots=True)
class View:
    """The shared state as one script call saw it."""

    state: str
    gen: int
    consec: int
    open_remaining: float  # seconds until probing may start
    granted: bool = True
    transitioned: bool = False
    probe: bool = False
    from_state: str = ""


def keys(upstream_id: int) -> list[str]:
    tag = f"{{{settings.GATEWAY_REDIS_PREFIX}:br:{upstream_id}}}"
    return [f"{tag}:state", f"{tag}:window", f"{tag}:events"]


def channel() -> str:
    return f"{settings.GATEWAY_REDIS_PREFIX}:br:changes"


def _script(client):
    global _registered
    if _registered is None or _registered[0] is not client:
        _registered = (client, client.register_script(SCRIPT))
    return _registered[1]


def run(
    op: str,
    upstream_id: int,
    name: str,
    policy: BreakerSettings,
    *,
    gen: int | None = None,
    extra: str = "",
    client=None,
) -> View:
    """Run one breaker operation; raises redis.RedisError when Redis cannot answer in time."""
    client = client or store.client()
    reply = _script(client)(
        keys=keys(upstream_id),
        args=[op, "" if gen is None else str(gen), *policy.script_args(), name, channel(), extra, str(upstream_id)],
    )
    state, from_state = (r.decode() if isinstance(r, bytes) else r for r in (reply[0], reply[7]))
    return View(
        state,
        int(reply[1]),
        int(reply[2]),
        int(reply[3]) / 1000,
        bool(reply[4]),
        bool(reply[5]),
        bool(reply[6]),
        from_state,
    )


def parse_message(data: bytes | str) -> tuple[int, View] | None:
    """A published change: 'id|state|gen|consec|open_remaining_ms|transitioned'."""
    try:
        text = data.decode() if isinstance(data, bytes) else data
        upstream_id, state, gen, consec, remaining, transitioned = text.split("|")
        return int(upstream_id), View(state, int(gen), int(consec), int(remaining) / 1000, True, transitioned == "1")
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


def read(upstream_id: int, name: str, policy: BreakerSettings, client=None) -> View:
    return run("view", upstream_id, name, policy, client=client)
