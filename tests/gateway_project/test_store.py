"""The hot-path Redis connections (gateway_project.store): reuse, limits, recovery, no leaks."""

from __future__ import annotations

import time

import pytest
import redis

from gateway_project import store
from tests.support.servers import RedisServer

SCRIPT = store.Script("return redis.call('INCR', KEYS[1])")


@pytest.fixture
def own_redis(tmp_path, settings):
    server = RedisServer(tmp_path / "redis").start()
    settings.GATEWAY_REDIS_URL = server.url
    store.reset_clients()
    yield server
    server.stop()
    store.reset_clients()


def test_calls_reuse_one_connection_and_reload_the_script_after_a_restart(own_redis):
    assert [SCRIPT(["hot:n"], []) for _ in range(5)] == [1, 2, 3, 4, 5]
    stack = store._hot_connections()
    assert len(stack.idle) == 1
    own_redis.stop()
    own_redis.start()  # a new, empty server on the same port: the idle connection is dead, the script unknown
    assert SCRIPT(["hot:n"], []) == 1
    assert len(stack.idle) == 1


def test_failed_calls_leave_nothing_behind(own_redis):
    stack = store._hot_connections()
    own_redis.stop()
    for _ in range(200):
        with pytest.raises(redis.ConnectionError):
            SCRIPT(["hot:n"], [])
    assert stack.idle == []
    assert stack.pool._connections == []  # redis-py's pool never saw them: nothing accumulates
    own_redis.start()
    assert SCRIPT(["hot:n"], []) == 1


def test_callers_wait_for_a_free_connection_then_give_up(own_redis, settings):
    settings.GATEWAY_REDIS_MAX_CONNECTIONS = 1
    store.reset_clients()
    stack = store._hot_connections()
    held = stack.acquire()
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError, match="stayed busy"):
        SCRIPT(["hot:n"], [])
    assert 0.04 <= time.monotonic() - started < 0.5
    stack.release(held)
    assert SCRIPT(["hot:n"], []) == 1
