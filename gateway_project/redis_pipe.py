"""One worker's pipelined hot-path connection to one Redis node.

Every concurrent script call of a worker shares one connection per Redis node: callers queue their commands,
one writer sends whatever has queued in one write, and one reader hands the replies back in order. A burst of
a thousand requests in one worker is a thousand commands in flight on one connection, answered at Redis's
speed, instead of a thousand callers competing for a few connections. A lone call (nothing else in flight)
is written and read by its own caller, as on a plain connection.

Why not a pool: with 64 pooled connections and a 50 ms wait for a free one, a burst ran out of connections and
a request that found none was treated as "Redis is down", whose usual failure mode is to allow: 600 requests
against a limit of 50 admitted up to 98. Here the gateway's own load never fails a call. Only Redis's own
failures do, and then every call outstanding on the connection fails at once with the error:

- connecting is refused, or takes longer than the connect timeout;
- the connection is reset or closed;
- nothing arrives for the command timeout (GATEWAY_REDIS_SOCKET_TIMEOUT) while commands are outstanding,
  and every outstanding command is past its deadline. Before that counts, the socket is checked again without
  waiting: a worker too busy to read its replies in time (its greenlets ran instead) has them waiting in the
  socket, which is no Redis failure;
- a script says it ran after its deadline (below) a second time: Redis answered, so the first time the call
  is sent again with a new deadline (store.Pending).

The next call connects anew. Calls not yet written when the connection failed are written on the new one. A
connection that Redis closed while it was idle (a restart) is found out before anything is written to it, so
it costs no call.

Deadlines: a script the gateway gave up on must not count when Redis runs it later (a Redis frozen for a while
runs what is in its socket when it wakes). So every hot-path script gets, as ARGV[1], the Redis time after
which it must change nothing: the moment it was written plus the command timeout. The reader gives up on a
connection only when every call in flight on it is past that moment, so nothing it gave up on can count.
Redis's clock is learnt from TIME replies: the offset between Redis's clock and this worker's monotonic clock
is at most `Redis time - local send time` of any TIME call, so the smallest such value of the last few
seconds is used; it errs, by the one-way latency, towards a later deadline. At most `window` commands are
written and unanswered at once; the rest wait here, where nothing has reached Redis yet.
"""

from __future__ import annotations

import math
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
from redis.exceptions import ConnectionError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway_project.http import send_all, still_open

#: Where a call's command takes its deadline (Redis time, microseconds) when it is written.
DEADLINE = object()
#: A call still unanswered after this long was lost by the pipe itself (a bug, not Redis): fail it.
PATIENCE = 10.0
#: Seconds between TIME calls that keep the clock offset fresh, and how many recent ones count.
CLOCK_SAMPLE_EVERY = 1.0
CLOCK_SAMPLES = 10
#: Replies that mean this connection talks to the wrong server now (a Sentinel failover demoted it).
_RECONNECT_ON = ("READONLY",)
_TIME = ("TIME",)
#: The callers (thread or greenlet idents) that are to read their own reply on some pipe: they never gather.
_readers: set[int] = set()
#: After a call found another in flight, or shared a write, calls wait for the rest of their loop's turn to share
#: one write for this long (seconds). A lone caller (one request at a time, nothing else in flight for this long)
#: writes at once.
SHARED_FOR = 1.0


class Call:
    """One command on its way through a pipe; `result()` waits for its reply."""

    __slots__ = ("abandoned", "command", "done", "error", "read_from", "reply", "sent")

    def __init__(self, command: tuple, done) -> None:
        self.command = command
        self.done = done
        self.reply: Any = None
        self.error: BaseException | None = None
        self.abandoned = False
        self.sent = math.inf  # when it was written (monotonic); until then nobody gives up on it
        self.read_from: Pipe | None = None  # the pipe whose socket this call's caller reads itself

    def resolve(self, reply: Any) -> None:
        if isinstance(reply, ResponseError):
            self.error = reply
        else:
            self.reply = reply
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()

    def result(self) -> Any:
        if self.read_from is not None:
            pipe, self.read_from = self.read_from, None
            pipe.read_own(self)
        if not self.done.wait(PATIENCE):
            self.abandoned = True
            raise RedisTimeoutError(f"no answer from the hot-path Redis pipe within {PATIENCE:.0f} s")
        if self.error is not None:
            raise self.error
        return self.reply


