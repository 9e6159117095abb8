"""Every read has a time bound, end to end: an upstream that drips its head, clients that drip their bodies or
go away while the gateway backs off between retries."""

from __future__ import annotations

import http.client
import time

import pytest
import requests

from tests.support.config import make_route, make_upstream, serve
from tests.support.rawupstream import RawUpstream

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
    assert 1.4 < elapsed < 2.5, elapsed


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
