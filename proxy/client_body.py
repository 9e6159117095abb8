"""Reading a client's request body with two time bounds: an idle timeout and a minimum average rate.

gunicorn reads request bodies without a timeout, so a client that announced ten bytes and sent two held a
greenlet for as long as it kept the connection open; a few thousand such clients filled every worker.
`TimedInput` wraps `wsgi.input`:

- idle: no bytes for GATEWAY_CLIENT_BODY_TIMEOUT seconds ends the read (nginx's client_body_timeout, 60 s by
  default there, bounds the same gap between two reads);
- rate: after that many seconds the body must have kept GATEWAY_CLIENT_BODY_MIN_RATE bytes per second on
  average (Apache's mod_reqtimeout `body=20,MinRate=500`), so a client dripping one byte just inside the
  idle timeout is cut off too.

Either raises ClientBodyTimeout (the proxy answers 408): the body is never forwarded as complete, the
attempt is never reported to the upstream's breaker, and gunicorn closes the connection, since the unread
rest of the body leaves the start of a next request unknown.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from functools import cache

from proxy.forwarding import ClientBodyError


class ClientBodyTimeout(ClientBodyError):
    """The client's request body stopped arriving, or arrived slower than the minimum rate."""


class TimedInput:
    """wsgi.input with the idle timeout and the minimum rate; plain reads when there is no socket (tests)."""

    __slots__ = ("idle", "min_rate", "received", "sock", "started", "stream", "timer")

    def __init__(self, environ: dict, *, idle: float, min_rate: float) -> None:
        self.stream = environ["wsgi.input"]
        self.sock = environ.get("gunicorn.socket")
        self.idle = idle
        self.min_rate = min_rate
        self.received = 0
        self.started: float | None = None
        self.timer = _gevent_timeout() if min_rate and self.sock is not None else None

    def read(self, size: int) -> bytes:
        """Up to `size` bytes, fewer only at the end of the body, as wsgi.input.read does."""
        if self.sock is None:
            return self.stream.read(size)
        if self.started is None:
            self.started = time.monotonic()
        parts = []
        while size > 0:
            data = self._piece(size)
            if not data:
                break
            parts.append(data)
            size -= len(data)
        return b"".join(parts)

    def _piece(self, size: int) -> bytes:
        sock = self.sock
        timer = nullcontext()
        if self.min_rate:
            # The grace period, then one second per MIN_RATE bytes received, from the first read on.
            left = self.started + self.idle + self.received / self.min_rate - time.monotonic()
            if left <= 0:
                raise ClientBodyTimeout(f"the request body arrived slower than {self.min_rate:g} bytes/s")
            # gunicorn returns only once it has all the bytes asked for: ask for no more than the client owes
            # by the time left, and allow that piece the time the rate gives it.
            size = min(size, max(1024, int(left * self.min_rate)))
            if self.timer is not None:
                slow = ClientBodyTimeout(f"the request body arrived slower than {self.min_rate:g} bytes/s")
                timer = self.timer(left + size / self.min_rate, slow)
        previous = sock.gettimeout()
        sock.settimeout(self.idle)
        try:
            with timer:
                data = self.stream.read(size)
        except TimeoutError as exc:
            raise ClientBodyTimeout(f"no bytes of the request body for {self.idle:g} s") from exc
        finally:
            sock.settimeout(previous)
        self.received += len(data)
        return data


@cache
def _gevent_timeout():
    """gevent.Timeout when this worker runs gevent (gunicorn.conf.py's worker class); else None."""
    try:
        from gevent import monkey
    except ImportError:
        return None
    if not monkey.is_module_patched("socket"):
        return None
    from gevent import Timeout

    return Timeout
