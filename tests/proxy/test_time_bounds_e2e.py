"""Every read has a time bound, end to end: an upstream that drips its head, clients that drip their bodies or
go away while the gateway backs off between retries."""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid

import pytest
import requests

from tests.support.config import make_route, make_upstream, serve
from tests.support.gateways import start_gateway, talking_to
from tests.support.rawclient import RawClient
from tests.support.rawupstream import RawUpstream
from tests.support.servers import wait_until

DRIPPED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Slow: " + b"s" * 60 + b"\r\n\r\nok"


def drip_head(conn) -> None:
    while conn.read_request() is not None:
        conn.drip(DRIPPED_HEAD, interval=0.25)


@pytest.mark.parametrize("retries", [0, 2])
def test_a_head_dripped_byte_by_byte_ends_in_504_at_the_deadline(live, retries):
    """A read timeout restarted at every byte would wait for the whole head (16 s here); the deadline does not."""
    with RawUpstream(drip_head) as upstream:
        make_route(
            "drip",
            "/drip",
            make_upstream(
                "drip",
                upstream.url,
                read_timeout=5,
                deadline=1.5,
                max_retries=retries,
                backoff_factor=0,
                backoff_jitter=0,
                retry_on_statuses="",
            ),
        )
        serve(live)
        started = time.monotonic()
        answer = requests.get(live.url("/drip/x"), timeout=10)
        elapsed = time.monotonic() - started
    assert answer.status_code == 504
    assert answer.json()["error"] == "upstream_timeout"
    assert 1.4 < elapsed < 3, elapsed


def test_a_slow_streamed_upload_does_not_use_up_the_upstreams_deadline(live, upstream):
    """Waiting for the client's body is the client's time (bounded by the client body timeouts); the deadline
    measures the upstream."""
    make_route("up", "/up", make_upstream("up", upstream.url, deadline=1.0, max_retries=0))
    serve(live)
    piece = b"u" * (256 * 1024)
    connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
    connection.putrequest("PUT", "/up/file")
    connection.putheader("Content-Length", str(6 * len(piece)))
    connection.endheaders()
    for _ in range(6):
        connection.send(piece)
        time.sleep(0.3)  # the client is slow on purpose
    answer = connection.getresponse()
    answer.read()
    connection.close()
    assert answer.status == 200
    assert upstream.requests_to("/file")[-1].body_bytes == 6 * len(piece)


@pytest.fixture(scope="module")
def impatient_gateway(tmp_path_factory, redis_server, django_db_setup, django_db_blocker):
    """One worker holding at most 50 connections, a 1 s body timeout and 100 bytes/s minimum rate, and a small
    retry buffer so that larger bodies stream through."""
    with django_db_blocker.unblock():
        gw = start_gateway(
            tmp_path_factory,
            redis_server,
            workers=1,
            env={
                "GATEWAY_CLIENT_BODY_TIMEOUT": "1",
                "GATEWAY_CLIENT_BODY_MIN_RATE": "100",
                "GATEWAY_RETRY_BUFFER_BYTES": "4096",
                "GATEWAY_WORKER_CONNECTIONS": "50",
            },
        )
    yield gw
    gw.stop()


@pytest.fixture
def impatient(impatient_gateway, transactional_db, upstream):
    with talking_to(impatient_gateway):
        make_route(
            "api",
            "/api",
            make_upstream(
                "backend",
                upstream.url,
                max_retries=0,
                breaker_consecutive_failures=1,
                breaker_failure_rate=0,
            ),
        )
        serve(impatient_gateway)
        yield impatient_gateway


def post_head(length: int) -> bytes:
    return f"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n\r\n".encode()


