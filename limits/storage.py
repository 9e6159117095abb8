"""The rate limiter's Redis: the one module of this app that talks to it.

The hot path makes exactly one call per request, `check()`: one EVALSHA of lua/check.lua covering every
policy that applies (gateway_project.store.Script; after a Redis restart the script is loaded again).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from gateway_project import store

SCRIPT = (Path(__file__).parent / "lua" / "check.lua").read_text()

_script = store.Script(SCRIPT)
_member_prefix = os.urandom(6).hex()
_sequence = itertools.count()


def check(keys: list[str], args: list[str]) -> list[int]:
    """Run the check-and-count script; raises redis.RedisError when Redis cannot answer in time."""
    member = f"{_member_prefix}{next(_sequence)}"
    return _script(keys, [member, *args])


def usage(prefix: str, *, algorithm: str, limit: int, window: int, burst: int, scan_limit: int = 10_000, client=None):
    """Counters under `prefix` with their current use, busiest first: [(key, used, ttl seconds)].

    Reads live from Redis with SCAN (at most `scan_limit` keys), for the admin page.
    """
    client = client or store.ops_client()
    keys = []
    for key in client.scan_iter(match=_escape(prefix) + "*", count=1000):
        keys.append(key.decode())
        if len(keys) >= scan_limit:
            break
    if not keys:
        return []
    seconds, micros = client.time()
    now = seconds * 1_000_000 + micros
    window_us = window * 1_000_000
    pipe = client.pipeline(transaction=False)
    for key in keys:
        if algorithm == "L":
            pipe.zcount(key, f"({now - window_us}", "+inf")
        else:
            pipe.get(key)
        pipe.pttl(key)
    replies = pipe.execute()
    rows = []
    interval = window_us / limit
    for index, key in enumerate(keys):
        value, ttl = replies[2 * index], replies[2 * index + 1]
        if algorithm == "L":
            used = int(value)
        else:
            tat = float(value) if value is not None else 0.0
            used = min(burst, max(0, int(-(-(tat - now) // interval)))) if tat > now else 0
        rows.append((key, used, max(ttl, 0) / 1000))
    rows.sort(key=lambda row: (-row[1], row[0]))
    return rows


def delete(key: str) -> bool:
    return bool(store.ops_client().delete(key))


def _escape(pattern: str) -> str:
    """Escape glob characters (the hash-tag braces are fine, but '[' and '*' are not) for SCAN MATCH."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in pattern)
