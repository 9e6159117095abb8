"""The hot-path Redis pipe (gateway_project.store, redis_pipe): one connection, bursts, failures, deadlines."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from gateway_project import store
from tests.support.servers import RedisServer

SCRIPT = store.Script("return redis.call('INCR', KEYS[1])")
# Counts only before its deadline (ARGV[1], Redis microseconds), as the gateway's own scripts do.
DEADLINED = store.Script(
    """
    local t = redis.call('TIME')
    if ARGV[1] ~= '' and tonumber(t[1]) * 1000000 + tonumber(t[2]) > tonumber(ARGV[1]) then
      return redis.error_reply('EXPIRED late')
    end
    return redis.call('INCR', KEYS[1])
    """,
    deadline=True,
)


@pytest.fixture
def own_redis(tmp_path, settings):
    server = RedisServer(tmp_path / "redis").start()
    settings.GATEWAY_REDIS_URL = server.url
    store.reset_clients()
    yield server
    server.stop()
    store.reset_clients()


def pipe():
    return store.topology().pipes["main"]


def test_calls_share_one_connection_and_reload_the_script_after_a_restart(own_redis):
    assert [SCRIPT(["hot:n"], []) for _ in range(5)] == [1, 2, 3, 4, 5]
    assert list(store.topology().pipes) == ["main"]
    own_redis.stop()
    own_redis.start()  # a new, empty server on the same port: the idle connection is dead, the script unknown
    assert SCRIPT(["hot:n"], []) == 1
    assert pipe().connected


def test_failed_calls_fail_fast_and_leave_nothing_behind(own_redis):
    SCRIPT(["hot:n"], [])
    own_redis.stop()
    started = time.monotonic()
    for _ in range(200):
        with pytest.raises(redis.ConnectionError):
            SCRIPT(["hot:n"], [])
    assert time.monotonic() - started < 5
    assert not pipe().connected
    assert pipe()._queue == pipe()._inflight
    own_redis.start()
    assert SCRIPT(["hot:n"], []) == 1


def test_a_burst_larger_than_the_window_waits_its_turn_instead_of_failing(own_redis, settings):
    """Many more callers than commands in flight: they queue in the worker and all get their answer. (With
    the per-worker connection stack this replaced, the callers beyond its connections failed after 50 ms and
    the limiter applied its 'Redis is down' policy.)"""
    settings.GATEWAY_REDIS_PIPELINE_WINDOW = 4
    # What is tested is the queueing, not the timeout: give 300 threads on a busy 2-core machine time to run.
    settings.GATEWAY_REDIS_SOCKET_TIMEOUT = 2.0
    store.reset_clients()
    SCRIPT(["hot:burst"], [])
    own_redis.pause()  # everything queues while Redis is frozen for less than the timeout
    results, errors = [], []
    gate = threading.Barrier(301)

    def one():
        gate.wait()
        try:
            results.append(SCRIPT(["hot:burst"], []))
        except redis.RedisError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(300)]
    for thread in threads:
        thread.start()
    gate.wait()
    time.sleep(0.02)
    own_redis.resume()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results) == list(range(2, 302))


def test_a_frozen_redis_fails_the_calls_in_flight_and_they_never_count_later(own_redis, settings):
    client = redis.Redis.from_url(own_redis.url)
    assert DEADLINED(["hot:late"], []) == 1
    own_redis.pause()
    started = time.monotonic()
    errors = []
    for _ in range(3):
        with pytest.raises(redis.RedisError) as caught:
            DEADLINED(["hot:late"], [])
        errors.append(type(caught.value))
    elapsed = time.monotonic() - started
    time.sleep(0.1)
    own_redis.resume()
    # The first call was written before Redis froze and failed after the timeout; the others failed as the
    # connection attempts timed out. Redis runs the written call when it wakes, past its deadline.
    assert elapsed < 3 * 0.5
    assert set(errors) <= {redis.TimeoutError, redis.ConnectionError}
    assert DEADLINED(["hot:late"], []) == 2
    assert int(client.get("hot:late")) == 2
    client.close()


def test_a_script_call_with_a_client_passes_no_deadline(own_redis):
    client = redis.Redis.from_url(own_redis.url)
    assert DEADLINED(["hot:ops"], [], client=client) == 1
    client.close()


# In a process of its own, patched as a gevent worker is, with the pipe of this test's Redis (argv[1]) warm.
IN_GEVENT = """
import json
import sys

from gevent import monkey

monkey.patch_all()
import django
import gevent
import gevent.event
import redis

django.setup()
from django.conf import settings

settings.GATEWAY_REDIS_URL = sys.argv[1]
from gateway_project import redis_pipe, store

SCRIPT = store.Script("return redis.call('INCR', KEYS[1])")
SCRIPT(["hot:warm"], [])  # connects, loads the script
pipe = store.topology().pipes["main"]
"""

GATHERING = """
yields = []
real_yield = pipe._yield
pipe._yield = lambda: (yields.append(1), real_yield())
admin = redis.Redis.from_url(sys.argv[1])


