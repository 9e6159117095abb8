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
    return get_hub().threadpool.apply(fn, args)