def encode(command: tuple, deadline: bytes) -> bytes:
    """The command in RESP, DEADLINE replaced by `deadline`."""
    out = [b"*%d\r\n" % len(command)]
    for arg in command:
        if arg is DEADLINE:
            arg = deadline
        elif isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class Pipe:
    """The pipelined connection of this worker to one Redis node.

    `connect` makes a redis-py connection object (not yet connected): its class does the handshake (AUTH,
    SELECT, TLS, Sentinel's master lookup); after it, the socket is this pipe's. `on_failure` hears every
    failure of the connection (the cluster router refreshes its slot map).
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        timeout: float,
        window: int = 64,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._connect = connect
        self.timeout = timeout
        self.window = window
        self._on_failure = on_failure
        # One lock; the writer waits on _cond (calls queued, room in the window), the reader on _flight (calls in
        # flight), so each wake-up reaches only the one it concerns.
        lock = threading.Lock()
        self._cond = threading.Condition(lock)
        self._flight = threading.Condition(lock)
        self._write_lock = threading.Lock()
        self._event = _event_class()
        self._yield = _yield_function()
        self._queue: deque[Call] = deque()
        self._inflight: deque[Call] = deque()
        self._connection = None
        self._sock: socket.socket | None = None
        self._reader: hiredis.Reader | None = None
        self._epoch = 0
        self._offsets: deque[float] = deque(maxlen=CLOCK_SAMPLES)
        self._sampled_at = self._sample_sent = 0.0
        self._sampling = False
        self._reader_busy = self._caller_reading = False  # who reads the socket now: at most one of them
        self._threads_started = False
        self._gathered: list[Call] | None = None  # calls of this turn of the loop, written together
        self._shared_until = 0.0
        self.closed = False

    # --- callers -------------------------------------------------------------------------------------------

    def submit(self, command: tuple, *, read_own: bool = False) -> Call:
        """Send `command`. With `read_own`, the caller promises to call result(), which then reads the reply
        itself when nothing else was in flight (see _write)."""
        call = Call(command, self._event())
        with self._cond:
            if self.closed:
                call.fail(ConnectionError("the hot-path Redis pipe is closed"))
                return call
            if not self._threads_started:
                self._threads_started = True
                threading.Thread(target=self._write_loop, name="gateway-redis-writer", daemon=True).start()
                threading.Thread(target=self._read_loop, name="gateway-redis-reader", daemon=True).start()
            if self._queue or self._sock is None or len(self._inflight) >= self.window:
                self._queue.append(call)
                self._cond.notify()
                return call
            if self._gathered is not None:
                self._gathered.append(call)  # written with the first call of this turn of the loop
                return call
            if self._inflight:
                self._shared_until = time.monotonic() + SHARED_FOR
            # Not while this caller is to read the replies of another pipe (its own call there): its yield would
            # leave those replies unread for the pass, and a kill during it would leave them unread for good.
            gather = (
                self._yield is not None
                and (bool(self._inflight) or time.monotonic() < self._shared_until)
                and threading.get_ident() not in _readers
            )
            if gather:
                self._gathered = [call]
        calls = [call]
        if gather:
            # The first call of this turn of the event loop: the greenlets the loop runs in this turn add theirs
            # (a worker starts several requests in one turn: workers.Turns), then this one writes them all in
            # one write. Redis reads them in one read and answers in one write.
            try:
                self._yield()
            except BaseException:  # this caller was killed meanwhile: the writer takes the calls
                with self._cond:
                    calls, self._gathered = self._gathered, None
                    self._queue.extend(calls)
                    self._cond.notify()
                raise
            with self._cond:
                calls, self._gathered = self._gathered, None
                if len(calls) > 1:
                    self._shared_until = time.monotonic() + SHARED_FOR
            if self.closed:
                for each in calls:
                    each.fail(ConnectionError("the hot-path Redis pipe is closed"))
                return call
        # Nothing waits before them: written here, without a switch to the writer.
        if self._write(calls, read_own=read_own):
            call.read_from = self
        return call

    def close(self) -> None:
        with self._cond:
            self.closed = True
            queued = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
            self._flight.notify_all()
        self._drop(self._epoch, ConnectionError("the hot-path Redis pipe is closed"))
        for call in queued:
            call.fail(ConnectionError("the hot-path Redis pipe is closed"))

    @property
    def connected(self) -> bool:
        return self._sock is not None

    # --- the writer ----------------------------------------------------------------------------------------

    def _writable(self) -> bool:
        return self.closed or (bool(self._queue) and len(self._inflight) < self.window)

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(self._writable)
                if self.closed:
                    return
                sock = self._sock
            if sock is None:
                try:
                    self._open()
                except (RedisError, OSError) as exc:
                    self._fail_queued(exc if isinstance(exc, RedisError) else ConnectionError(str(exc)))
                continue
            with self._cond:
                batch: list[Call] = []
                room = self.window - len(self._inflight)
                while self._queue and len(batch) < room:
                    call = self._queue.popleft()
                    if not call.abandoned:
                        batch.append(call)
            if batch:
                self._write(batch)

    def _write(self, calls: list[Call], *, read_own: bool = False) -> bool:
        """Write `calls` in one go; True when the caller (`read_own`) is to read the reply itself.

        The write lock keeps the order of the calls in flight the order of the bytes on the socket (replies are
        handed out in that order). A lone call on an idle pipe is read by its own caller, as a plain connection
        would be: no switch to the reader and back (without this, a lone check cost about twice the CPU of the
        connection stack this replaced). Calls written meanwhile are read by the reader once the caller is done.
        """
        own = False
        with self._write_lock:
            with self._cond:
                sock, epoch = self._sock, self._epoch
                idle = not self._inflight
                if sock is not None and idle and not still_open(sock):
                    # Idle, and closed by Redis meanwhile (a restart, an idle timeout): nothing was lost, so
                    # connect anew instead of failing the calls about to be written.
                    sock = None
                if sock is None or self.closed:
                    self._queue.extendleft(reversed(calls))
                    self._cond.notify()
                    drop = sock is None and self._sock is not None
                else:
                    drop = False
                    room = max(self.window - len(self._inflight), 0)
                    if len(calls) > room:
                        # More were gathered in one pass than the window has room for: the writer sends the rest as
                        # replies make room.
                        self._queue.extendleft(reversed(calls[room:]))
                        self._cond.notify()
                        calls = calls[:room]
                if sock is not None and not self.closed and calls:
                    now = time.monotonic()
                    if not self._sampling and now - self._sampled_at >= CLOCK_SAMPLE_EVERY:
                        self._sampling, self._sample_sent = True, now
                        calls = [*calls, Call(_TIME, self._event())]
                    deadline = b"%d" % ((now + min(self._offsets) + self.timeout) * 1_000_000)
                    self._inflight.extend(calls)
                    if idle and read_own and not self._reader_busy:
                        self._caller_reading = own = True
                        _readers.add(threading.get_ident())
                    elif idle:
                        self._flight.notify()  # the reader waits for calls in flight
            if drop:
                self._drop(epoch, ConnectionError("Redis closed the idle connection"), quiet=True)
            if sock is None or self.closed or not calls:
                return False
            try:
                send_all(sock, b"".join([encode(call.command, deadline) for call in calls]))
                # Stamped once written: this process may be paused (a busy machine) between taking the calls and
                # writing them, and that pause is not Redis's silence.
                written = time.monotonic()
                for call in calls:
                    call.sent = written
            except TimeoutError as exc:  # the socket's timeout: Redis stopped reading
                self._drop(epoch, RedisTimeoutError(f"Redis did not read for {self.timeout * 1000:.0f} ms: {exc}"))
            except OSError as exc:
                self._drop(epoch, ConnectionError(f"writing to Redis failed: {exc}"))
        return own

    def read_own(self, call: Call) -> None:
        """Read replies on this (the caller's) greenlet until `call` has its own, then leave the rest to the
        reader."""
        try:
            while not call.done.is_set():
                with self._cond:
                    sock, reader, epoch = self._sock, self._reader, self._epoch
                if sock is None or not self._read_once(sock, reader, epoch):
                    break
        finally:
            _readers.discard(threading.get_ident())
            with self._cond:
                self._caller_reading = False
                if self._inflight and self._sock is not None:
                    self._flight.notify()

    def _open(self) -> None:
        """Connect, and learn Redis's clock before any call is written (one TIME round trip)."""
        connection = self._connect()
        connection.connect()
        sock = connection._sock
        try:
            sock.settimeout(self.timeout)
            reader = _reader()
            sent = time.monotonic()
            sock.sendall(b"*1\r\n$4\r\nTIME\r\n")
            reply = False
            while reply is False:
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    if _ready(sock):
                        continue  # as in the reader: this worker was busy, Redis was not slow
                    raise
                if not data:
                    raise ConnectionError("Redis closed the connection")
                reader.feed(data)
                reply = reader.gets()
            if isinstance(reply, ResponseError):
                raise reply
        except OSError as exc:
            connection.disconnect()
            raise ConnectionError(f"Redis did not answer TIME: {exc}") from exc
        except RedisError:
            connection.disconnect()
            raise
        with self._cond:
            self._connection, self._sock, self._reader = connection, sock, reader
            self._epoch += 1
            self._offsets.clear()
            self._offsets.append(_redis_seconds(reply) - sent)
            self._sampled_at = sent
            self._sampling = False
            self._cond.notify()
            self._flight.notify()

    def _fail_queued(self, error: BaseException) -> None:
        with self._cond:
            queued = list(self._queue)
            self._queue.clear()
        for call in queued:
            call.fail(error)
        if self._on_failure is not None:
            self._on_failure(error)

    # --- the reader ----------------------------------------------------------------------------------------

    def _readable(self) -> bool:
        return self.closed or (bool(self._inflight) and self._sock is not None and not self._caller_reading)

    def _read_loop(self) -> None:
        while True:
            with self._flight:
                self._flight.wait_for(self._readable)
                if self.closed:
                    return
                sock, reader, epoch = self._sock, self._reader, self._epoch
                self._reader_busy = True
            try:
                self._read_once(sock, reader, epoch)
            finally:
                with self._cond:
                    self._reader_busy = False

    def _read_once(self, sock: socket.socket, reader: hiredis.Reader, epoch: int) -> bool:
        """One read from the socket, every complete reply handed out; False once the connection is gone."""
        try:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("Redis closed the connection")
        except TimeoutError:  # the socket's timeout
            if _ready(sock):
                return True  # the replies are there: this worker was busy, Redis was not slow
            with self._cond:
                # Give up only once every call in flight is past its deadline: one that is not could still
                # run, and count, after its caller was told Redis failed.
                newest = self._inflight[-1].sent if epoch == self._epoch and self._inflight else 0.0
            if time.monotonic() < newest + self.timeout:
                return True
            self._drop(epoch, RedisTimeoutError(f"Redis did not answer within {self.timeout * 1000:.0f} ms"))
            return False
        except (OSError, ValueError) as exc:  # ValueError: the socket was closed meanwhile
            self._drop(epoch, ConnectionError(f"reading from Redis failed: {exc}"))
            return False
        except ConnectionError as exc:
            self._drop(epoch, exc)
            return False
        reconnect = None
        with self._cond:
            if epoch != self._epoch:
                return False
            full = len(self._inflight) >= self.window
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                call = self._inflight.popleft()
                if call.command is _TIME:
                    self._sample(call, reply)
                call.resolve(reply)
                if isinstance(reply, ResponseError) and str(reply).startswith(_RECONNECT_ON):
                    reconnect = reply
            if full and self._queue:
                self._cond.notify()  # room in the window for the writer
        if reconnect is not None:
            self._drop(epoch, ConnectionError(f"Redis answered {reconnect}; reconnecting"))
            return False
        return True

    def _sample(self, call: Call, reply) -> None:
        """Redis's clock minus ours, from a TIME call: at most the true offset, since Redis ran the call after
        the batch it rode in was built (when _sample_sent was taken)."""
        self._sampling = False
        self._sampled_at = self._sample_sent
        if isinstance(reply, list):
            self._offsets.append(_redis_seconds(reply) - self._sample_sent)

    def _drop(self, epoch: int, error: BaseException, *, quiet: bool = False) -> None:
        """The connection failed: close it and fail every call outstanding on it (`quiet`: it had none, and
        nobody needs to hear of it)."""
        with self._cond:
            if epoch != self._epoch or self._sock is None:
                return
            connection = self._connection
            self._connection = self._sock = self._reader = None
            self._epoch += 1
            failed = list(self._inflight)
            self._inflight.clear()
            self._sampling = False
            self._cond.notify()
        connection.disconnect()
        for call in failed:
            call.fail(error)
        if self._on_failure is not None and not self.closed and not quiet:
            self._on_failure(error)


def _yield_function():
    """gevent.sleep(0) in a gevent worker: run the loop's other ready greenlets, then come back."""
    try:
        from gevent import monkey
    except ImportError:
        return None
    if monkey.is_module_patched("threading"):
        import gevent

        return lambda: gevent.sleep(0)
    return None


def _event_class() -> type:
    """A call's "answered" flag: gevent's own Event in a gevent worker (threading's, as gevent patches it, is a
    condition over locks: several lock operations per call on the hot path), threading's elsewhere."""
    try:
        from gevent import monkey
    except ImportError:
        return threading.Event
    if monkey.is_module_patched("threading"):
        from gevent.event import Event

        return Event
    return threading.Event


def _reader() -> hiredis.Reader:
    return hiredis.Reader(replyError=ResponseError)


def _redis_seconds(reply) -> float:
    seconds, micros = reply
    return int(seconds) + int(micros) / 1_000_000


def _ready(sock: socket.socket) -> bool:
    """Whether bytes are waiting on the socket right now (no waiting)."""
    pending = getattr(sock, "pending", None)  # TLS: decrypted bytes already buffered
    if pending is not None and pending():
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return bool(readable)
