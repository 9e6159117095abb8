"""Calls that block inside C code, made without freezing a gevent worker.

Under gevent every greenlet of a worker shares one thread. Most I/O yields (sockets are patched, and psycopg
waits cooperatively), but SQLite waits for its write lock inside C: a background write that waits would stop
every request of the worker meanwhile. Such calls go to gevent's thread pool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_blocking(fn: Callable[..., T], *args) -> T:
    try:
        from gevent import get_hub, monkey
    except ImportError:  # gevent is a dependency, but the code does not need it to run
        return fn(*args)
    if not monkey.is_module_patched("socket"):
        return fn(*args)
    return get_hub().threadpool.apply(_in_pool_thread, (fn, *args))


def _in_pool_thread(fn, *args):
    from django.db import close_old_connections

    try:
        return fn(*args)
    finally:
        # Pool threads live on; do not leave their database connections open between calls.
        close_old_connections()


class Stalled(Exception):
    """A call ran past its time bound and was abandoned (bounded())."""


def bounded(seconds: float, fn: Callable[..., T], *args) -> T:
    """Run `fn`, giving up with Stalled after `seconds` in a gevent worker.

    A database that hangs (frozen, or a connection whose peer vanished without a word while the kernel still
    acknowledges) answers neither with data nor with an error: only a timer ends the wait. Under gevent the
    greenlet is interrupted where it waits (psycopg waits through gevent's select there); the caller then
    closes the connection. Without gevent (management commands, in-process tests) the driver's own timeouts
    bound the call.
    """
    try:
        from gevent import Timeout, monkey
    except ImportError:
        return fn(*args)
    if not monkey.is_module_patched("socket"):
        return fn(*args)
    with Timeout(seconds, Stalled(f"no answer within {seconds:g} s")):
        return fn(*args)
