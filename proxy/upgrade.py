"""Upgraded connections (WebSocket and the other protocols a route allows): handshake, then bytes both ways.

The handshake is an ordinary request through the pipeline (API key, rate limits, the breaker's ticket), sent
to a target on a connection of its own, never a pooled one. If the upstream answers 101 with a protocol the
client asked for, the gateway relays the 101 and takes the client's socket over from gunicorn: the core's WSGI
entry point (gateway_project/wsgi.py) sees `UpgradedResponse.take_over`, lets it write the 101 head and pump,
and hands gunicorn's gevent worker its ALREADY_HANDLED marker, so gunicorn writes nothing of its own (no second
head, no chunked framing) and only closes the socket afterwards. Any other answer (the upstream refused the
upgrade) is relayed as a normal response.

The tunnel copies bytes each way in a greenlet of its own until either side closes, or until no byte passed
either way for GATEWAY_UPGRADE_IDLE_TIMEOUT seconds; then both connections are closed. A worker holds at most
GATEWAY_UPGRADE_MAX_CONNECTIONS tunnels; further upgrade requests get 503.

Bytes a client sends after its upgrade request but before the 101 stay in gunicorn's parser and are lost; a
WebSocket client never sends any (RFC 6455 §4.1: it waits for the server's handshake).
"""

from __future__ import annotations

import contextlib
import socket
import time

import gevent
from django.http import HttpResponse
from urllib3.connection import HTTPConnection, HTTPSConnection

from gateway_project import metrics
from proxy import headers
from proxy.upstream_response import UpstreamHTTPResponse

CHUNK = 64 * 1024


class SwitchingHTTPResponse(UpstreamHTTPResponse):
    """An upstream answer to a request that asked to upgrade: a 101 is the final answer."""

    switch_requested = True


class UpgradeHTTPConnection(HTTPConnection):
    response_class = SwitchingHTTPResponse


class UpgradeHTTPSConnection(HTTPSConnection):
    response_class = SwitchingHTTPResponse


def requested_protocol(environ: dict) -> str | None:
    """The first protocol of a request's Upgrade header, lower case, when its Connection header names upgrade."""
    upgrade = environ.get("HTTP_UPGRADE")
    if not upgrade or "upgrade" not in headers.connection_tokens(environ.get("HTTP_CONNECTION")):
        return None
    return upgrade.split(",")[0].strip().lower() or None


def allowed(protocol: str, protocols: frozenset[str]) -> bool:
    """`websocket` allows `websocket` and `websocket/13`; `foo/2` allows only `foo/2`."""
    return protocol in protocols or protocol.split("/")[0] in protocols


class Slots:
    """The worker's upgraded connections: taken before the handshake, given back when the tunnel ends."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def give_back(self) -> None:
        self.used -= 1


def connect(upstream, target, timeout: float):
    """A fresh connection to the target (TLS as its pool would have it), for one upgrade."""
    if upstream.scheme == "https":
        return UpgradeHTTPSConnection(target.host, target.port, timeout=timeout, **(target.pool_kwargs or {}))
    return UpgradeHTTPConnection(target.host, target.port, timeout=timeout)


def buffered(reader, sock: socket.socket) -> bytes:
    """Bytes the upstream sent right after its 101 head that the head's reader already holds. The socket is
    non-blocking meanwhile, so this never waits: an empty buffer reads as nothing."""
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        data = reader.read1(CHUNK) or b""
    except OSError:
        data = b""
    finally:
        sock.settimeout(timeout)
    return data


class Tunnel:
    """The bytes of one upgraded connection, copied both ways; `sent` counts those to the client."""

    __slots__ = ("idle", "last", "received", "sent")

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self.last = time.monotonic()
        self.sent = 0
        self.received = 0

    def run(self, client: socket.socket, upstream: socket.socket) -> str:
        """Pump until one side closes or both are idle; return why it ended (client, upstream, idle, error)."""
        for sock in (client, upstream):
            sock.settimeout(self.idle)
        to_upstream = gevent.spawn(self._copy, client, upstream, "client", False)
        to_client = gevent.spawn(self._copy, upstream, client, "upstream", True)
        try:
            done = gevent.wait([to_upstream, to_client], count=1)
            ended = done[0].value if done else "error"
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            gevent.joinall([to_upstream, to_client], timeout=5)
            gevent.killall([to_upstream, to_client], block=False)
        return ended

    def _copy(self, source: socket.socket, sink: socket.socket, side: str, to_client: bool) -> str:
        while True:
            try:
                data = source.recv(CHUNK)
            except TimeoutError:
                if time.monotonic() - self.last >= self.idle:
                    return "idle"
                continue
            except OSError:
                return side
            if not data:
                return side
            try:
                sink.sendall(data)
            except OSError:
                return "error"
            self.last = time.monotonic()
            if to_client:
                self.sent += len(data)
            else:
                self.received += len(data)


class UpgradedResponse(HttpResponse):
    """A relayed 101: gateway_project/wsgi.py calls take_over() instead of letting gunicorn answer."""

    upstream_headers: list[tuple[str, str]]

    def __init__(self, *, reason: str, ctx, conn, leftover: bytes, tunnel: Tunnel, slots: Slots) -> None:
        super().__init__(status=101, reason=reason)
        del self.headers["Content-Type"]
        self.ctx = ctx
        self.route = ctx.route.name
        self.conn = conn
        self.leftover = leftover
        self.tunnel = tunnel
        self.slots = slots
        self._released = False
        # Closed without taking over (the server refused to write the 101): still free the slot and connection.
        self._resource_closers.append(self._release)

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.conn.close()
            self.slots.give_back()

    def items(self):
        return headers.merge_response_headers(self.headers, self.upstream_headers)

    def take_over(self, environ: dict) -> None:
        """Write the 101 head to the client, then pump both ways until the tunnel ends; always close both."""
        client = environ["gunicorn.socket"]
        upstream = self.conn.sock
        started = time.monotonic()
        metrics.child(metrics.upgraded_open, self.route).inc()
        try:
            head = [f"HTTP/1.1 101 {self.reason_phrase}\r\n"]
            head += [f"{name}: {value}\r\n" for name, value in self.items()]
            client.sendall(("".join(head) + "\r\n").encode("latin-1"))
            if self.leftover:
                client.sendall(self.leftover)
                self.tunnel.sent += len(self.leftover)
            self.tunnel.run(client, upstream)
        except OSError:
            pass
        finally:
            self.ctx.bytes_in += self.tunnel.received
            self._release()
            metrics.child(metrics.upgraded_open, self.route).dec()
            metrics.child(metrics.upgraded_duration, self.route).observe(time.monotonic() - started)
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)  # gunicorn's next read sees the end and closes the socket
            self.close()
