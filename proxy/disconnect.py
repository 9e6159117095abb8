"""Whether the client of a request has gone, asked without reading anything it sent.

A retry loop waiting out a backoff has nothing to send the client until it ends; if the client left
meanwhile, the retries only load an upstream for an answer nobody reads (nginx logs such a request as 499).
"""

from __future__ import annotations

import socket
from collections.abc import Callable


def gone_check(environ: dict) -> Callable[[], bool] | None:
    """A function telling whether the client closed its connection; None when there is no socket (tests)."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return None

    def gone() -> bool:
        timeout = sock.gettimeout()
        try:
            sock.settimeout(0.0)
            # Bytes waiting (a pipelined request) mean the client is there; end of file or a reset mean it left.
            return not sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            sock.settimeout(timeout)

    return gone
