"""Small HTTP helpers the core and the apps share: naming a header in the WSGI environ, and telling whether a
kept-alive connection is still open before reusing it."""

from __future__ import annotations

import socket


def environ_key(header: str) -> str:
    """The WSGI environ key of a request header: X-API-Key -> HTTP_X_API_KEY."""
    return "HTTP_" + header.upper().replace("-", "_")


def still_open(sock: socket.socket | None) -> bool:
    """Whether an idle connection can be reused: a non-blocking one-byte peek, one system call.

    Nothing to read means open and idle; end of file, bytes nobody asked for, or an error mean it is not. (A
    readiness poll answers the same question, but under gevent it builds hub watchers on every call, about 4 %
    of a worker's time here.) Not yet connected counts as open: it connects on first use. TLS sockets cannot
    peek; the next read finds out.
    """
    if sock is None:
        return True
    timeout = sock.gettimeout()
    try:
        sock.settimeout(0.0)
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except ValueError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(timeout)
    return False
