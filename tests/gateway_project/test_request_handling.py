"""In-process checks of the request-ID middleware, error shielding and the log format."""

from __future__ import annotations

import datetime
import json
import logging

import pytest
import structlog
from django.test import Client

from gateway_project.logging import access_logger, build_logging_config, configure
from proxy import forwarding
from tests.support.config import make_route, make_upstream


@pytest.fixture
def routed(db, redis_prefix, reload_config):
    make_route("api", "/api", make_upstream("backend", "http://127.0.0.1:9"))
    reload_config()


def test_an_unhandled_error_is_logged_with_its_stack_and_never_shown(routed, monkeypatch, caplog):
    def explode(*args, **kwargs):
        raise RuntimeError("internal detail: 10.1.2.3:5432 secret")

    monkeypatch.setattr(forwarding, "send", explode)
    with caplog.at_level(logging.ERROR, logger="proxy.middleware"):
        response = Client().get("/api/x", HTTP_X_REQUEST_ID="boom-1")
    assert response.status_code == 500
    body = response.json()
    assert body == {
        "error": "internal_error",
        "message": "The gateway failed to handle this request.",
        "request_id": "boom-1",
    }
    assert b"secret" not in response.content
    assert b"Traceback" not in response.content
    (record,) = [r for r in caplog.records if r.name == "proxy.middleware"]
    assert record.exc_info is not None
    assert "internal detail" in str(record.exc_info[1])


def test_server_timing_can_be_switched_off(routed, settings, monkeypatch):
    assert "Server-Timing" in Client().get("/nowhere")
    settings.GATEWAY_SERVER_TIMING = False
    assert "Server-Timing" not in Client().get("/nowhere")


def test_request_ids_are_kept_only_when_safe(routed):
    client = Client()
    assert client.get("/nowhere", HTTP_X_REQUEST_ID="abc.DEF_123-x")["X-Request-ID"] == "abc.DEF_123-x"
    for bad in ("", "a" * 129, "has space", "new\\nline", "semi;colon"):
        replaced = client.get("/nowhere", HTTP_X_REQUEST_ID=bad)["X-Request-ID"]
        assert replaced != bad
        assert len(replaced) == 32


@pytest.mark.parametrize(("fmt", "is_json"), [("json", True), ("console", False)])
def test_log_lines_carry_the_request_id_in_both_formats(fmt, is_json, capfd):
    configure(build_logging_config(fmt=fmt, level="INFO"))
    try:
        structlog.contextvars.bind_contextvars(request_id="ctx-1")
        logging.getLogger("django.request").error("plain stdlib line", exc_info=ValueError("x"))
        access_logger().info("request", status=200)
        err = capfd.readouterr().err.strip().splitlines()
    finally:
        structlog.contextvars.clear_contextvars()
        from django.conf import settings

        configure(settings.LOGGING)
    stdlib_line = next(line for line in err if "plain stdlib line" in line)
    access_line = next(line for line in err if "request" in line and "status" in line)
    if is_json:
        parsed = json.loads(stdlib_line)
        assert parsed["request_id"] == "ctx-1"
        assert parsed["level"] == "error"
        assert "ValueError" in json.dumps(parsed["exception"])
        assert json.loads(access_line)["request_id"] == "ctx-1"
    else:
        assert "request_id=ctx-1" in stdlib_line
        assert "request_id=ctx-1" in access_line
        with pytest.raises(json.JSONDecodeError):
            json.loads(stdlib_line)


class _Odd:
    def __repr__(self) -> str:
        return "<odd>"


class _Own:
    def __structlog__(self) -> str:
        return "own form"


@pytest.mark.parametrize(
    "fields",
    [
        {
            "method": "GET",
            "path": "/gw/small",
            "status": 200,
            "duration_ms": 1.234,
            "route": "r",
            "upstream": "u",
            "client_ip": "127.0.0.1",
            "bytes_in": 0,
            "bytes_out": 100,
            "retries": 0,
            "upstream_ms": 0.5,
        },
        {
            "route": None,
            "path": '/caf\u00e9/\u2603\n"q"',
            "ratelimit": {"p": [1, 2.5, None]},
            "odd": _Odd(),
            "own": _Own(),
            "nan": float("nan"),
        },
        {"request_id": "a field of the same name wins", "level": "overridden", "time": "overridden"},
    ],
)
def test_the_json_access_line_is_the_one_structlog_renders(fields, monkeypatch):
    """The access logger builds its line itself (for speed): it must stay the line structlog's pipeline, the one
    it replaced, renders from the same call, key order and all."""
    from gateway_project import logging as gateway_logging

    lines: list[str] = []

    class Capture:
        def msg(self, message: str) -> None:
            lines.append(message)

        info = msg

    def name(_logger, _method, event_dict):
        event_dict["logger"] = "gateway.access"
        return event_dict

    reference = structlog.wrap_logger(
        Capture(),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            name,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    ours = gateway_logging.JsonAccessLogger(Capture(), enabled=True)
    moment = datetime.datetime(2026, 11, 30, 23, 1, 2, 345678, tzinfo=datetime.UTC)

    class FrozenDatetime(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return moment

    monkeypatch.setattr("datetime.datetime", FrozenDatetime)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id="ctx-7", other="bound")
    try:
        reference.info("request", **fields)
        ours.info("request", **fields)
    finally:
        structlog.contextvars.clear_contextvars()
    assert lines[0] == lines[1]
    assert '"time": "2026-11-30T23:01:02.345678Z"' in lines[1]


def test_the_json_access_logger_writes_nothing_above_info():
    from gateway_project import logging as gateway_logging

    lines: list[str] = []

    class Capture:
        def msg(self, message: str) -> None:
            lines.append(message)

    gateway_logging.JsonAccessLogger(Capture(), enabled=False).info("request", status=200)
    assert lines == []
    assert not gateway_logging._build_access_logger("json", "WARNING").enabled
    assert gateway_logging._build_access_logger("json", "INFO").enabled
