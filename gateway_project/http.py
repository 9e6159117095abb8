"""Small HTTP helpers the core and the apps share: naming a header in the WSGI environ, and telling whether a
kept-alive connection is still open before reusing it."""

from __future__ import annotations

import socket


def environ_key(header: str) -> str:
    """The WSGI environ key of a request header: X-API-Key -> HTTP_X_API_KEY."""
    return "HTTP_" + header.upper().replace("-", "_")


IDLE, DATA, CLOSED = "idle", "data", "closed"


def peek(sock: socket.socket) -> str:
    """What a connection holds right now, without reading it: IDLE (nothing to read), DATA or CLOSED.

    A non-blocking one-byte peek: one system call. (A readiness poll answers the same question, but under
    gevent it builds hub watchers on every call, about 4 % of a worker's time here.) TLS sockets cannot peek:
    IDLE, and the next read finds out.
    """
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
