"""Reading an upstream's response head as a proxy must (RFC 9112), under the upstream's deadline.

http.client reads a response for a user agent that trusts its server: it skips only `100 Continue` and
returns any other 1xx as the final answer (leaving the real one unread on a connection that goes back to the
pool), accepts a header section cut off by a close as complete, keeps a Content-Length next to
`Transfer-Encoding: chunked`, and restarts its read timeout at every byte. `UpstreamHTTPResponse` replaces its
`begin()`:

- interim answers (1xx) are read past to the final one; a 101 is refused unless the gateway asked to switch
  (proxy/upgrade.py, on routes that allow the protocol), and then it is the final answer;
- a status line or header section that ends before its blank line is an error, not an empty answer;
- framing follows RFC 9112 §6.3: only `chunked` is accepted as a transfer coding; a Content-Length next to it
  is removed and the connection is not reused; a Content-Length that is not one non-negative number is an
  error; identical repeated values count as one;
- the whole head, interim answers included, must arrive before the deadline in `HEADER_DEADLINE`.

Errors are `http.client.HTTPException`s, which urllib3 turns into ProtocolError (502), and the deadline is a
TimeoutError, which it turns into ReadTimeoutError (504); either way the connection is closed, never pooled.
"""

from __future__ import annotations

import http.client
import io
import re
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

MAX_HEAD_BYTES = 1024 * 1024
# http.client's limits on one header line and on the number of lines.
_MAXLINE = 65536
_MAXHEADERS = 100
#: A field name as the email package's parser takes it (its headerRE), so a line that matches means the same there.
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
MAX_INTERIM_RESPONSES = 16
_HEAD_ENDS = (b"\n\r\n", b"\n\n")


class HeaderDeadline:
    """When the upstream's response head must have arrived (time.monotonic())."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at

    def excluding_client(self, body: Iterable[bytes]) -> Iterator[bytes]:
        """Pass a streamed request body on, moving the deadline later by the time spent waiting for the client:
        a slow upload is the client's (bounded by the client body timeouts), not the upstream's."""
        chunks = iter(body)
        while True:
            waited = time.monotonic()
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            finally:
                self.at += time.monotonic() - waited
            yield chunk


#: The deadline of the request this greenlet is sending, set by proxy.forwarding.send; None means none.
HEADER_DEADLINE: ContextVar[HeaderDeadline | None] = ContextVar("gateway_header_deadline", default=None)


def parse_headers(fp) -> http.client.HTTPMessage:
    """What `http.client.parse_headers(fp)` returns, without the email package's parser for the usual head.

    That parser cost about 5 % of a worker's time per proxied request. Every line here is `name:value` with a name
    the email parser accepts and no other line break, and the message is built as it builds it (compat32: the
    value without its leading blanks and line end). Any other head (a folded line, a line that is no field, a
    bare CR inside a line) goes to http.client's own parsing, so what it makes of such a head stays the same.
    """
    lines = []
    while True:
        line = fp.readline(_MAXLINE + 1)
        if len(line) > _MAXLINE:
            raise http.client.LineTooLong("header line")
        lines.append(line)
        if len(lines) > _MAXHEADERS:
            raise http.client.HTTPException(f"got more than {_MAXHEADERS} headers")
        if line in (b"\r\n", b"\n", b""):
            break
    message = http.client.HTTPMessage()
    for line in lines[:-1]:
        name, colon, value = line.partition(b":")
        body = value[:-2] if value.endswith(b"\r\n") else value[:-1] if value.endswith(b"\n") else value
        if not colon or b"\r" in body or b"\n" in body or not _FIELD_NAME.fullmatch(name):
            return http.client.parse_headers(io.BytesIO(b"".join(lines)))
        message.set_raw(name.decode("ascii"), body.decode("iso-8859-1").lstrip(" \t"))
    message.set_payload("")
    return message


class UpstreamFramingError(http.client.HTTPException):
    """The upstream's response cannot be relayed safely: its end, or where the next response starts, is unknown."""


class IncompleteHead(UpstreamFramingError):
    """The upstream closed its connection in the middle of a response head."""


