"""The contract of limits/lua/check.lua, on a real Redis and on the embedded store (fakeredis with Lua).

The script is called directly, with KEYS/ARGV laid out as limits.storage.check and limits.limiter.check build
them: ARGV[1] a deadline ('' for none), ARGV[2] a unique member, then five values per policy (algorithm, limit,
window ms, burst, shadow). Time comes from the server's TIME; the tests never pass it, they only sleep when a
window has to pass. lua/undo.lua, which gives back what a call counted, is held to the same contract.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import fakeredis
import pytest
import redis

from limits.storage import SCRIPT
from limits.storage import _undo as UNDO


@dataclass(frozen=True)
class Policy:
    algorithm: str = "L"  # "L" sliding log, "G" GCRA
    limit: int = 3
    window_ms: int = 60_000
    burst: int | None = None  # GCRA; the limit when None, as compile_policy does
    shadow: bool = False

    def args(self) -> list[str]:
        burst = self.burst or self.limit
        return [self.algorithm, str(self.limit), str(self.window_ms), str(burst), "1" if self.shadow else "0"]


@dataclass(frozen=True)
class Result:
    allowed: bool
    remaining: int
    reset_ms: int
    retry_ms: int


@dataclass(frozen=True)
class Reply:
    allowed: bool  # every enforced policy allowed the request
    results: list[Result]
    member: str  # the sliding-log entry this request adds when counted


class Script:
    """The script on one backend, with a key namespace of its own."""

    def __init__(self, client) -> None:
        self.client = client
        self.script = client.register_script(SCRIPT)
        self.prefix = f"contract:{uuid.uuid4().hex}:"

    def key(self, name: str = "k") -> str:
        return self.prefix + name

    def __call__(self, *checks: tuple[str, Policy], deadline: str = "", dry: bool = False) -> Reply:
        member = "" if dry else uuid.uuid4().hex
        keys = [key for key, _ in checks]
        args = [deadline, member]
        for _, policy in checks:
            args.extend(policy.args())
        raw = [int(v) for v in self.script(keys=keys, args=args)]
        assert len(raw) == 1 + 4 * len(checks)
        results = [Result(bool(raw[i]), raw[i + 1], raw[i + 2], raw[i + 3]) for i in range(1, len(raw), 4)]
        return Reply(bool(raw[0]), results, member)

    def undo(self, member: str, *checks: tuple[str, Policy]) -> None:
        args = [member]
        for _, policy in checks:
            args.extend(policy.args()[:3])
        self.client.register_script(UNDO.text)(keys=[key for key, _ in checks], args=args)

    def redis_micros(self) -> int:
        seconds, micros = self.client.time()
        return seconds * 1_000_000 + micros

    def one(self, key: str, policy: Policy) -> Result:
        reply = self((key, policy))
        assert reply.allowed == (reply.results[0].allowed or policy.shadow)
        return reply.results[0]

    def written_keys(self) -> list[str]:
        return sorted(k.decode() for k in self.client.scan_iter(match=self.prefix + "*"))


@pytest.fixture(params=["redis", "fakeredis"])
def script(request):
    if request.param == "redis":
        client = redis.Redis.from_url(request.getfixturevalue("redis_server").url)
    else:
        client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    yield Script(client)
    client.close()


def assert_every_key_expires(script: Script, *, within_ms: int) -> None:
    for key in script.written_keys():
        ttl = script.client.pttl(key)
        assert 0 < ttl <= within_ms, (key, ttl)


# sliding log


def test_sliding_log_allows_exactly_the_limit_then_rejects(script):
    key, policy = script.key(), Policy(limit=3)
    decisions = [script((key, policy)).allowed for _ in range(6)]
    assert decisions == [True, True, True, False, False, False]


def test_sliding_log_remaining_counts_down(script):
    key, policy = script.key(), Policy(limit=4)
    assert [script.one(key, policy).remaining for _ in range(6)] == [3, 2, 1, 0, 0, 0]


def test_rejected_requests_consume_nothing(script):
    key, policy = script.key(), Policy(limit=3)
    for _ in range(20):
        script.one(key, policy)
    assert script.client.zcard(key) == 3


def test_a_request_rejected_by_one_policy_is_counted_in_no_other(script):
    loose, strict = (script.key("loose"), Policy(limit=10)), (script.key("strict"), Policy(limit=2))
    gcra = (script.key("gcra"), Policy("G", limit=10))
    replies = [script(loose, gcra, strict) for _ in range(5)]
    assert [r.allowed for r in replies] == [True, True, False, False, False]
    # The loose policies allowed each request, but only the two that passed everywhere were counted.
    assert all(r.results[0].allowed and r.results[1].allowed for r in replies)
    assert [r.results[2].allowed for r in replies] == [True, True, False, False, False]
    assert script.client.zcard(loose[0]) == 2
    assert script.client.zcard(strict[0]) == 2
    tat_after_two = script.client.get(gcra[0])
    script(loose, gcra, strict)
    assert script.client.get(gcra[0]) == tat_after_two
    # Alone, the loose policies see only the two counted requests.
    assert script.one(*loose).remaining == 10 - 3
    assert script.one(*gcra).remaining == 10 - 3


def test_shadow_rejection_does_not_block_and_is_not_counted(script):
    shadow = (script.key("shadow"), Policy(limit=1, shadow=True))
    enforced = (script.key("enforced"), Policy(limit=10))
    replies = [script(shadow, enforced) for _ in range(4)]
    assert [r.allowed for r in replies] == [True, True, True, True]
    assert [r.results[0].allowed for r in replies] == [True, False, False, False]
    assert all(r.results[1].allowed for r in replies)
    assert script.client.zcard(shadow[0]) == 1
    assert script.client.zcard(enforced[0]) == 4


def test_shadow_gcra_rejection_is_not_counted(script):
    key, policy = script.key(), Policy("G", limit=2, window_ms=60_000, shadow=True)
    replies = [script((key, policy)) for _ in range(4)]
    assert [r.allowed for r in replies] == [True] * 4
    assert [r.results[0].allowed for r in replies] == [True, True, False, False]
    tat = script.client.get(key)
    script((key, policy))
    assert script.client.get(key) == tat


def test_sliding_window_allows_again_once_the_window_passed(script):
    key, policy = script.key(), Policy(limit=2, window_ms=1000)
    assert [script.one(key, policy).allowed for _ in range(3)] == [True, True, False]
    time.sleep(1.1)
    assert [script.one(key, policy).allowed for _ in range(3)] == [True, True, False]


def test_sliding_window_never_allows_more_than_the_limit_in_any_window(script):
    """Paced requests over 2.5 windows: on the server's clock, any `window` holds at most `limit` of them."""
    key, limit, window_us = script.key(), 3, 200_000
    policy = Policy(limit=limit, window_ms=window_us // 1000)
    times = []
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        reply = script((key, policy))
        if reply.allowed:
            times.append(int(float(script.client.zscore(key, reply.member))))
        time.sleep(0.02)
    assert len(times) >= 2 * limit  # the window really slid
    for earlier, later in zip(times, times[limit:], strict=False):
        assert later - earlier >= window_us


def test_sliding_log_reset_and_retry_are_within_the_window(script):
    key, policy = script.key(), Policy(limit=2, window_ms=5000)
    for _ in range(2):
        allowed = script.one(key, policy)
        assert allowed.allowed
        assert 0 < allowed.reset_ms <= 5000
        assert allowed.retry_ms == 0
    rejected = script.one(key, policy)
    assert not rejected.allowed
    assert 0 < rejected.reset_ms <= 5000
    assert 0 < rejected.retry_ms <= 5000


# GCRA


def test_gcra_burst_then_steady_rate(script):
    """limit 4 per 800 ms: one request every 200 ms, up to 2 at once after a quiet period."""
    key, policy = script.key(), Policy("G", limit=4, window_ms=800, burst=2)
    burst = [script.one(key, policy) for _ in range(3)]
    assert [r.allowed for r in burst] == [True, True, False]
    assert 0 < burst[2].retry_ms <= 200
    time.sleep(0.5)  # 2.5 intervals since the burst: two more requests, not three
    assert [script.one(key, policy).allowed for _ in range(3)] == [True, True, False]


def test_gcra_remaining_decreases_and_retry_after_is_positive_when_rejected(script):
    key, policy = script.key(), Policy("G", limit=5, window_ms=10_000)
    results = [script.one(key, policy) for _ in range(7)]
    assert [r.remaining for r in results] == [4, 3, 2, 1, 0, 0, 0]
    assert [r.allowed for r in results] == [True] * 5 + [False] * 2
    assert all(r.retry_ms == 0 for r in results[:5])
    for rejected in results[5:]:
        assert 0 < rejected.retry_ms <= 2000  # at most one interval
        assert 0 < rejected.reset_ms <= 10_000


def test_gcra_keeps_one_small_string_key(script):
    key, policy = script.key(), Policy("G", limit=1000, window_ms=60_000, burst=20)
    for _ in range(50):
        script.one(key, policy)
    assert script.written_keys() == [key]
    assert script.client.type(key) == b"string"
    assert script.client.get(key).isdigit()


def test_every_key_written_expires_within_its_window(script):
    log, gcra = Policy(limit=3, window_ms=2000), Policy("G", limit=3, window_ms=2000)
    shadow = Policy(limit=1, window_ms=2000, shadow=True)
    for _ in range(5):
        script((script.key("log"), log), (script.key("gcra"), gcra), (script.key("shadow"), shadow))
    script((script.key("never"), log), (script.key("full"), Policy(limit=1, window_ms=2000)))
    script((script.key("never"), log), (script.key("full"), Policy(limit=1, window_ms=2000)))
    assert script.written_keys() == sorted(script.key(n) for n in ("log", "gcra", "shadow", "full", "never"))
    for name in ("log", "shadow", "full", "never"):
        assert 0 < script.client.pttl(script.key(name)) <= 2000
    assert 0 < script.client.pttl(script.key("gcra")) <= 2000 + 1000
    assert_every_key_expires(script, within_ms=3000)


def test_a_request_rejected_everywhere_writes_no_key(script):
    full = (script.key("full"), Policy(limit=1))
    script(full)
    script((script.key("untouched-log"), Policy(limit=5)), (script.key("untouched-gcra"), Policy("G")), full)
    assert script.written_keys() == [full[0]]


# deadline and undo


def test_a_call_run_after_its_deadline_counts_nothing(script):
    key, policy = script.key(), Policy(limit=3)
    with pytest.raises(redis.ResponseError, match=r"^EXPIRED"):
        script((key, policy), deadline=str(script.redis_micros() - 1000))
    assert script.written_keys() == []
    reply = script((key, policy), deadline=str(script.redis_micros() + 5_000_000))
    assert reply.allowed
    assert script.client.zcard(key) == 1


def test_undo_gives_back_exactly_what_one_request_counted(script):
    log, gcra = (script.key("log"), Policy(limit=3)), (script.key("gcra"), Policy("G", limit=3, window_ms=60_000))
    script(log, gcra)
    second = script(log, gcra)
    script.undo(second.member, log, gcra)
    assert script.client.zcard(log[0]) == 1
    assert script(gcra).results[0].remaining == 1  # one request counted before, this one now: 3 - 2
    first_only = script(log)
    script.undo(first_only.member, log)
    script.undo(first_only.member, log)  # a second undo of the same request changes nothing more
    assert script.client.zcard(log[0]) == 1
    lone = script.key("lone")
    counted = script((lone, Policy("G", limit=3)))
    script.undo(counted.member, (lone, Policy("G", limit=3)))
    assert script.written_keys().count(lone) == 0


# a dry run (no member: the route tester's)


@pytest.mark.parametrize("algorithm", ["L", "G"])
def test_a_dry_run_answers_as_a_request_would_and_counts_nothing(script, algorithm):
    key, policy = script.key(), Policy(algorithm=algorithm, limit=2)
    script((key, policy))
    state = script.client.dump(key)
    dry = script((key, policy), dry=True)
    assert (dry.allowed, dry.results[0].remaining) == (True, 0)
    assert script.client.dump(key) == state
    script((key, policy))
    dry = script((key, policy), dry=True)
    assert not dry.allowed and dry.results[0].retry_ms > 0
    assert script((key, policy)).allowed is False  # the dry runs took nothing: the limit is still 2
