"""The retry loop (proxy.forwarding.send) against a real upstream on loopback, its time driven by the test.

The clock only moves when the loop sleeps, so backoff waits, Retry-After and the deadline are checked to the
millisecond without the test waiting for them.
"""

from __future__ import annotations

import pytest
from urllib3.exceptions import ConnectTimeoutError
from urllib3.util import Retry

from proxy import forwarding
from proxy.forwarding import UpstreamFailed
from proxy.models import Upstream
from proxy.routing import compile_upstream
from tests.support.servers import free_port


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


def target(base_url: str, **fields):
    defaults = {"max_retries": 2, "backoff_factor": 0.5, "backoff_jitter": 0.0, "backoff_max": 10.0}
    return compile_upstream(Upstream(id=1, name="up", base_url=base_url, **{**defaults, **fields}))


def send(up, method="GET", path="/x", *, body=None, replayable=True, clock=None, observer=None):
    clock = clock or Clock()
    return forwarding.send(
        up,
        method,
        path,
        {"Host": "upstream"},
        body,
        replayable=replayable,
        observer=observer,
        sleep=clock.sleep,
        clock=clock,
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