def reads():
    return admin.info("stats")["total_reads_processed"]


def burst(size):
    go = gevent.event.Event()
    results = []

    def one():
        go.wait()  # set once: every caller runs in the same pass of the loop
        results.append(SCRIPT(["hot:gathered"], []))

    callers = [gevent.spawn(one) for _ in range(size)]
    gevent.sleep(0.01)
    before = reads()
    go.set()
    gevent.joinall(callers, timeout=10)
    return results, reads() - before - 1  # less the INFO command's own read


lone = [SCRIPT(["hot:lone"], []) for _ in range(20)]  # one caller at a time, nothing else in flight
lone_yields = len(yields)
first, _ = burst(30)  # the first call finds nothing in flight; from the second on they gather
second, second_reads = burst(30)
print(json.dumps({"lone": lone, "lone_yields": lone_yields, "results": sorted(first + second), "reads": second_reads}))
"""


def in_gevent(script: str, redis_url: str) -> dict:
    """Run IN_GEVENT then `script` in a process of its own; what its last line printed (JSON)."""
    import json
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", IN_GEVENT + script, redis_url],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_in_a_gevent_worker_the_calls_of_one_turn_share_one_write(own_redis):
    """Callers that the loop runs in one pass (requests a worker starts together) send their calls in one write,
    which Redis reads at once, instead of one each; every caller still gets its own answer. A caller alone (one
    request at a time) writes at once, without waiting for the rest of the pass."""
    seen = in_gevent(GATHERING, own_redis.url)
    assert seen["lone"] == list(range(1, 21))
    assert seen["lone_yields"] == 0
    assert seen["results"] == list(range(1, 61))
    assert seen["reads"] <= 3  # one write of 30 calls; 30 reads without gathering


GATHERING_LIMITS = """
pipe.window = 4
writes = []
real_send_all = redis_pipe.send_all


def counting_send_all(sock, data):
    writes.append(data.count(b"EVALSHA"))
    return real_send_all(sock, data)


redis_pipe.send_all = counting_send_all
go = gevent.event.Event()
results = []


def one():
    go.wait()
    results.append(SCRIPT(["hot:window"], []))


callers = [gevent.spawn(one) for _ in range(40)]
gevent.sleep(0.01)
pipe._shared_until = float("inf")  # gathering on
go.set()
gevent.joinall(callers, timeout=10)

# A caller that is to read its own reply on one pipe does not yield on another.
other = store.topology().pipes["main"].__class__(pipe._connect, timeout=pipe.timeout)
yields = []
other.submit(SCRIPT.command("EVAL", ["hot:b"], []), read_own=True).result()  # connected, the script loaded
other._yield = lambda: yields.append(1)
other._shared_until = float("inf")
first = SCRIPT.submit(["hot:a"], [])  # idle pipe: this caller reads its own reply
second = other.submit(SCRIPT.command("EVALSHA", ["hot:b"], []), read_own=True)
print(json.dumps({
    "results": sorted(results), "largest_write": max(writes), "yields": len(yields),
    "replies": [first.result(), second.result()],
}))
"""


def test_a_gathered_batch_keeps_to_the_window_and_a_reading_caller_does_not_gather(own_redis):
    """More callers in one pass than the window has room for: the write takes what fits, the writer the rest as
    replies come back. A caller that is to read its own reply on one pipe writes on another at once: a yield there
    would leave the first pipe's replies unread (for good, if the caller were killed during it)."""
    seen = in_gevent(GATHERING_LIMITS, own_redis.url)
    assert seen["results"] == list(range(1, 41))
    assert seen["largest_write"] <= 4
    assert seen["yields"] == 0
    assert seen["replies"] == [1, 2]


FORKED = """
import os

parent = store.topology()
read, write = os.pipe()
child = os.fork()
if child == 0:  # a worker forked from a process that had connected: its own topology, pipe and connection
    mine = store.topology()
    answer = SCRIPT(["hot:forked"], [])
    os.write(write, json.dumps({"own": mine is not parent, "answer": answer}).encode())
    os._exit(0)
from gevent.monkey import get_original

get_original("os", "waitpid")(child, 0)  # gevent's own waitpid can miss a child's exit
seen = json.loads(os.read(read, 1000))
print(json.dumps({**seen, "parent kept": store.topology() is parent, "parent answer": SCRIPT(["hot:forked"], [])}))
"""


def test_a_forked_child_makes_its_own_topology_and_the_parent_keeps_its_own(own_redis):
    """The pipe's connection and threads are the parent's: a child that used them would interleave its calls with
    the parent's on one socket. The topology is forgotten at the fork, not checked by process ID per call."""
    assert in_gevent(FORKED, own_redis.url) == {"own": True, "answer": 1, "parent kept": True, "parent answer": 2}
