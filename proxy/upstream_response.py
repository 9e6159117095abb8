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

import urllib3.exceptions
from urllib3._collections import HTTPHeaderDict
from urllib3.connection import _normalize_header_values
from urllib3.exceptions import ProtocolError, ReadTimeoutError

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


def _field_lines(fp) -> list[bytes]:
    """The header section's lines through its blank line, within http.client's limits."""
    lines = []
    while True:
        line = fp.readline(_MAXLINE + 1)
        if len(line) > _MAXLINE:
            raise http.client.LineTooLong("header line")
        lines.append(line)
        if len(lines) > _MAXHEADERS:
            raise http.client.HTTPException(f"got more than {_MAXHEADERS} headers")
        if line in (b"\r\n", b"\n", b""):
            return lines


def _plain_fields(lines: list[bytes]) -> list[tuple[str, str]] | None:
    """(name, value) per line when every line is `name:value` with a name the email parser accepts and no other
    line break, each as that parser stores it (compat32: the value without its leading blanks and line end);
    None for any other head (a folded line, a line that is no field, a bare CR inside a line)."""
    fields = []
    for line in lines[:-1]:
        name, colon, value = line.partition(b":")
        body = value[:-2] if value.endswith(b"\r\n") else value[:-1] if value.endswith(b"\n") else value
        if not colon or b"\r" in body or b"\n" in body or not _FIELD_NAME.fullmatch(name):
            return None
        fields.append((name.decode("ascii"), body.decode("iso-8859-1").lstrip(" \t")))
    return fields


def parse_headers(fp) -> http.client.HTTPMessage:
    """What `http.client.parse_headers(fp)` returns, without the email package's parser for the usual head.

    That parser cost about 5 % of a worker's time per proxied request. An unusual head (`_plain_fields`) goes to
    http.client's own parsing, so what it makes of such a head stays the same.
    """
    lines = _field_lines(fp)
    fields = _plain_fields(lines)
    if fields is None:
        return http.client.parse_headers(io.BytesIO(b"".join(lines)))
    message = http.client.HTTPMessage()
    for name, value in fields:
        message.set_raw(name, value)
    message.set_payload("")
    return message


def parse_fields(fp) -> list[tuple[str, str]]:
    """The header section as the (name, value) pairs urllib3 makes of `parse_headers(fp)`: an obsolete line
    folding inside a value becomes one space (urllib3.connection._normalize_header_values)."""
    lines = _field_lines(fp)
    fields = _plain_fields(lines)
    if fields is None:
        fields = _normalize_header_values(http.client.parse_headers(io.BytesIO(b"".join(lines))))
    return fields


def parse_status(line: bytes) -> tuple[str, int, str]:
    """(version, status, reason) of a status line, as http.client's `HTTPResponse._read_status` reads it."""
    text = str(line, "iso-8859-1")
    if len(text) > _MAXLINE:
        raise http.client.LineTooLong("status line")
    if not text:
        raise http.client.RemoteDisconnected("Remote end closed connection without response")
    try:
        version, status, reason = text.split(None, 2)
    except ValueError:
        try:
            version, status = text.split(None, 1)
            reason = ""
        except ValueError:
            version = ""
    if not version.startswith("HTTP/"):
        raise http.client.BadStatusLine(text)
    try:
        code = int(status)
    except ValueError:
        raise http.client.BadStatusLine(text) from None
    if code < 100 or code > 999:
        raise http.client.BadStatusLine(text)
    return version, code, reason


def http_version(version: str) -> int:
    """http.client's version number for a status line's version: 10 or 11, else UnknownProtocol."""
    if version in ("HTTP/1.0", "HTTP/0.9"):
        return 10
    if version.startswith("HTTP/1."):
        return 11
    raise http.client.UnknownProtocol(version)


def _first(fields: list[tuple[str, str]], name: str) -> str | None:
    for field, value in fields:
        if field.lower() == name:
            return value
    return None


#: Framing.content_length: leave the Content-Length fields as they are.
KEEP = None
#: Framing.content_length: remove every Content-Length field.
REMOVE = ""


