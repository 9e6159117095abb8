"""The retry loop (proxy.forwarding.send) against a real upstream on loopback, its time driven by the test.

The clock only moves when the loop sleeps, so backoff waits, Retry-After and the deadline are checked to the
millisecond without the test waiting for them.
"""

from __future__ import annotations

import json

import pytest
from urllib3 import HTTPResponse
from urllib3.exceptions import ConnectTimeoutError
from urllib3.util import Retry

from gateway_project import metrics
from proxy import balancing, budget, forwarding
from proxy.forwarding import UpstreamFailed
from proxy.models import Target, Upstream
from proxy.routing import compile_upstream
from proxy.upstream_response import DirectResponse
from tests.support.servers import free_port
from tests.support.upstream import Upstream as RecordingUpstream


@pytest.fixture(autouse=True)
def fresh_worker_state():
    """Each test starts as a fresh worker: no target health, no spent retry budget."""
    balancing._states.clear()
    budget._budgets.clear()


@pytest.fixture
def second_upstream():
    server = RecordingUpstream().start()
    yield server
    server.stop()


class Clock:
    """time.monotonic and time.sleep for the loop: sleeping advances the clock and is recorded."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


class Observer:
    def __init__(self, stop_after: int | None = None) -> None:
        self.attempts: list[tuple[int | None, str | None]] = []
        self.stop_after = stop_after

    def attempt_finished(self, *, status, error, elapsed) -> None:
        self.attempts.append((status, type(error).__name__ if error else None))

    def may_continue(self) -> bool:
        return self.stop_after is None or len(self.attempts) < self.stop_after


def target(base_url: str, targets=(), **fields):
    """A compiled upstream; `targets` are (base URL or host:port, weight) of its Target rows."""
    defaults = {"max_retries": 2, "backoff_factor": 0.5, "backoff_jitter": 0.0, "backoff_max": 10.0}
    rows = [Target(address=address.removeprefix("http://"), weight=weight) for address, weight in targets]
    return compile_upstream(Upstream(id=1, name="up", base_url=base_url, **{**defaults, **fields}), rows)


def send(up, method="GET", path="/x", *, body=None, replayable=True, clock=None, observer=None, headers=None, **kw):
    clock = clock or Clock()
    return forwarding.send(
        up,
        method,
        path,
        {"Host": "upstream"} if headers is None else headers,
        body,
        replayable=replayable,
        observer=observer,
        sleep=clock.sleep,
        clock=clock,
        **kw,
    )


def expected_backoffs(up, retries: int) -> list[float]:
    """urllib3's own schedule for the upstream's policy: what the loop must wait."""
    retry, waits = up.retry, []
    for _ in range(retries):
        retry = retry.increment("GET", "/x", error=ConnectTimeoutError())
        waits.append(retry.get_backoff_time())
    return waits


def test_idempotent_requests_are_retried_with_urllib3s_backoff(upstream):
    upstream.queue(503, 502)
    up = target(upstream.url)
    clock, observer = Clock(), Observer()
    exchange = send(up, clock=clock, observer=observer)
    assert exchange.response.status == 200
    assert exchange.retry_reasons == ["status_503", "status_502"]
    assert observer.attempts == [(503, None), (502, None), (200, None)]
    assert clock.sleeps == expected_backoffs(up, 2) == [0.0, 1.0]
    assert len(upstream.received) == 3
    exchange.response.release_conn()


def test_retries_stop_at_max_retries_and_the_last_answer_is_relayed(upstream):
    upstream.queue(503, 503, 503, 503)
    exchange = send(target(upstream.url, max_retries=2))
    assert exchange.response.status == 503
    assert len(upstream.received) == 3
    exchange.response.release_conn()


def test_a_post_that_reached_the_upstream_is_never_sent_twice(upstream):
    upstream.queue(503)
    clock = Clock()
    exchange = send(target(upstream.url), "POST", body=b"order", clock=clock)
    assert exchange.response.status == 503
    assert exchange.retry_reasons == []
    assert clock.sleeps == []
    assert [r.method for r in upstream.received] == ["POST"]
    exchange.response.release_conn()


def test_a_refused_connection_is_retried_for_any_method():
    up = target(f"http://127.0.0.1:{free_port()}", connect_timeout=0.5)
    clock, observer = Clock(), Observer()
    with pytest.raises(UpstreamFailed) as failed:
        send(up, "POST", body=b"x", clock=clock, observer=observer)
    assert not failed.value.timeout
    assert failed.value.retry_reasons == ["connect", "connect"]
    assert [name for _, name in observer.attempts] == ["NewConnectionError"] * 3
    assert clock.sleeps == expected_backoffs(up, 2)


def test_a_retry_after_longer_than_the_time_left_ends_the_retries(upstream):
    up = target(upstream.url, deadline=5.0)
    clock = Clock()
    exchange = send(up, path="/retry-after/10/503", clock=clock)
    assert exchange.response.status == 503
    assert clock.sleeps == []
    assert len(upstream.received) == 1
    exchange.response.release_conn()


def test_a_retry_after_within_the_deadline_is_waited_for(upstream):
    up = target(upstream.url, deadline=30.0)
    upstream.queue(503)  # the first answer is plain 503; the path's Retry-After answer comes on the retry
    clock = Clock()
    exchange = send(up, path="/retry-after/3/503", clock=clock)
    assert exchange.response.status == 503
    assert clock.sleeps == [0.0, 3.0]  # backoff after the first, Retry-After: 3 after the second
    exchange.response.release_conn()


def test_a_backoff_that_would_pass_the_deadline_is_not_slept():
    up = target(f"http://127.0.0.1:{free_port()}", backoff_factor=4.0, deadline=5.0, max_retries=5)
    clock = Clock()
    with pytest.raises(UpstreamFailed):
        send(up, clock=clock)
    # 0 s, then 8 s would pass the 5 s deadline: the loop gives up instead of sleeping.
    assert clock.sleeps == [0.0]


def test_an_observer_that_says_stop_ends_the_retries(upstream):
    upstream.queue(503, 503)
    observer = Observer(stop_after=1)
    exchange = send(target(upstream.url), observer=observer)
    assert exchange.response.status == 503
    assert len(upstream.received) == 1
    exchange.response.release_conn()


def test_a_request_whose_deadline_passed_is_not_sent(upstream):
    clock = Clock()
    up = target(upstream.url, deadline=1.0)

    class Late(Clock):
        def __call__(self) -> float:  # the deadline is over by the time the loop looks again
            self.now += 2.0
            return self.now

    with pytest.raises(UpstreamFailed) as failed:
        send(up, clock=Late())
    assert failed.value.timeout
    assert upstream.received == []
    assert clock.sleeps == []


def test_a_body_that_cannot_be_replayed_is_sent_once_even_for_put(upstream):
    upstream.queue(503)
    exchange = send(target(upstream.url), "PUT", body=iter([b"a", b"b"]), replayable=False)
    assert exchange.response.status == 503
    assert len(upstream.received) == 1
    exchange.response.release_conn()


def test_the_policy_is_urllib3_retry_built_once_per_upstream():
    up = target("http://127.0.0.1:9")
    assert isinstance(up.retry, Retry)
    assert up.retry.status_forcelist == {502, 503, 504}
    assert target("http://127.0.0.1:9").retry is not up.retry  # one per compiled upstream, not shared state


def done(exchange) -> None:
    """What the view does with a relayed response: read it, give the connection back, finish the exchange."""
    exchange.response.read()
    exchange.response.release_conn()
    exchange.finish()


# Several targets


def test_a_retry_goes_to_another_target(upstream, second_upstream):
    upstream.queue(503)
    up = target("http://service.internal", [(upstream.url, 1), (second_upstream.url, 1)])
    exchange = send(up)
    assert exchange.response.status == 200
    assert exchange.retry_reasons == ["status_503"]
    assert exchange.target.address == f"127.0.0.1:{second_upstream.port}"
    assert len(upstream.received) == len(second_upstream.received) == 1
    # The Host is the service's (the base URL's), whichever target serves it.
    assert second_upstream.received[0].header("Host") == "upstream"
    done(exchange)


def test_a_dead_target_is_retried_elsewhere_then_ejected(upstream):
    dead = f"127.0.0.1:{free_port()}"
    up = target("http://service.internal", [(dead, 1), (upstream.url, 1)], eject_consecutive_failures=2)
    dead_target = next(t for t in up.targets if t.address == dead)
    for _ in range(6):
        exchange = send(up)
        assert exchange.response.status == 200
        done(exchange)
    # Round robin sent the first and third request's first attempt to the dead target; the second failure in a
    # row ejected it, so nothing after that tried it.
    assert dead_target.state.total_ejections == 1
    assert dead_target.state.ejected_until > 100.0
    assert len(upstream.received) == 6
    assert metrics.target_ejections.labels("up", dead)._value.get() >= 1


def test_each_attempt_is_counted_per_target_and_outcome(upstream, second_upstream):
    upstream.queue(503)
    up = target("http://service.internal", [(upstream.url, 1), (second_upstream.url, 1)])
    first, second = (f"127.0.0.1:{s.port}" for s in (upstream, second_upstream))
    before = [metrics.upstream_attempts.labels("up", first, "503")._value.get()]
    before.append(metrics.upstream_attempts.labels("up", second, "200")._value.get())
    exchange = send(up)
    done(exchange)
    assert metrics.upstream_attempts.labels("up", first, "503")._value.get() == before[0] + 1
    assert metrics.upstream_attempts.labels("up", second, "200")._value.get() == before[1] + 1


def test_an_exchange_counts_as_unfinished_until_the_response_is_done(upstream):
    up = target(upstream.url)
    exchange = send(up)
    assert exchange.target.state.outstanding == 1
    done(exchange)
    exchange.finish()
    assert exchange.target.state.outstanding == 0


# The retry budget


def test_a_spent_retry_budget_ends_the_retries_and_is_counted(upstream):
    upstream.behave(status=503)
    up = target(upstream.url, max_retries=5, retry_budget_percent=0, retry_budget_min=2)
    exhausted = metrics.retry_budget_exhausted_total.labels("up")._value.get()
    first = send(up)
    assert first.retry_reasons == ["status_503", "status_503"]  # the minimum, then the budget is spent
    done(first)
    second = send(up)
    assert second.retry_reasons == []
    done(second)
    assert len(upstream.received) == 4
    assert metrics.retry_budget_exhausted_total.labels("up")._value.get() == exhausted + 2


# Idempotency-Key


@pytest.mark.parametrize(("method", "key", "attempts"), [("POST", True, 3), ("PATCH", True, 3), ("POST", False, 1)])
def test_a_post_or_patch_is_retried_only_with_an_idempotency_key(upstream, method, key, attempts):
    upstream.queue(503, 503)
    exchange = send(target(upstream.url), method, body=b"order", idempotency_key=key)
    assert len(upstream.received) == attempts
    assert exchange.response.status == (200 if key else 503)
    done(exchange)


# Deadline header


def test_each_attempt_is_told_the_milliseconds_left(upstream):
    upstream.queue(503, 503)
    up = target(upstream.url, deadline=10.0, backoff_factor=1.0)
    headers = {"Host": "upstream"}
    exchange = send(up, headers=headers, deadline_header="X-Timeout-Ms")
    done(exchange)
    # The clock moves only by the backoff waits (0 s, then 2 s).
    assert [r.header("X-Timeout-Ms") for r in upstream.received] == ["10000", "10000", "8000"]


def test_a_client_deadline_shortens_the_upstreams_and_a_spent_one_is_not_sent(upstream):
    up = target(upstream.url, deadline=10.0)
    exchange = send(up, headers={"Host": "upstream"}, deadline=2.5, deadline_header="X-Timeout-Ms")
    done(exchange)
    assert upstream.received[-1].header("X-Timeout-Ms") == "2500"
    with pytest.raises(UpstreamFailed) as failed:
        send(up, deadline=0.0, deadline_header="X-Timeout-Ms")
    assert failed.value.timeout
    assert len(upstream.received) == 1


def test_an_attempt_gets_the_pool_connection_from_host_would_give_even_after_the_pool_was_evicted(upstream):
    up = target(upstream.url)
    (chosen,) = up.targets
    manager = forwarding.pool_manager()
    pool = forwarding._pool(manager, up.scheme, chosen)
    assert pool is manager.connection_from_host(chosen.host, chosen.port, up.scheme, pool_kwargs=chosen.pool_kwargs)
    assert forwarding._pool(manager, up.scheme, chosen) is pool
    # The manager closes and forgets pools it holds no room for; the next attempt gets a new, working one.
    manager.clear()
    again = forwarding._pool(manager, up.scheme, chosen)
    assert again is not pool
    assert again is manager.connection_from_host(chosen.host, chosen.port, up.scheme, pool_kwargs=chosen.pool_kwargs)
    assert send(up).response.status == 200


# Which path an attempt takes


@pytest.mark.parametrize(("method", "body"), [("GET", None), ("POST", b'{"a": 1}'), ("PUT", b"")])
def test_a_body_in_memory_on_plain_http_is_read_straight_from_the_pooled_connection(upstream, method, body):
    up = target(upstream.url)
    for _ in range(3):
        exchange = send(up, method, body=body)
        assert isinstance(exchange.response, DirectResponse)
        assert exchange.response.status == 200
        assert json.loads(exchange.response.read())["method"] == method
        exchange.response.release_conn()
        exchange.finish()
    received = upstream.received[-3:]
    assert [r.body_bytes for r in received] == [len(body or b"")] * 3
    assert len(upstream.connections_seen) == 1  # each connection went back to the pool, and was reused


def test_a_streamed_body_takes_urllib3s_path(upstream):
    up = target(upstream.url)
    exchange = send(
        up, "PUT", body=iter([b"pay", b"load"]), replayable=False, headers={"Host": "upstream", "Content-Length": "7"}
    )
    assert isinstance(exchange.response, HTTPResponse)
    assert exchange.response.status == 200
    done(exchange)
    assert upstream.received[-1].body_bytes == 7


def test_an_answer_not_read_to_its_end_never_goes_back_to_the_pool_open(upstream):
    up = target(upstream.url)
    exchange = send(up, path="/bytes/200000")
    assert exchange.response.status == 200
    assert 0 < len(exchange.response.read1(1000)) <= 1000
    exchange.response.release_conn()
    exchange.finish()
    assert json.loads(send(up, path="/again").response.read())["path"] == "/again"
    assert len(upstream.connections_seen) == 2
