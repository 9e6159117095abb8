"""Answers from upstreams that misbehave, through a real gunicorn gateway: interim responses, broken framing,
bodies cut short. No answer may reach the wrong client, no client may be told a length that differs from the
bytes that follow, and a pooled connection is reused only after a complete, well-framed response."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.config import make_policy, make_route, make_upstream, serve
from tests.support.rawclient import RawClient
from tests.support.rawupstream import Close, RawUpstream, Scripted, chunked, response, serve_each


@pytest.fixture
def raw_route(live):
    """Route /raw to a raw upstream running the script a test gives; no retries, so one request is one attempt."""
    started: list[RawUpstream] = []

    def route(script, **fields) -> RawUpstream:
        upstream = RawUpstream(script).start()
        started.append(upstream)
        options = {"max_retries": 0, "backoff_factor": 0, "backoff_jitter": 0, "read_timeout": 5, **fields}
        make_route("raw", "/raw", make_upstream("raw", upstream.url, **options), strip_prefix=False)
        serve(live)
        return upstream

    yield route
    for upstream in started:
        upstream.stop()


def echo(request) -> bytes:
    return response(200, request.target.encode(), [("Content-Type", "text/plain")])


def early_hints_then_echo(conn) -> None:
    """103 at once, the real answer a little later: a connection returned to the pool after the 103 would hand
    that answer to the next request sent on it."""
    while (request := conn.read_request()) is not None:
        conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        if conn.server.stopping.wait(0.02):
            return
        if not conn.send(echo(request)):
            return


def test_200_clients_each_get_their_own_answer_behind_103_early_hints(live, raw_route):
    raw_route(early_hints_then_echo)

    def client(n: int) -> list[tuple[int, str, str]]:
        with requests.Session() as session:
            results = []
            for round_ in range(3):
                path = f"/raw/client-{n}/round-{round_}"
                answer = session.get(live.url(path), timeout=30)
                results.append((answer.status_code, answer.text, path))
            return results

    with ThreadPoolExecutor(200) as pool:
        results = [r for rs in pool.map(client, range(200)) for r in rs]
    wrong = [(status, text, path) for status, text, path in results if status != 200 or text != path]
    assert wrong == [], f"{len(wrong)} of {len(results)} answers were not the client's own, e.g. {wrong[:3]}"


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 102 Processing\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </b.js>\r\n\r\n",
        b"HTTP/1.1 199 Whatever\r\nX-Interim: 1\r\n\r\n",
    ],
    ids=["100", "102", "two-103", "199"],
)
def test_interim_answers_are_skipped_and_the_connection_stays_in_step(live, raw_route, interim):
    upstream = raw_route(serve_each(lambda request: interim + echo(request)))
    with RawClient(live.port) as client:
        for n in range(3):
            client.send(f"GET /raw/{n} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            answer = client.read_response()
            assert (answer.status, answer.body, answer.complete) == (200, f"/raw/{n}".encode(), True)
            assert answer.header("X-Interim") is None
    assert {r.connection for r in upstream.requests} == {1}, "a well-framed answer keeps its connection pooled"


def test_a_101_the_gateway_did_not_ask_for_is_a_502(live, raw_route):
    upstream = raw_route(
        serve_each(lambda request: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
    )
    answer = requests.get(live.url("/raw/x"), timeout=10)
    assert answer.status_code == 502
    assert answer.json()["error"] == "upstream_unavailable"
    assert len(upstream.requests) == 1


def test_content_length_next_to_chunked_is_never_relayed_and_the_connection_is_not_reused(live, raw_route):
    smuggling = response(
        200, chunked(b"hello"), [("Content-Length", "100"), ("Transfer-Encoding", "chunked")], length=False
    )
    upstream = raw_route(serve_each(Scripted([smuggling], then=echo)))
    with RawClient(live.port, timeout=5) as client:
        client.send(b"GET /raw/first HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = client.read_response()
        assert first.status == 200
        assert first.body == b"hello"
        assert first.complete
        assert first.header("Content-Length") in (None, "5")
        client.send(b"GET /raw/second HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        second = client.read_response()
        assert (second.status, second.body) == (200, b"/raw/second")
    first_request, second_request = upstream.requests
    assert second_request.connection != first_request.connection


@pytest.mark.parametrize(
    "framing",
    [
        [("Content-Length", "abc")],
        [("Content-Length", "-5")],
        [("Content-Length", "5, 7")],
        [("Content-Length", "5"), ("Content-Length", "7")],
        [("Transfer-Encoding", "gzip")],
        [("Transfer-Encoding", "gzip, chunked")],
        [("Transfer-Encoding", "chunked, chunked")],
    ],
    ids=[
        "cl-not-a-number",
        "cl-negative",
        "cl-list-differs",
        "cl-twice-differs",
        "te-gzip",
        "te-gzip-chunked",
        "te-twice",
    ],
)
def test_an_answer_whose_length_cannot_be_known_is_a_502_and_its_connection_is_dropped(live, raw_route, framing):
    upstream = raw_route(serve_each(Scripted([response(200, b"hello", framing, length=False)], then=echo)))
    first = requests.get(live.url("/raw/first"), timeout=10)
    assert first.status_code == 502
    assert first.json()["error"] == "upstream_unavailable"
    second = requests.get(live.url("/raw/second"), timeout=10)
    assert (second.status_code, second.text) == (200, "/raw/second")
    assert upstream.requests[1].connection != upstream.requests[0].connection


def test_a_repeated_identical_length_is_one_length(live, raw_route):
    raw_route(serve_each(lambda request: response(200, b"hello", [("Content-Length", "5, 5")], length=False)))
    with RawClient(live.port) as client:
        client.send(b"GET /raw/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = client.read_response()
    assert (answer.status, answer.body, answer.complete) == (200, b"hello", True)
    assert answer.all("Content-Length") in ([], ["5"])


@pytest.mark.parametrize(
    "cut",
    [
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/pl",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r",
    ],
    ids=["after-status-line", "mid-field", "before-blank-line", "mid-blank-line"],
)
def test_a_header_section_cut_off_by_a_close_is_a_502(live, raw_route, cut):
    raw_route(serve_each(lambda request: Close(cut)))
    answer = requests.get(live.url("/raw/x"), timeout=10)
    assert answer.status_code == 502
    assert answer.json()["error"] == "upstream_unavailable"


@pytest.mark.parametrize(
    ("announced", "sent"),
    [
        (200_000, 100_000),  # streamed
        (1_000, 10),  # read whole before relaying
    ],
)
def test_a_body_shorter_than_its_length_is_never_passed_off_as_complete(live, raw_route, announced, sent):
    short = Close(response(200, b"x" * sent, [("Content-Length", str(announced))], length=False))
    raw_route(serve_each(Scripted([short], then=echo)))
    with RawClient(live.port, timeout=5) as client:
        client.send(b"GET /raw/short HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = client.read_response()
        if answer.status == 200:
            # Headers had gone out: the body must end short and the connection with it.
            assert not answer.complete
            assert client.eof
        else:
            assert answer.status == 502
            client.send(b"GET /raw/next HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert client.read_response().body == b"/raw/next"


def test_a_chunked_body_cut_off_is_never_passed_off_as_complete(live, raw_route):
    cut = Close(
        response(
            200, b"4000\r\n" + b"y" * 0x4000 + b"\r\n4000\r\nyyy", [("Transfer-Encoding", "chunked")], length=False
        )
    )
    raw_route(serve_each(Scripted([cut], then=echo)))
    with RawClient(live.port, timeout=5) as client:
        client.send(b"GET /raw/cut HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = client.read_response()
        assert answer.status in (200, 502)
        if answer.status == 200:
            assert not answer.complete
            assert client.eof


def test_a_well_framed_answer_keeps_its_connection(live, raw_route):
    upstream = raw_route(serve_each(echo))
    with RawClient(live.port) as client:  # one client connection: one worker, one pool
        for n in range(5):
            client.send(f"GET /raw/{n} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            assert client.read_response().body == f"/raw/{n}".encode()
    assert {r.connection for r in upstream.requests} == {1}


UPSTREAM_OWN_COPIES = [
    ("RateLimit", '"upstream";r=999;t=1'),
    ("RateLimit-Policy", '"upstream";q=1000;w=1'),
    ("X-RateLimit-Limit", "1000"),
    ("X-RateLimit-Remaining", "999"),
    ("X-RateLimit-Reset", "1"),
    ("X-RateLimit-Used", "1"),
    ("X-Request-ID", "upstream-chose-this"),
    ("Server-Timing", 'db;dur=12.5;desc="Orders, read", total;dur=99'),
    ("Server-Timing", "cache;desc=hit"),
    ("Retry-After", "7"),
    ("X-Kept", "yes"),
]


def test_the_gateways_own_headers_replace_the_upstreams_copies(live, raw_route):
    raw_route(serve_each(lambda request: response(200, b"ok", UPSTREAM_OWN_COPIES)))
    make_policy("per-ip", limit=100, window_seconds=60, legacy_headers=True)
    serve(live)
    with RawClient(live.port) as client:
        client.send(b"GET /raw/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: client-chose-this\r\n\r\n")
        answer = client.read_response()
    assert answer.status == 200
    for name in ("RateLimit", "RateLimit-Policy", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
        assert len(answer.all(name)) == 1, (name, answer.all(name))
    assert answer.header("RateLimit").startswith('"per-ip";r=99;')
    assert answer.header("RateLimit-Policy") == '"per-ip";q=100;w=60'
    assert answer.header("X-RateLimit-Limit") == "100"
    assert answer.all("X-RateLimit-Used") == [], "no mixture of two limiters' legacy fields"
    assert answer.all("X-Request-ID") == ["client-chose-this"]
    (timing,) = answer.all("Server-Timing")
    names = [entry.strip().split(";")[0] for entry in re.split(r",(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", timing)]
    assert names[-2:] == ["db", "cache"], timing
    assert names.count("total") == 1, timing
    assert 'desc="Orders, read"' in timing
    assert answer.all("Retry-After") == ["7"], "the gateway sets no Retry-After on a relayed answer"
    assert answer.header("X-Kept") == "yes"


def test_bytes_after_the_end_of_an_answer_never_reach_the_next_client_and_its_connection_is_dropped(live, raw_route):
    """An upstream out of step sends a second answer nobody asked for right behind the first. http.client's
    buffered reader dropped those bytes silently and the connection went back to the pool; now the connection is
    closed, so the stray answer can never be taken for the next request's."""
    stray = response(200, b"stray answer", [("Content-Type", "text/plain")])
    upstream = raw_route(serve_each(Scripted([response(200, b"first") + stray], then=echo)))
    with RawClient(live.port, timeout=5) as client:  # one client connection: one worker, one pool
        client.send(b"GET /raw/first HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = client.read_response()
        assert (first.status, first.body, first.complete) == (200, b"first", True)
        client.send(b"GET /raw/second HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert client.read_response().body == b"/raw/second"
    first_request, second_request = upstream.requests
    assert second_request.connection != first_request.connection


@pytest.mark.parametrize(
    ("body", "first_chunk_breaks"),
    [
        (b"0x5\r\nhello\r\n0\r\n\r\n", True),  # http.client read this as int("0x5", 16)
        (b"-5\r\nhello\r\n0\r\n\r\n", True),
        (b"5_0\r\nhello\r\n0\r\n\r\n", True),
        (b" 5\r\nhello\r\n0\r\n\r\n", True),
        (b"zz\r\n\r\n", True),  # http.client raised a ValueError here: a 500
        (b"5\r\nhelloXY0\r\n\r\n", False),  # no CRLF after the chunk's data: http.client skipped any two bytes
        (b"5\r\nhello\r\nzz\r\n\r\n", False),
    ],
    ids=["hex-prefix", "negative", "underscore", "leading-blank", "first-not-hex", "no-crlf-after-data", "not-hex"],
)
def test_a_chunked_body_with_a_malformed_chunk_is_never_passed_off_as_complete(
    live, raw_route, body, first_chunk_breaks
):
    upstream = raw_route(
        serve_each(Scripted([response(200, body, [("Transfer-Encoding", "chunked")], length=False)], then=echo))
    )
    with RawClient(live.port, timeout=5) as client:
        client.send(b"GET /raw/bad HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = client.read_response()
        if first_chunk_breaks:
            # Nothing went to the client before the first piece of the body: a 502 like any broken answer.
            assert (answer.status, answer.complete) == (502, True)
            assert b'"upstream_unavailable"' in answer.body
        else:
            # The head went out with the first piece: the body must end short and the connection with it.
            assert answer.status == 200
            assert not answer.complete
            assert client.eof
    assert requests.get(live.url("/raw/next"), timeout=10).text == "/raw/next"
    assert upstream.requests[1].connection != upstream.requests[0].connection


@pytest.mark.parametrize(
    "body",
    [
        b"5;name=value\r\nhello\r\n6 ; x\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",  # extensions, a trailer
        b"0000000000000000005\r\nhello\n6\n world\r\n0\n\n",  # leading zeros, bare LF line ends
    ],
    ids=["extensions-trailers", "leading-zeros-bare-lf"],
)
def test_a_well_framed_chunked_body_is_relayed_and_keeps_its_connection(live, raw_route, body):
    upstream = raw_route(
        serve_each(Scripted([response(200, body, [("Transfer-Encoding", "chunked")], length=False)], then=echo))
    )
    with RawClient(live.port, timeout=5) as client:
        client.send(b"GET /raw/first HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = client.read_response()
        assert (first.status, first.body, first.complete) == (200, b"hello world", True)
        client.send(b"GET /raw/second HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert client.read_response().body == b"/raw/second"
    assert {r.connection for r in upstream.requests} == {1}


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 204), ("GET", 304)], ids=["head", "204", "304"])
def test_bytes_after_an_answer_without_a_body_never_reach_the_next_client(live, raw_route, method, status):
    stray = response(200, b"stray answer", [("Content-Type", "text/plain")])
    upstream = raw_route(serve_each(Scripted([response(status, length=False) + stray], then=echo)))
    with RawClient(live.port, timeout=5) as client:
        client.send(f"{method} /raw/first HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        first = client.read_response(method)
        assert (first.status, first.body) == (status, b"")
        client.send(b"GET /raw/second HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert client.read_response().body == b"/raw/second"
    first_request, second_request = upstream.requests
    assert second_request.connection != first_request.connection


@pytest.mark.parametrize("length", [1_000, 1_000_000], ids=["read-whole", "streamed"])
def test_a_body_that_does_not_come_in_time_is_a_504_and_its_connection_is_dropped(live, raw_route, length):
    def head_then_silence(conn) -> None:
        if conn.read_request() is not None:
            conn.send(f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n".encode())
            conn.server.stopping.wait(10)

    upstream = raw_route(head_then_silence, read_timeout=0.5)
    answer = requests.get(live.url("/raw/slow"), timeout=10)
    assert answer.status_code == 504
    assert answer.json()["error"] == "upstream_timeout"
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    "field",
    [("X-Bad", "a\x01b"), ("X-Bad", "a\x0bb"), ("X-Bad", "a\x00b"), ("X(a)", "1")],
    ids=["soh", "vt", "nul", "name-not-a-token"],
)
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_a_header_that_is_not_valid_http_is_a_502_and_its_connection_is_dropped(live, raw_route, field, streamed):
    """What the server would refuse to write: a JSON 502 with the request ID (it was gunicorn's HTML 500, with no
    access line, and a streamed answer's upstream connection was never closed), the connection not reused."""
    body = b"x" * 100_000 if streamed else b"hello"
    framing = [("Transfer-Encoding", "chunked")] if streamed else []
    bad = response(200, chunked(body) if streamed else body, [field, *framing], length=not streamed)
    upstream = raw_route(serve_each(Scripted([bad], then=echo)))
    first = requests.get(live.url("/raw/first"), timeout=10)
    assert first.status_code == 502
    assert first.json()["error"] == "upstream_unavailable"
    assert first.json()["request_id"] == first.headers["X-Request-ID"]
    second = requests.get(live.url("/raw/second"), timeout=10)
    assert (second.status_code, second.text) == (200, "/raw/second")
    assert upstream.requests[1].connection != upstream.requests[0].connection


def test_a_reason_phrase_that_is_not_valid_http_becomes_the_standard_one(live, raw_route):
    raw_route(serve_each(lambda request: b"HTTP/1.1 200 Fine\x01\x7f\r\nContent-Length: 2\r\n\r\nok"))
    answer = requests.get(live.url("/raw/x"), timeout=10)
    assert (answer.status_code, answer.reason, answer.text) == (200, "OK", "ok")
