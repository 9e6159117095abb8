"""Small HTTP helpers the core and the apps share: naming a header in the WSGI environ, the prefix a path lies
under, telling whether a kept-alive connection is still open before reusing it, and writing a small message in
one system call."""

from __future__ import annotations

import socket

from gevent import socket as gevent_socket


def environ_key(header: str) -> str:
    """The WSGI environ key of a request header: X-API-Key -> HTTP_X_API_KEY."""
    return "HTTP_" + header.upper().replace("-", "_")


def under(path: str, prefixes: tuple[str, ...]) -> str | None:
    """The first of `prefixes` that `path` lies under, on a segment boundary ("/admin" holds "/admin/x", not
    "/adminx"), or None."""
    for prefix in prefixes:
        if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
            return prefix
    return None


IDLE, DATA, CLOSED = "idle", "data", "closed"


def peek(sock: socket.socket) -> str:
    """What a connection holds right now, without reading it: IDLE (nothing to read), DATA or CLOSED.

    A non-blocking one-byte peek: one system call. (A readiness poll answers the same question, but under
    gevent it builds hub watchers on every call, about 4 % of a worker's time here.) TLS sockets cannot peek:
    IDLE, and the next read finds out.
    """
    if type(sock) is gevent_socket.socket:
        # gevent's socket (every socket in a worker) wraps a non-blocking OS socket: peek at that one, without
        # gevent's wait loop and the two changes of timeout around it.
        try:
            data = sock._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return IDLE
        except OSError:
            return CLOSED
        return DATA if data else CLOSED
    timeout = sock.gettimeout()
    try:
        sock.settimeout(0.0)
        data = sock.recv(1, socket.MSG_PEEK)
    except (BlockingIOError, ValueError):
        return IDLE
    except OSError:
        return CLOSED
    finally:
        sock.settimeout(timeout)
    return DATA if data else CLOSED


def still_open(sock: socket.socket | None) -> bool:
    """Whether an idle kept-alive connection can be reused: open and holding no bytes nobody asked for. Not yet
    connected counts as open: it connects on first use."""
    return sock is None or peek(sock) == IDLE


def send_all(sock: socket.socket, data: bytes) -> None:
    """sock.sendall(data), in one send(2) when the kernel takes it all, as it does a head or a small body.

    gevent's sendall() first asks the kernel for the socket's send buffer size (a getsockopt(2)) and sets up a
    timed loop, on every call: about 2 % of a worker's time for a proxied request's three writes (to the client,
    the upstream and Redis). The rest of a larger message goes through sendall() as before.
    """
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])