class Framing:
    """How a final answer's body is delimited (RFC 9112 §6.3), decided from its status line and fields.

    `content_length` says what to do to the fields before relaying them: KEEP, REMOVE, or the one value that
    replaces repeated or comma-separated copies (as one `Content-Length` field at the end)."""

    __slots__ = ("chunked", "content_length", "length", "will_close")

    def __init__(self, status: int, method: str | None, version: int, fields: list[tuple[str, str]]) -> None:
        has_body = not (status in (204, 304) or method == "HEAD")
        self.will_close = _will_close(version, fields)
        self.chunked = False
        self.content_length = KEEP
        encodings = [value for name, value in fields if name.lower() == "transfer-encoding"]
        lengths = [value for name, value in fields if name.lower() == "content-length"] or None
        if encodings and has_body:
            codings = [c.strip().lower() for field in encodings for c in field.split(",") if c.strip()]
            if codings != ["chunked"]:
                raise UpstreamFramingError(f"unsupported Transfer-Encoding {', '.join(encodings)!r}")
            self.chunked = True
            if version == 10:
                # Chunked in HTTP/1.0, which has no chunked coding: the framing is faulty, and the connection
                # is closed after the answer (RFC 9112 §6.1).
                self.will_close = True
            if lengths is not None:
                # Transfer-Encoding overrides Content-Length; an intermediary removes the length before
                # forwarding. Such an answer may be an attempt at smuggling: its connection is not reused.
                self.content_length = REMOVE
                self.will_close = True
                lengths = None
        self.length = None
        if lengths is not None:
            values = {value.strip() for field in lengths for value in field.split(",")}
            value = values.pop() if len(values) == 1 else ""
            if not (value.isascii() and value.isdigit()):
                raise UpstreamFramingError(f"invalid Content-Length {', '.join(lengths)!r}")
            if len(lengths) > 1 or "," in lengths[0]:
                self.content_length = value
            if not self.chunked:
                self.length = int(value)
        if not has_body:
            self.length = 0
        elif not self.chunked and self.length is None:
            self.will_close = True

    def apply(self, fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The fields to relay, with the Content-Length change made."""
        if self.content_length is KEEP:
            return fields
        kept = [(name, value) for name, value in fields if name.lower() != "content-length"]
        if self.content_length:
            kept.append(("Content-Length", self.content_length))
        return kept


def _will_close(version: int, fields: list[tuple[str, str]]) -> bool:
    """Whether the upstream will close the connection after this answer: http.client's
    `HTTPResponse._check_close`, over every Connection field instead of the first only. A `close` in any of them
    closes, in HTTP/1.0 too: an upstream saying both must not have its connection reused while it closes it.
    """
    connection = ", ".join(value for name, value in fields if name.lower() == "connection").lower()
    if "close" in connection:
        return True
    if version == 11:
        return False
    if _first(fields, "keep-alive") or "keep-alive" in connection:
        return False
    proxy_connection = _first(fields, "proxy-connection")
    return not (proxy_connection and "keep-alive" in proxy_connection.lower())


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
        self.version = http_version(version)
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
        """Decide how the body is delimited (Framing), or refuse an answer whose end cannot be known."""
        msg = self.msg
        if status == 101:
            # The bytes after the head are the new protocol's: no body, and http.client must keep the socket.
            self.will_close = False
            self.chunked = False
            self.chunk_left = None
            self.length = 0
            return
        framing = Framing(status, self._method, self.version, msg.items())
        if framing.content_length is not KEEP:
            del msg["content-length"]
            if framing.content_length:
                msg["Content-Length"] = framing.content_length
        self.will_close, self.chunked, self.length = framing.will_close, framing.chunked, framing.length
        self.chunk_left = None


_RECV = 65536
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: A chunk-size line (RFC 9112 §7.1): hex digits (leading zeros allowed), optional extensions, CRLF or a bare LF.
_CHUNK_SIZE = re.compile(rb"0*([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n]*)?\r?\n")
_LINE_ENDS = (b"\r\n", b"\n")


def header_dict(fields: list[tuple[str, str]]) -> HTTPHeaderDict:
    """`HTTPHeaderDict(fields)`, built straight into its container: a third of the time, for the same dict."""
    container: dict[str, list[str]] = {}
    for name, value in fields:
        lower = name.lower()
        values = container.get(lower)
        if values is None:
            container[lower] = [name, value]
        else:
            values.append(value)
    headers = HTTPHeaderDict.__new__(HTTPHeaderDict)
    headers._container = container
    return headers


class DirectResponse:
    """An upstream's answer read straight from a pooled plain-HTTP connection's socket (proxy.forwarding).

    urllib3's response object wraps http.client's, which wraps a buffered file made for every response; together
    about 100 us per proxied request here, more than the rest of the upstream call. This reads the same bytes
    with one buffer of its own, under the same rules: the head as `UpstreamHTTPResponse.begin` reads it (interim
    answers, the deadline, http.client's limits and parsing, `Framing`), the body as urllib3 relays it with
    `decode_content=False` (a short body or a broken chunk is a ProtocolError, a timeout a ReadTimeoutError). It
    offers what the gateway uses of urllib3's `HTTPResponse`: `status`, `reason`, `headers` (an HTTPHeaderDict),
    `length_remaining`, `read`, `read1`, `drain_conn`, `close`, `release_conn`, `get_redirect_location`.

    Stricter than http.client where http.client guesses: a chunk size must be hexadecimal digits (http.client
    takes anything `int(x, 16)` takes, "0x1f" and "-5" included) and a chunk must end with CRLF (http.client skips
    any two bytes). Bytes after the end of the answer mean the connection is out of step: it is closed, not
    pooled. A connection goes back to the pool only after its answer was read to the end.
    """

    __slots__ = (
        "_buffer",
        "_chunk_left",
        "_conn",
        "_done",
        "_pool",
        "_sock",
        "chunked",
        "headers",
        "length_remaining",
        "reason",
        "status",
        "version",
        "will_close",
    )

    def __init__(self, pool, conn, method: str) -> None:
        """Read the head of the answer to the request just sent on `conn` (taken from `pool`)."""
        self._pool, self._conn, self._sock = pool, conn, conn.sock
        self._buffer = b""
        budget = HEADER_DEADLINE.get()
        read_timeout = self._sock.gettimeout()
        try:
            for _ in range(MAX_INTERIM_RESPONSES + 1):
                head = self._read_head(budget, read_timeout)
                end = head.find(b"\n") + 1
                version, status, reason = parse_status(head[:end] if end else head)
                fields = parse_fields(io.BytesIO(head[end:]))
                if status >= 200:
                    break
                if status == 101:
                    raise UpstreamFramingError("101 Switching Protocols, which the gateway did not ask for")
            else:
                raise UpstreamFramingError(f"more than {MAX_INTERIM_RESPONSES} interim (1xx) responses")
        finally:
            if budget is not None:
                self._sock.settimeout(read_timeout)
        self.status = status
        self.reason = reason.strip()
        self.version = http_version(version)
        framing = Framing(status, method, self.version, fields)
        self.headers = header_dict(framing.apply(fields))
        self.chunked = framing.chunked
        self.will_close = framing.will_close
        self.length_remaining = framing.length
        self._chunk_left = None
        self._done = False
        if framing.length == 0:
            self._finish()  # bytes already read past a head with no body: out of step, never pooled

    def _read_head(self, budget: HeaderDeadline | None, read_timeout: float | None) -> bytes:
        """One response head through its blank line (what follows stays buffered); b"" if the connection closed
        before any byte. The socket timeout is the time left before every read, as in UpstreamHTTPResponse."""
        buffer, sock, scanned = self._buffer, self._sock, 0
        while True:
            ends = [i for i in (buffer.find(marker, scanned) for marker in _HEAD_ENDS) if i >= 0]
            if ends:
                end = min(ends)
                end += 3 if buffer[end : end + 3] == b"\n\r\n" else 2
                self._buffer = bytes(buffer[end:])
                return bytes(buffer[:end])
            if len(buffer) > MAX_HEAD_BYTES:
                raise http.client.LineTooLong(f"response head longer than {MAX_HEAD_BYTES} bytes")
            scanned = max(0, len(buffer) - 2)
            if budget is not None:
                remaining = budget.at - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("the upstream's deadline passed before its response head was complete")
                sock.settimeout(remaining if read_timeout is None else min(read_timeout, remaining))
            data = sock.recv(_RECV)
            if not data:
                if buffer:
                    raise IncompleteHead("the upstream closed its connection in the middle of a response head")
                return b""
            if not buffer:
                buffer = data
            else:
                if type(buffer) is bytes:
                    # A head in several pieces grows in place: appending to bytes copies all of it every time,
                    # quadratic in a head an upstream drips in small pieces.
                    buffer = bytearray(buffer)
                buffer += data

    # The body, as urllib3's HTTPResponse gives it with decode_content=False.

    def read(self, amt: int | None = None, decode_content: bool = False) -> bytes:
        """The rest of the body (or up to `amt` bytes of it)."""
        parts, wanted = [], amt
        while wanted is None or wanted > 0:
            data = self.read1(_RECV if wanted is None else wanted)
            if not data:
                break
            parts.append(data)
            if wanted is not None:
                wanted -= len(data)
        return b"".join(parts)

    def read1(self, amt: int = _RECV, decode_content: bool = False) -> bytes:
        """Up to `amt` bytes of the body, with at most one read from the socket; b"" at its end."""
        if self._done or amt <= 0:
            return b""
        try:
            if self.chunked:
                return self._read_chunked(amt)
            if self.length_remaining is None:
                data = self._take(amt)
                if not data:
                    self._done = True
                return data
            data = self._take(min(amt, self.length_remaining))
            if not data:
                raise urllib3.exceptions.IncompleteRead(0, self.length_remaining)
            self.length_remaining -= len(data)
            if not self.length_remaining:
                self._finish()
            return data
        except TimeoutError as error:
            self.close()
            raise ReadTimeoutError(self._pool, None, "Read timed out.") from error
        except (http.client.HTTPException, OSError) as error:
            self.close()
            raise ProtocolError(f"Connection broken: {error!r}", error) from error

    def _take(self, amt: int) -> bytes:
        """Up to `amt` bytes: buffered ones first, else one read from the socket (b"" when it closed)."""
        buffer = self._buffer
        if buffer:
            self._buffer = buffer[amt:]
            return buffer[:amt]
        return self._sock.recv(amt)

    def _line(self, what: str) -> bytes:
        """One line of the chunked framing, through its LF; what is left when the connection closed first."""
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n") + 1
            if end or len(buffer) > _MAXLINE:
                break
            data = self._sock.recv(_RECV)
            if not data:
                break
            buffer += data
        if (end or len(buffer)) > _MAXLINE:
            raise http.client.LineTooLong(what)
        end = end or len(buffer)
        self._buffer = buffer[end:]
        return buffer[:end]

    def _read_chunked(self, amt: int) -> bytes:
        if not self._chunk_left:
            if self._chunk_left == 0 and self._line("chunk end") not in _LINE_ENDS:  # the end of a chunk's data
                raise UpstreamFramingError("a chunk's data did not end with CRLF")
            line = self._line("chunk size")
            size = _CHUNK_SIZE.fullmatch(line)
            if size is None:
                if not line.endswith(b"\n"):
                    raise http.client.IncompleteRead(line)
                raise UpstreamFramingError(f"invalid chunk size line {line[:40]!r}")
            self._chunk_left = int(size.group(1), 16)
            if not self._chunk_left:
                trailers = 0
                while True:  # the trailer section, discarded as http.client does, through its blank line
                    line = self._line("trailer line")
                    if line in _LINE_ENDS:
                        break
                    trailers += len(line)
                    if trailers > MAX_HEAD_BYTES:
                        raise http.client.LineTooLong(f"trailer section longer than {MAX_HEAD_BYTES} bytes")
                    if not line.endswith(b"\n"):
                        # http.client accepts a close here (some servers skip the last CRLF): not reusable.
                        self.will_close = True
                        break
                self._finish()
                return b""
        data = self._take(min(amt, self._chunk_left))
        if not data:
            raise http.client.IncompleteRead(b"", self._chunk_left)
        self._chunk_left -= len(data)
        return data

    def _finish(self) -> None:
        self._done = True
        if self._buffer:
            # Bytes after the end of the answer: the upstream and the gateway disagree about where it ended.
            self.will_close = True

    def drain_conn(self) -> None:
        """Read and throw away the rest of the body, so that the connection can be reused."""
        try:
            while self.read1(_RECV):
                pass
        except (urllib3.exceptions.HTTPError, OSError):
            pass

    def close(self) -> None:
        """Close the connection: whatever remains of this answer is never read."""
        self._done = True
        self.will_close = True
        if self._conn is not None:
            self._conn.close()

    def release_conn(self) -> None:
        """Give the connection back to its pool: open if this answer was read to its end, else closed."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        if not self._done or self.will_close:
            conn.close()
        self._pool._put_conn(conn)

    def get_redirect_location(self) -> str | bool | None:
        if self.status in _REDIRECT_STATUSES:
            return self.headers.get("location")
        return False
