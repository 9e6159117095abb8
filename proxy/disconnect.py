"""Whether the client of a request has gone, asked without reading anything it sent.

A retry loop waiting out a backoff has nothing to send the client until it ends; if the client left
meanwhile, the retries only load an upstream for an answer nobody reads (nginx logs such a request as 499).
"""

from __future__ import annotations

from collections.abc import Callable

from gateway_project.http import CLOSED, peek


def gone_check(environ: dict) -> Callable[[], bool] | None:
    """A function telling whether the client closed its connection; None when there is no socket (tests).

    Bytes waiting (a pipelined request) mean the client is there; end of file or a reset mean it left.
    """
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return None
    return lambda: peek(sock) == CLOSED
