"""WebSocket through the gateway on a real gunicorn: a real client (the `websockets` package) and a real echo
server, the handshake through the pipeline, the tunnel's limits, and every way a tunnel ends."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from limits.models import RateLimitPolicy
from proxy.models import Route
from tests.support.config import make_policy, make_route, make_upstream, serve, set_breaker_mode
from tests.support.metrics import scrape, total
from tests.support.rawupstream import Close, RawUpstream, response, serve_each
from tests.support.servers import wait_until
from tests.support.websocket import EchoServer

IDLE = 1.5
LIMIT = 3


@pytest.fixture(scope="module")
def gateway_options() -> dict:
    """One worker, so that the per-worker limit of upgraded connections is the gateway's."""
    return {
        "workers": 1,
        "env": {"GATEWAY_UPGRADE_IDLE_TIMEOUT": str(IDLE), "GATEWAY_UPGRADE_MAX_CONNECTIONS": str(LIMIT)},
    }


@pytest.fixture
def echo():
    server = EchoServer().start()
    yield server
    server.stop()


@pytest.fixture
def gw(live, echo):
    upstream = make_upstream("echo", echo.url + "/base")
    make_route("ws", "/ws", upstream, upgrade_protocols="websocket")
    make_route("plain", "/plain", upstream)
    serve(live)
    return live


def ws_url(gw, path: str) -> str:
    return f"ws://127.0.0.1:{gw.port}{path}"


def client(gw, path: str = "/ws/chat", **kwargs):
    return connect(ws_url(gw, path), proxy=None, open_timeout=5, close_timeout=2, ping_interval=None, **kwargs)


def open_tunnels(gw) -> float:
    return total(scrape(gw), "gateway_upgraded_connections", route="ws")


def test_messages_go_both_ways_and_the_handshake_follows_the_header_rules(gw, echo):
    with client(gw, additional_headers={"X-Trace": "abc", "Keep-Alive": "timeout=5"}) as ws:
        response_headers = ws.response.headers
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01binary" * 1000)
        assert ws.recv(timeout=5) == b"\x00\x01binary" * 1000
        assert open_tunnels(gw) == 1
    assert ws.close_code == 1000

    path, seen = echo.handshakes[-1]
    assert path == "/base/chat"
    # The handshake's own Connection and Upgrade go upstream; every other hop-by-hop header still does not.
    assert seen["Upgrade"].lower() == "websocket"
    assert "upgrade" in seen["Connection"].lower()
    assert "Keep-Alive" not in seen
    assert seen["X-Trace"] == "abc"
    assert seen["Sec-WebSocket-Key"]
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["Host"] == f"127.0.0.1:{echo.port}"
    # The 101 the client read is the upstream's, with the gateway's own headers, written once.
    assert response_headers["Sec-WebSocket-Accept"]
    assert response_headers["X-Request-ID"]
    assert "Transfer-Encoding" not in response_headers

    wait_until(lambda: open_tunnels(gw) == 0, 5, "the tunnel counted closed")
    samples = scrape(gw)
    assert total(samples, "gateway_upgraded_connection_duration_seconds_count", route="ws") >= 1
    assert total(samples, "gateway_requests_total", route="ws", status="101") >= 1


def test_an_upstream_that_refuses_the_upgrade_is_relayed(gw, echo):
    echo.refuse = 403
    with pytest.raises(InvalidStatus) as refused:
        client(gw)
    assert refused.value.response.status_code == 403
    assert b"refused by the upstream" in refused.value.response.body
    assert open_tunnels(gw) == 0
    echo.refuse = None
    with client(gw) as ws:  # the worker's slot was given back
        ws.send("again")
        assert ws.recv(timeout=5) == "again"


def test_a_route_that_allows_no_upgrade_forwards_none(gw, echo):
    with pytest.raises(InvalidStatus) as refused:
        client(gw, "/plain/chat")
    # The upstream saw a plain GET (no Upgrade, no Connection) and said it wants an upgrade.
    assert refused.value.response.status_code == 426
    _, seen = echo.handshakes[-1]
    assert "Upgrade" not in seen
    assert "Connection" not in seen