class UpstreamHTTPResponse(http.client.HTTPResponse):
    #: The request asked to upgrade: a 101 ends the head, and the connection belongs to the new protocol.
    switch_requested = False

    def __init__(self, sock, debuglevel: int = 0, method: str | None = None, url: str | None = None) -> None:
        super().__init__(sock, debuglevel, method, url)
        self._upstream_sock = sock

    def begin(self) -> None:
        if self.headers is not None:
            return
        fp = self.fp
        budget = HEADER_DEADLINE.get()
        sock = self._upstream_sock
        read_timeout = sock.gettimeout()
        try:
            for _ in range(MAX_INTERIM_RESPONSES + 1):
                head = io.BytesIO(self._read_head(budget, read_timeout))
                self.fp = head  # http.client's own parsing of the status line and fields, on the bytes read
                try:
                    version, status, reason = self._read_status()
                    headers = parse_headers(head)
                finally:
                    self.fp = fp
                if status >= 200:
                    break
                if status == 101:
                    if self.switch_requested:
                        break
                    raise UpstreamFramingError("101 Switching Protocols, which the gateway did not ask for")
            else:
                raise UpstreamFramingError(f"more than {MAX_INTERIM_RESPONSES} interim (1xx) responses")
        finally:
            if budget is not None:
                sock.settimeout(read_timeout)

        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = self.msg = headers
        self._frame(status)

    def _read_head(self, budget: HeaderDeadline | None, read_timeout: float | None) -> bytes:
        """The bytes of one response head, through its blank line; b"" if the connection closed before any.

        Reads by peeking at the buffer, so no byte of the body is consumed, and sets the socket timeout to the
        time left before every read: a head dripped one byte at a time still ends at the deadline.
        """
        fp, sock = self.fp, self._upstream_sock
        head = b""
        while True:
            if budget is not None:
                remaining = budget.at - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("the upstream's deadline passed before its response head was complete")
                sock.settimeout(remaining if read_timeout is None else min(read_timeout, remaining))
            available = fp.peek(1)
            if not available:
                if head:
                    raise IncompleteHead("the upstream closed its connection in the middle of a response head")
                return head
            start = max(0, len(head) - 2)
            window = head[start:] + available
            ends = [i for i in (window.find(marker) for marker in _HEAD_ENDS) if i >= 0]
            if ends:
                end = min(ends)
                take = end + (3 if window[end : end + 3] == b"\n\r\n" else 2) - (len(head) - start)
                return head + fp.read(take)
            head += fp.read(len(available))
            if len(head) > MAX_HEAD_BYTES:
                raise http.client.LineTooLong(f"response head longer than {MAX_HEAD_BYTES} bytes")

    def _frame(self, status: int) -> None:
        """Decide how the body is delimited (RFC 9112 §6.3), or refuse an answer whose end cannot be known."""
        msg = self.msg
        if status == 101:
            # The bytes after the head are the new protocol's: no body, and http.client must keep the socket.
            self.will_close = False
            self.chunked = False
            self.chunk_left = None
            self.length = 0
            return
        has_body = not (status in (204, 304) or self._method == "HEAD")
        self.will_close = self._check_close()
        self.chunked = False
        self.chunk_left = None
        encodings = msg.get_all("transfer-encoding")
        if encodings and has_body:
            codings = [c.strip().lower() for field in encodings for c in field.split(",") if c.strip()]
            if codings != ["chunked"]:
                raise UpstreamFramingError(f"unsupported Transfer-Encoding {', '.join(encodings)!r}")
            self.chunked = True
            if msg.get_all("content-length") is not None:
                # Transfer-Encoding overrides Content-Length; an intermediary removes the length before
                # forwarding. Such an answer may be an attempt at smuggling: its connection is not reused.
                del msg["content-length"]
                self.will_close = True
        self.length = None
        lengths = msg.get_all("content-length")
        if lengths is not None:
            values = {value.strip() for field in lengths for value in field.split(",")}
            value = values.pop() if len(values) == 1 else ""
            if not (value.isascii() and value.isdigit()):
                raise UpstreamFramingError(f"invalid Content-Length {', '.join(lengths)!r}")
            if len(lengths) > 1 or "," in lengths[0]:
                del msg["content-length"]
                msg["Content-Length"] = value
            if not self.chunked:
                self.length = int(value)
        if not has_body:
            self.length = 0
        elif not self.chunked and self.length is None:
            self.will_close = True