@pytest.mark.parametrize(("announced", "sent"), [(10, 2), (100_000, 8_000)], ids=["buffered", "streamed"])
def test_a_body_that_stops_gets_408_and_never_reaches_the_upstream_complete(impatient, upstream, announced, sent):
    with RawClient(impatient.port, timeout=10) as client:
        started = time.monotonic()
        client.send(post_head(announced) + b"b" * sent)
        answer = client.read_response()
        elapsed = time.monotonic() - started
        assert answer.status == 408, answer.body
        assert answer.header("Content-Type") == "application/json"
        assert client.closed_by_peer(timeout=5)
    assert 0.9 < elapsed < 4, elapsed
    assert upstream.requests_to("/upload") == []  # the upstream saw no complete request
    assert requests.get(impatient.url("/api/after"), timeout=10).status_code == 200  # the breaker stayed closed
    assert '"status": 408' in impatient.log()


def test_a_body_dripped_below_the_minimum_rate_gets_408(impatient, upstream):
    """One byte every 0.4 s never trips the 1 s idle timeout; 2.5 bytes/s is far below the 100 bytes/s."""
    stop = threading.Event()
    with RawClient(impatient.port, timeout=10) as client:
        client.send(post_head(20))

        def drip() -> None:
            while not stop.wait(0.4):
                try:
                    client.send(b"d")
                except OSError:
                    return

        dripper = threading.Thread(target=drip)
        started = time.monotonic()
        dripper.start()
        try:
            answer = client.read_response()
        finally:
            stop.set()
            dripper.join()
        elapsed = time.monotonic() - started
    assert answer.status == 408
    assert elapsed < 3, elapsed
    assert upstream.requests_to("/upload") == []


def test_a_body_at_a_fair_pace_is_forwarded(impatient, upstream):
    """200 bytes every 0.5 s: over the minimum rate and never idle for a second."""
    with RawClient(impatient.port, timeout=10) as client:
        client.send(post_head(2000))
        for _ in range(10):
            time.sleep(0.5)  # the client's own pace
            client.send(b"f" * 200)
        assert client.read_response().status == 200
    assert upstream.requests_to("/upload")[-1].body_bytes == 2000


@pytest.mark.slow
def test_a_slow_body_flood_bigger_than_the_worker_only_delays_other_clients(impatient):
    """80 clients that never finish their bodies against a worker that holds 50 connections: each is cut off at
    the body timeout, so /healthz and proxied requests answer within a few timeouts, not never."""
    flood = []
    try:
        for _ in range(80):
            client = RawClient(impatient.port, timeout=10)
            client.send(post_head(10) + b"xx")
            flood.append(client)
        started = time.monotonic()
        health = requests.get(impatient.url("/healthz"), timeout=15)
        waited = time.monotonic() - started
        assert health.status_code == 200
        assert requests.get(impatient.url("/api/x"), timeout=15).status_code == 200
        statuses = [client.read_response().status for client in flood]
    finally:
        for client in flood:
            client.close()
    assert statuses == [408] * 80
    assert waited < 5, waited
    print(f"80 slow bodies on a 50-connection worker with a 1 s body timeout: /healthz answered after {waited:.2f} s")


def access_line(gateway, request_id: str) -> dict | None:
    for line in gateway.log().splitlines():
        if request_id in line and '"request"' in line:
            entry = json.loads(line)
            if entry.get("request_id") == request_id and entry.get("logger") == "gateway.access":
                return entry
    return None


def test_a_client_that_leaves_during_the_backoff_ends_the_retries_with_499(live, upstream):
    make_route(
        "flaky",
        "/flaky",
        make_upstream("flaky", upstream.url, max_retries=5, retry_on_statuses="503", breaker_failure_rate=0),
    )
    serve(live)
    request_id = f"gone-{uuid.uuid4().hex}"
    client = RawClient(live.port)
    # Every answer is 503 with Retry-After: 2, so the gateway waits 2 s before each retry.
    client.send(
        f"GET /flaky/retry-after/2/503 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: {request_id}\r\n\r\n".encode()
    )
    wait_until(lambda: upstream.requests_to("/retry-after/2/503"), 5, "the first attempt")
    client.close()
    entry = wait_until(lambda: access_line(live, request_id), 10, "the access line of the abandoned request")
    assert entry["status"] == 499
    assert len(upstream.requests_to("/retry-after/2/503")) == 1