def test_a_client_that_vanishes_closes_the_upstream_side(gw, echo):
    script = textwrap.dedent(f"""
        import time
        from websockets.sync.client import connect
        ws = connect({ws_url(gw, "/ws/x")!r}, proxy=None, ping_interval=None)
        ws.send("ping")
        assert ws.recv(timeout=5) == "ping"
        print("ready", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        before = len(echo.closed)
        assert echo.open == 1
        os.kill(proc.pid, signal.SIGKILL)  # no close frame: the kernel just ends the TCP connection
        killed = time.monotonic()
        wait_until(lambda: len(echo.closed) > before, 5, "the upstream connection closed")
        assert echo.closed[-1] - killed < IDLE  # noticed from the client's end, not from the idle timeout
    finally:
        proc.kill()
        proc.wait()
    wait_until(lambda: open_tunnels(gw) == 0, 5, "the tunnel counted closed")


def test_an_idle_tunnel_is_closed(gw, echo):
    with client(gw) as ws:
        ws.send("hi")
        assert ws.recv(timeout=5) == "hi"
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=IDLE * 4)
        closed_after = time.monotonic() - started
    assert IDLE * 0.9 <= closed_after < IDLE * 3
    wait_until(lambda: echo.open == 0, 5, "the upstream connection closed")


def test_a_worker_holds_at_most_its_limit_of_tunnels(gw, echo):
    with contextlib.ExitStack() as stack:
        tunnels = [stack.enter_context(client(gw)) for _ in range(LIMIT)]
        with pytest.raises(InvalidStatus) as refused:
            client(gw)
        assert refused.value.response.status_code == 503
        assert len(echo.handshakes) == LIMIT  # the refused one never reached the upstream
        tunnels[0].close()
        wait_until(lambda: open_tunnels(gw) == LIMIT - 1, 5, "a slot given back")
        with client(gw) as ws:
            ws.send("fits")
            assert ws.recv(timeout=5) == "fits"
    assert total(scrape(gw), "gateway_upgrades_refused_total", route="ws") >= 1


def test_rate_limits_and_the_breaker_apply_to_the_handshake(gw, echo):
    make_policy("ws-handshakes", scope="route", route=Route.objects.get(name="ws"), limit=2, window_seconds=60)
    serve(gw)
    for _ in range(2):
        with client(gw) as ws:
            ws.send("ok")
            assert ws.recv(timeout=5) == "ok"
    with pytest.raises(InvalidStatus) as limited:
        client(gw)
    assert limited.value.response.status_code == 429
    assert len(echo.handshakes) == 2

    RateLimitPolicy.objects.all().delete()
    set_breaker_mode("echo", "forced_open")
    serve(gw)
    with pytest.raises(InvalidStatus) as open_breaker:
        client(gw)
    assert open_breaker.value.response.status_code == 503
    assert len(echo.handshakes) == 2


def test_plain_requests_on_an_upgrade_route_are_proxied_as_usual(gw, echo):
    response = requests.get(gw.url("/ws/chat"), timeout=5)
    assert response.status_code == 426  # the echo server wants a WebSocket; the gateway relays its answer


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (Close(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"), 502),  # head cut off by a close
        (response(101, headers=[("Upgrade", "h2c"), ("Connection", "Upgrade")], length=False), 502),  # not asked
        # A field the server would refuse to write (it was gunicorn's 500, and the slot stayed taken).
        (
            response(
                101, headers=[("Upgrade", "websocket"), ("Connection", "Upgrade"), ("X-Bad", "a\x01b")], length=False
            ),
            502,
        ),
        (response(101, headers=[("Upgrade", "websocket\x0b"), ("Connection", "Upgrade")], length=False), 502),
    ],
    ids=["cut-off", "not-asked", "bad-field", "bad-upgrade-value"],
)
def test_a_broken_handshake_answer_is_a_502_and_gives_its_slot_back(live, answer, status):
    with RawUpstream(serve_each(lambda request: answer)) as raw:
        make_route("raw", "/raw", make_upstream("raw", raw.url), upgrade_protocols="websocket")
        serve(live)
        for _ in range(LIMIT + 1):  # more than the worker's slots: none may stay taken
            with pytest.raises(InvalidStatus) as refused:
                client(live, "/raw/x")
            assert refused.value.response.status_code == status
        assert total(scrape(live), "gateway_upgrades_refused_total", route="raw") == 0
