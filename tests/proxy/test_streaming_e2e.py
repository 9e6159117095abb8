"""Bodies stream through the gateway: large transfers do not grow a worker's memory, and slow upstreams do not
queue requests behind each other."""

from __future__ import annotations

import asyncio
import http.client
import threading
import time

import pytest
import requests

from tests.support.config import make_route, make_upstream, serve
from tests.support.gateways import start_gateway, talking_to
from tests.support.servers import rss_bytes

pytestmark = pytest.mark.slow

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory, redis_server, django_db_setup, django_db_blocker):
    """A single-worker gateway, so the worker whose memory we watch is the one doing the work."""
    with django_db_blocker.unblock():
        gw = start_gateway(tmp_path_factory, redis_server, workers=1, env={"GATEWAY_MAX_BODY_BYTES": str(512 * MiB)})
    yield gw
    gw.stop()


@pytest.fixture
def single(one_worker, transactional_db, upstream):
    with talking_to(one_worker):
        make_route("files", "/files", make_upstream("files", upstream.url, read_timeout=60, deadline=120))
        serve(one_worker)
        yield one_worker


class PeakRss:
    """Samples a process's RSS every 20 ms while a transfer runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = rss_bytes(pid)
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.before


def warm_up(gateway) -> None:
    for _ in range(3):
        requests.get(gateway.url("/files/bytes/1048576"), timeout=10).raise_for_status()


@pytest.mark.parametrize("kind", ["bytes", "chunked"])
def test_a_1_gib_download_streams_through_with_bounded_memory(single, upstream, kind):
    warm_up(single)
    (pid,) = single.worker_pids()
    size = 1024 * MiB
    received = 0
    started = time.monotonic()
    with PeakRss(pid) as rss, requests.get(single.url(f"/files/{kind}/{size}"), stream=True, timeout=60) as response:
        assert response.status_code == 200
        for chunk in response.iter_content(MiB):
            received += len(chunk)
    elapsed = time.monotonic() - started
    assert received == size
    assert rss.growth < 64 * MiB, f"worker RSS grew by {rss.growth / MiB:.1f} MiB"
    print(f"1 GiB {kind} download: {size / MiB / elapsed:.0f} MiB/s, worker RSS +{rss.growth / MiB:.1f} MiB")


@pytest.mark.parametrize("chunked", [False, True])
def test_a_256_mib_upload_streams_through_with_bounded_memory(single, upstream, chunked):
    warm_up(single)
    (pid,) = single.worker_pids()
    size = 256 * MiB
    block = b"u" * MiB
    connection = http.client.HTTPConnection("127.0.0.1", single.port, timeout=60)
    with PeakRss(pid) as rss:
        connection.putrequest("PUT", "/files/upload")
        if chunked:
            connection.putheader("Transfer-Encoding", "chunked")
        else:
            connection.putheader("Content-Length", str(size))
        connection.endheaders()
        for _ in range(size // MiB):
            connection.send(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
        if chunked:
            connection.send(b"0\r\n\r\n")
        response = connection.getresponse()
        body = response.read()
    connection.close()
    assert response.status == 200, body
    seen = upstream.requests_to("/upload")[-1]
    assert seen.body_bytes == size
    assert seen.chunked is chunked
    assert rss.growth < 64 * MiB, f"worker RSS grew by {rss.growth / MiB:.1f} MiB"


async def _get(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    status_line = await reader.readline()
    await reader.read()
    writer.close()
    return int(status_line.split()[1])


async def _burst(port: int, path: str, count: int) -> list[int]:
    return await asyncio.gather(*(_get(port, path) for _ in range(count)))


def test_1000_requests_to_a_1_second_upstream_are_in_flight_together(live, upstream):
    make_route("slow", "/slow", make_upstream("slow", upstream.url))
    serve(live)
    started = time.monotonic()
    codes = asyncio.run(_burst(live.port, "/slow/delay/1", 1000))
    elapsed = time.monotonic() - started
    assert codes == [200] * 1000
    # Queued behind each other (gthread 2x8, say) this would take about a minute.
    assert elapsed < 4.0, f"1000 requests took {elapsed:.1f} s"
    print(f"1000 concurrent requests to a 1 s upstream: {elapsed:.2f} s wall")


def test_server_sent_events_reach_the_client_as_each_one_is_sent(single, upstream):
    """An event the upstream sends half a second after the previous one is at the client within milliseconds,
    not held back until a buffer fills or the response ends."""
    conn = http.client.HTTPConnection("127.0.0.1", single.port, timeout=10)
    conn.request("GET", "/files/events/4/0.5", headers={"Accept": "text/event-stream"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/event-stream"
    latencies, buffer = [], b""
    while True:
        chunk = response.read1(65536)
        if not chunk:
            break
        arrived = time.monotonic()
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            sent = float(event.split(b"data: ")[1])  # the upstream's time.monotonic(), one clock on one machine
            latencies.append(arrived - sent)
    conn.close()
    assert len(latencies) == 4
    assert max(latencies) < 0.2, latencies
