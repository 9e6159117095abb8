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
