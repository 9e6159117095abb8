"""The rate limiter's Redis: the one module of this app that talks to it.

The hot path makes one call per request, `check()`: one EVALSHA of lua/check.lua covering every policy that
applies (gateway_project.store.Script; after a Redis restart the script is loaded again). On a Redis Cluster a
request's counters live in the slots of its clients (see compiled.counter_key), so a request whose policies
count by different things (an address and a route, say) makes one call per slot, all sent at once. Each call
counts only if its own policies allow; when another slot's policy rejects the request, lua/undo.lua gives back
what was counted, so a rejected request still consumes nothing (and other requests meanwhile may see the
counter one higher, never lower: a limit is never exceeded).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from redis.exceptions import RedisError

from gateway_project import store
from gateway_project.degraded import DegradedLog

logger = logging.getLogger(__name__)

SCRIPT = (Path(__file__).parent / "lua" / "check.lua").read_text()

_script = store.Script(SCRIPT, deadline=True)
_undo = store.Script((Path(__file__).parent / "lua" / "undo.lua").read_text())
_member_prefix = os.urandom(6).hex()
_sequence = itertools.count()
_undo_log = DegradedLog(logger, "a rejected request's counts could not be given back in every slot")


def check(keys: list[str], args: Sequence[tuple[str, ...]]) -> list[int]:
    """Check and count one request against the policies whose counters are `keys` (`args`: each policy's
    script arguments); returns [all allowed, then per policy: allowed, remaining, reset ms, retry ms].

    Raises redis.RedisError when Redis cannot answer in time (then nothing stays counted).
    """
    member = f"{_member_prefix}{next(_sequence)}"
    groups = store.partition(keys)
    if len(groups) == 1:
        return _script(keys, [member, *(a for policy in args for a in policy)])
    pending = [
        _script.submit([keys[i] for i in group], [member, *(a for i in group for a in args[i])]) for group in groups
    ]
    replies, error = [], None
    for call in pending:
        try:
            replies.append(call.result())
        except RedisError as exc:
            replies.append(None)
            error = error or exc
    merged = _merged(groups, replies, len(keys))
    if error is not None or not merged[0]:
        _give_back(member, keys, args, groups, replies)
    if error is not None:
        raise error
    return merged


def peek(keys: list[str], args: Sequence[tuple[str, ...]], *, client=None) -> list[int]:
    """What check() would answer, counting nothing (the route tester's dry run: check.lua with no member; it
    only drops expired sliding-log entries, which count for nothing); `client`: the pages' budget."""
    client = client or store.page_client()
    groups = store.partition(keys)
    replies = [_script([keys[i] for i in g], ["", *(a for i in g for a in args[i])], client=client) for g in groups]
    return _merged(groups, replies, len(keys))


def _merged(groups: list[list[int]], replies: list, count: int) -> list[int]:
    """One reply for `count` policies from the replies of their slots' calls (None: a call that failed)."""
    merged = [1] + [0] * (4 * count)
    for group, reply in zip(groups, replies, strict=True):
        if reply is None:
            continue
        if not reply[0]:
            merged[0] = 0
        for position, index in enumerate(group):
            merged[1 + 4 * index : 5 + 4 * index] = reply[1 + 4 * position : 5 + 4 * position]
    return merged


def _give_back(member, keys, args, groups, replies) -> None:
    """Undo the counting of every slot that counted (its own policies allowed) for a rejected request."""
    pending = []
    for group, reply in zip(groups, replies, strict=True):
        if reply is None or not reply[0]:
            continue
        counted = [i for position, i in enumerate(group) if reply[1 + 4 * position]]
        if counted:
            undo_args = [member, *(a for i in counted for a in (args[i][0], args[i][1], args[i][2]))]
            pending.append(_undo.submit([keys[i] for i in counted], undo_args))
    for call in pending:
        try:
            call.result()
        except RedisError as exc:
            _undo_log.note(error=str(exc) or type(exc).__name__)


def usage(pattern: str, *, algorithm: str, limit: int, window: int, burst: int, scan_limit: int = 10_000, client=None):
    """Counters matching the SCAN `pattern` with their current use, busiest first: [(key, used, ttl seconds)].

    Reads live from Redis with SCAN (at most `scan_limit` keys; every primary of a cluster), for the admin page
    (`client`: pages pass one with a short budget).
    """
    client = client or store.ops_client()
    keys = []
    for key in client.scan_iter(match=pattern, count=1000):
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
