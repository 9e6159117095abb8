"""What a proxied request costs in the steady state: at most one Redis round trip and no SQL.

Counted two ways: in-process, by instrumenting redis-py's connections and Django's query log; and end to end,
from a dedicated Redis server's command statistics and the gateway's own database metrics under gunicorn.
"""

from __future__ import annotations

import io
import re
import subprocess
import threading
import time

import pytest
import redis
import requests
from django.core.signals import request_finished, request_started
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from breakers import gate
from gateway_project.access_log import AccessLog
from limits.models import RateLimitPolicy
from tests.support.config import make_route, make_upstream, serve
from tests.support.gateways import talking_to
from tests.support.servers import RedisServer


@pytest.fixture
def redis_commands(redis_server):
    """The commands clients send to the suite's Redis, as its MONITOR shows them (commands a script runs are
    marked there and left out). Call it for the list so far; `.clear()` starts again. TIME is left out too: the
    hot-path pipe adds one to a write of script calls about once a second, which costs no round trip."""

    class Monitor(threading.Thread):
        def __init__(self) -> None:
            super().__init__(daemon=True)
            self.client = redis.Redis.from_url(redis_server.url)
            self.commands: list[str] = []
            self.listening = threading.Event()

        def run(self) -> None:
            with self.client.monitor() as monitor:
                self.listening.set()
                for command in monitor.listen():
                    verb = command["command"].split(" ", 1)[0].upper()
                    if verb == "ECHO" and "end-of-monitor" in command["command"]:
                        return
                    if command["client_type"] != "lua" and verb != "TIME":
                        self.commands.append(verb)

        def clear(self) -> None:
            self.sync()
            self.commands.clear()

        def sync(self) -> None:
            """Wait until MONITOR has shown everything sent so far."""
            self.client.execute_command("ECHO", "sync")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not any(c == "ECHO" for c in self.commands):
                time.sleep(0.01)
            self.commands[:] = [c for c in self.commands if c != "ECHO"]

        def __call__(self) -> list[str]:
            self.sync()
            return list(self.commands)

    monitor = Monitor()
    monitor.start()
    monitor.listening.wait(5)
    yield monitor
    monitor.client.execute_command("ECHO", "end-of-monitor")
    monitor.join(5)
    monitor.client.close()


@pytest.fixture
def routed(db, redis_prefix, reload_config, upstream):
    gate.forget()
    route = make_route("api", "/api", make_upstream("backend", upstream.url))
    reload_config()
    return route


def test_a_proxied_request_with_limits_and_a_breaker_makes_one_redis_call_and_no_sql(
    routed, reload_config, redis_commands
):
    RateLimitPolicy.objects.create(name="per-ip", scope="route", route=routed, limit=10_000, window_seconds=60)
    RateLimitPolicy.objects.create(
        name="global", scope="global", key_by="route", limit=100_000, window_seconds=60, algorithm="gcra"
    )
    reload_config()
    client = Client()
    for _ in range(5):  # warm-up: the breaker's first view, the script's first load
        assert client.get("/api/x").status_code == 200
    redis_commands.clear()
    with CaptureQueriesContext(connection) as queries:
        for _ in range(50):
            assert client.get("/api/x").status_code == 200
    assert len(queries) == 0
    assert redis_commands() == ["EVALSHA"] * 50


def test_without_policies_a_proxied_request_makes_no_redis_call(routed, redis_commands):
    client = Client()
    client.get("/api/x")
    redis_commands.clear()
    with CaptureQueriesContext(connection) as queries:
        for _ in range(20):
            assert client.get("/api/x").status_code == 200
    assert len(queries) == 0
    assert redis_commands() == []


CLIENT_COMMANDS = frozenset(
    {"evalsha", "eval", "get", "set", "ping", "info", "subscribe", "script", "client", "hello", "del", "rpop", "scan"}
)


@pytest.fixture(scope="module")
def gateway(own_gateway):
    return own_gateway


def commandstats(server: RedisServer) -> dict[str, int]:
    out = subprocess.run(["redis-cli", "-p", str(server.port), "INFO", "commandstats"], capture_output=True, text=True)
    return {name: int(calls) for name, calls in re.findall(r"cmdstat_(\w+):calls=(\d+)", out.stdout)}


def db_queries(gateway) -> float:
    text = requests.get(gateway.url("/metrics"), timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("django_db_execute_total")
    )


@pytest.mark.slow
def test_under_gunicorn_redis_and_sql_per_request(gateway, own_redis, transactional_db, upstream):
    with talking_to(gateway, own_redis):
        route = make_route("api", "/api", make_upstream("backend", upstream.url))
        RateLimitPolicy.objects.create(name="per-ip", scope="route", route=route, limit=10_000, window_seconds=60)
        serve(gateway)
        session = requests.Session()
        for _ in range(20):
            session.get(gateway.url("/api/x"), timeout=10)
        before, queries_before, started = commandstats(own_redis), db_queries(gateway), time.monotonic()
        count = 600
        for _ in range(count):
            assert session.get(gateway.url("/api/x"), timeout=10).status_code == 200
        elapsed = time.monotonic() - started
        after, queries_after = commandstats(own_redis), db_queries(gateway)
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    # Round trips are the commands clients send; commandstats also counts the commands scripts run inside
    # one EVALSHA (zadd, time, hincrby, ...), which cost no round trip.
    round_trips = {name: n for name, n in delta.items() if name in CLIENT_COMMANDS and n}
    # Background work per worker, not per request: the config watcher's GET every 250 ms, the breaker sync's
    # flush once a second; and this test's INFO.
    background = 2 * (elapsed + 1) * (4 + 1) + 5
    assert round_trips["evalsha"] >= count
    assert sum(round_trips.values()) - count <= background, round_trips
    # The configuration watcher reads the revision from the database every 5 s per worker; requests never do.
    assert queries_after - queries_before <= 2 * (elapsed / 5 + 1) * 2


