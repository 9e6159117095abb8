"""The gateway's gunicorn worker: gunicorn's gevent worker, made fair (gunicorn.conf.py names it).

gunicorn's gevent worker showed a long tail on keep-alive connections (docs/benchmarks.md has the numbers), from
two unfairnesses, each fixed here without touching how requests are parsed:

- Within a worker: a greenlet that has answered a request finds the client's next one already in its socket,
  reads it without yielding and serves it, while the worker's other connections wait. Yielding with
  `gevent.sleep(0)` is not enough: gevent resumes such greenlets in its callback phase, which runs them in
  groups of 50 until 5 ms have passed before it looks at the sockets again, so connections whose next request
  is always already there take turns among themselves while a request whose socket (client, Redis or
  upstream) became ready waits.
  Here a greenlet that has answered a request and keeps the connection open joins the worker's queue of next
  requests (`Turns`): each time the event loop has nothing else pending, the queue lets the connections waiting
  in it go, up to TURN_BATCH of them, in arrival order, so requests in flight finish before new ones start,
  and new ones start in the order their connections became free. A queue that the loop never lets go (it is
  never idle) lets go every greenlet that has waited TURN_MAX_WAIT, so nothing starves.
  Letting them go together, not one per idle moment, lets the requests of one turn share the work a turn does
  once: their rate-limit calls go to Redis in one write (`redis_pipe`), and the loop polls its sockets once for
  them all. At 64 connections this cut the CPU per proxied request by 11-20 % (docs/benchmarks.md).
- Between workers: every worker waits on the one listening socket, and whichever wakes first accepts. A burst of
  new connections (a client or load balancer opening its pool) mostly lands on the worker that happened to be
  idle, and stays there for the connections' lifetime: one worker served 60 of 64 keep-alive connections
  while the other idled. Here each worker publishes its count of open connections in memory shared with the
  other workers of the instance (created by the master, inherited through fork) and does not accept while it
  holds more than the least loaded live worker plus ACCEPT_SLACK. It accepts anyway once a connection has
  waited ACCEPT_MAX_DEFER for the others, so a stuck or busy worker never holds connections back for long.

It also writes each response's header block together with the first body bytes (`Response`), one send instead
of two, and formats the Date header once a second instead of once a response (`http_date`).

Once the application is loaded it freezes what exists for the garbage collector (`gc.freeze()`): Django, the
apps and the compiled configuration are about 110,000 long-lived objects, and every full collection walked them
all, stopping the worker and every request in it for 50-70 ms, twice per worker in a 10 s run at 64 connections
(measured with gc.callbacks). Frozen, they are left out of collections, which then took under 1 ms. Objects made
later, a reloaded configuration included, are collected as before.
"""

from __future__ import annotations

import gc
import mmap
import os
import time
from collections import deque

from gevent import get_hub
from gevent.hub import Waiter
from gevent.server import StreamServer
from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.workers import ggevent
from gunicorn.workers.ggevent import GeventWorker

from gateway_project.http import send_all

#: Workers one instance can track (by the worker's age, so a new worker takes a new slot).
SLOTS = 256
#: How many more open connections than the least loaded worker a worker may hold and still accept.
ACCEPT_SLACK = 1
#: How often a worker that held back looks again, and how long at most it holds a new connection back.
ACCEPT_RETRY = 0.001
ACCEPT_MAX_DEFER = 0.02
#: The longest a keep-alive connection's next request waits for an idle moment of its worker's loop.
TURN_MAX_WAIT = 0.05
#: How many waiting keep-alive connections one idle moment of the loop lets go together (in arrival order).
TURN_BATCH = 32
#: The longest one write of a response may wait for the client to take bytes (GATEWAY_SEND_TIMEOUT, set in run()).
SEND_TIMEOUT = 60.0

# [pid, open connections] per slot, shared by the master's workers: made at import in the master.
_shared = mmap.mmap(-1, SLOTS * 2 * 4)
_counts = memoryview(_shared).cast("i")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _BalancedServer(StreamServer):
    """gevent's StreamServer that asks its worker before it accepts."""

    worker: GatewayWorker

    def _do_read(self):
        if self.worker.hold_back():
            self.stop_accepting()
            self._timer = self.loop.timer(ACCEPT_RETRY)
            self._timer.start(self._start_accepting_if_started)
            return
        super()._do_read()