def _environ(path: str) -> dict:
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "testserver",
        "REMOTE_ADDR": "127.0.0.1",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "wsgi.url_scheme": "http",
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def _serve(path: str) -> tuple[str, dict, bytes]:
    """One request through gunicorn's entry point (gateway_project.wsgi.application), as gunicorn makes it."""
    from gateway_project.wsgi import application

    started = []
    response = application(_environ(path), lambda status, headers: started.append((status, dict(headers))))
    try:
        body = b"".join(response)
    finally:
        response.close()
    return started[0][0], started[0][1], body


def test_a_proxied_request_skips_djangos_request_signals_and_an_own_path_keeps_them(routed, monkeypatch):
    """A proxied request touches no database, so the entry point leaves out Django's request_started and
    request_finished (whose receivers reset and close database connections); the gateway's own paths keep them.
    The proxied response is still closed: its access line is written."""
    fired = []
    monkeypatch.setattr(AccessLog, "write", lambda self, ctx, request, status, sent: fired.append(("logged", status)))

    def started_receiver(sender, **kwargs):
        fired.append("started")

    def finished_receiver(sender, **kwargs):
        fired.append("finished")

    request_started.connect(started_receiver)
    request_finished.connect(finished_receiver)
    try:
        status, headers, body = _serve("/api/x")
        assert status == "200 OK"
        assert headers["X-Request-ID"]
        assert body  # the upstream's answer, relayed
        assert fired == [("logged", 200)]

        fired.clear()
        status, _, _ = _serve("/healthz")
        assert status == "200 OK"
        assert fired == ["started", ("logged", 200), "finished"]
    finally:
        request_started.disconnect(started_receiver)
        request_finished.disconnect(finished_receiver)


def test_the_own_paths_of_the_entry_point_are_the_route_middlewares(settings):
    """The entry point's shorter path is only for what RouteMiddleware proxies: every reserved prefix, and only
    on a segment boundary, goes through Django's whole handler."""
    from gateway_project.wsgi import django_application

    for prefix in settings.GATEWAY_RESERVED_PREFIXES:
        assert django_application._own(prefix)
        assert django_application._own(prefix + "/anything")
        assert not django_application._own(prefix + "x")
    assert not django_application._own("/api/x")


def test_an_own_path_outside_latin_1_is_answered_not_a_server_error(routed):
    """gunicorn hands the path's UTF-8 bytes over as latin-1 characters; the gateway's own paths go through
    Django's handler with the environ as it came: a client error (no such route), never a server error."""
    status, _, _ = _serve("/_gateway/api/v1/routes/" + "\U0009a872".encode().decode("latin-1") + "/")
    assert status.startswith("4"), status
    status, _, _ = _serve("/api/" + "\u00e9".encode().decode("latin-1"))
    assert status == "200 OK"


def test_the_gateways_own_answers_carry_their_length_and_the_upstreams_keep_theirs(routed, reload_config, upstream):
    """The gateway's own whole answers on a proxied path (no route, rate limited) get a Content-Length, so gunicorn
    does not frame them chunked; a relayed answer's framing is the upstream's, HEAD's included."""
    status, headers, body = _serve("/nope")
    assert status.startswith("404 ")
    assert headers["Content-Length"] == str(len(body))

    RateLimitPolicy.objects.create(name="tight", scope="route", route=routed, limit=1, window_seconds=60)
    reload_config()
    assert _serve("/api/x")[0] == "200 OK"
    status, headers, body = _serve("/api/x")
    assert status.startswith("429 ")
    assert headers["Content-Length"] == str(len(body))

    RateLimitPolicy.objects.all().delete()
    reload_config()
    status, headers, body = _serve("/api/x")
    assert status == "200 OK"
    assert headers["Content-Length"] == str(len(body))
    environ = {**_environ("/api/x"), "REQUEST_METHOD": "HEAD"}
    from gateway_project.wsgi import application

    started = []
    response = application(environ, lambda status, headers: started.append(dict(headers)))
    try:
        assert b"".join(response) == b""
    finally:
        response.close()
    assert started[0]["Content-Length"] == requests.head(upstream.url + "/x", timeout=5).headers["Content-Length"]


def test_a_head_answer_that_is_a_file_wrapper_goes_to_the_server_as_it_is(monkeypatch):
    """Django hands gunicorn a FileResponse's file as the server's file wrapper, which has no `streaming`: a HEAD
    answer of that kind is left to the server (which sends no body for HEAD), not a server error."""
    from gunicorn.http.wsgi import FileWrapper

    from gateway_project import wsgi

    wrapper = FileWrapper(io.BytesIO(b"file"))
    monkeypatch.setattr(wsgi, "django_application", lambda environ, start_response: wrapper)
    assert wsgi.application({**_environ("/static/x"), "REQUEST_METHOD": "HEAD"}, None) is wrapper