class _Captured:
    """Stands in for the client socket while gunicorn formats a response's header block."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def sendall(self, data: bytes) -> None:
        self.data += data


class Response(wsgi.Response):
    """gunicorn's response, sending its header block with the first piece of the body in one write: one system
    call and one TCP segment fewer per response. The header block is formatted by gunicorn and held back only
    until the first body bytes; a response that writes no body bytes (HEAD, 204, 304, an empty piece that asks
    for the headers to go out now) sends it at once, as gunicorn does."""

    _head = b""

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        sock, self.sock = self.sock, _Captured()
        try:
            super().send_headers()
        finally:
            self._head, self.sock = self.sock.data, sock

    def _flush_head(self) -> None:
        head, self._head = self._head, b""
        if head:
            send_all(self.sock, head)

    def write(self, arg) -> None:
        super().write(arg)
        self._flush_head()  # when no body bytes went out with it

    def _emit_body(self, data: bytes) -> None:
        head, self._head = self._head, b""
        if not head:
            super()._emit_body(data)
        elif self.chunked:
            send_all(self.sock, b"%s%X\r\n%s\r\n" % (head, len(data), data))
        else:
            send_all(self.sock, head + data)

    def sendfile(self, respiter) -> bool:
        self.send_headers()
        self._flush_head()  # the file goes from the kernel: nothing of it can join the header block
        return super().sendfile(respiter)

    def close(self) -> None:
        if not self.headers_sent:
            self.send_headers()
        if self._head and self.chunked:
            head, self._head = self._head, b""
            send_all(self.sock, head + b"0\r\n\r\n")
            return
        self._flush_head()
        super().close()


_gunicorn_http_date = util.http_date
_date: tuple[int, str] = (0, "")


def http_date(timestamp: float | None = None) -> str:
    """gunicorn's util.http_date, the current time's formatted once per second (by the email package, which cost
    about 1 % of a worker's time per response)."""
    global _date
    if timestamp is not None:
        return _gunicorn_http_date(timestamp)
    second = int(time.time())
    if _date[0] != second:
        _date = (second, _gunicorn_http_date(second))
    return _date[1]


class Turns:
    """One worker's keep-alive connections waiting to start their next request, in the order they got there.

    The loop's idle watcher (called when no other watcher is pending) lets the first `batch` go; a timer lets go
    every one that has waited `max_wait`, for a loop that stays busy. Made in the worker process, after fork.
    """

    def __init__(self, max_wait: float, batch: int = 1) -> None:
        loop = get_hub().loop
        self.max_wait = max_wait
        self.batch = batch
        self.waiting: deque[tuple[float, Waiter]] = deque()
        self.idle = loop.idle()
        self.timer = loop.timer(max_wait / 4, max_wait / 4)

    def wait(self) -> None:
        entry = (time.monotonic(), Waiter())
        self.waiting.append(entry)
        if not self.idle.active:
            self.idle.start(self._on_idle)
            self.timer.start(self._on_timer)
        try:
            entry[1].get()
        except BaseException:
            # Killed while waiting (the worker is stopping): never switch to it later.
            if entry in self.waiting:
                self.waiting.remove(entry)
                self._stop_if_empty()
            raise

    def _on_idle(self) -> None:
        for _ in range(min(len(self.waiting), self.batch)):
            self.waiting.popleft()[1].switch(None)
        self._stop_if_empty()

    def _on_timer(self) -> None:
        oldest = time.monotonic() - self.max_wait
        while self.waiting and self.waiting[0][0] <= oldest:
            self.waiting.popleft()[1].switch(None)
        self._stop_if_empty()

    def _stop_if_empty(self) -> None:
        if not self.waiting:
            self.idle.stop()
            self.timer.stop()


class GatewayWorker(GeventWorker):
    def init_process(self):
        self._slot = 2 * (self.age % SLOTS)
        self._pid = os.getpid()
        self._open = 0
        self._held_since: float | None = None
        self._last_hold = 0.0
        _counts[self._slot] = self._pid
        _counts[self._slot + 1] = 0
        super().init_process()

    def run(self):
        # The application is loaded (gunicorn loads it before run): leave what exists now out of collections.
        gc.freeze()
        # This process only (a forked worker): gunicorn's gevent worker builds its servers from this name.
        _BalancedServer.worker = self
        ggevent.StreamServer = _BalancedServer
        wsgi.Response = Response
        util.http_date = http_date
        self._turns = Turns(TURN_MAX_WAIT, TURN_BATCH)
        from django.conf import settings

        global SEND_TIMEOUT
        SEND_TIMEOUT = getattr(settings, "GATEWAY_SEND_TIMEOUT", SEND_TIMEOUT)
        from gateway_project import metrics

        metrics.tally_per_loop_pass(get_hub().loop.run_callback)
        try:
            super().run()
        finally:
            _counts[self._slot] = 0
            metrics.stop_tallying()

    def hold_back(self) -> bool:
        """Whether to leave the connection waiting in the listen queue for a less loaded worker."""
        fewest = None
        for slot in range(0, len(_counts), 2):
            pid = _counts[slot]
            if pid and pid != self._pid:
                count = _counts[slot + 1]
                if (fewest is None or count < fewest) and _alive(pid):
                    fewest = count
        if fewest is None or self._open <= fewest + ACCEPT_SLACK:
            self._held_since = None
            return False
        now = time.monotonic()
        if self._held_since is None or now - self._last_hold > 5 * ACCEPT_RETRY:
            self._held_since = now  # a new wait (the last one ended when another worker took the connection)
        if now - self._held_since >= ACCEPT_MAX_DEFER:
            self._held_since = None
            return False
        self._last_hold = now
        return True

    def handle(self, listener, client, addr):
        self._open += 1
        _counts[self._slot + 1] = self._open
        try:
            super().handle(listener, client, addr)
        finally:
            self._open -= 1
            _counts[self._slot + 1] = self._open

    def handle_request(self, listener_name, req, sock, addr):
        # Writes to a client that stopped reading wait at most SEND_TIMEOUT (nginx's send_timeout): gunicorn's
        # socket has no timeout, so such a client held its worker slot, and the upstream connection its answer
        # streams from, for as long as it kept the connection open. Reads are bounded apart (the keep-alive wait,
        # the request body's timeouts, an upgraded tunnel's idle timeout), all shorter or set by themselves.
        sock.settimeout(SEND_TIMEOUT)
        try:
            # A connection that is to close ends here with StopIteration; one that stays open waits its turn.
            super().handle_request(listener_name, req, sock, addr)
        finally:
            sock.settimeout(None)
        self._turns.wait()
