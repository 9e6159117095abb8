"""The status page of a real gunicorn instance: its workers sample the instance's metrics in the background, so
an operator who opens the page after the traffic sees the last minutes at once, not an empty chart."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from gateway_project import status
from tests.support.admin import login
from tests.support.config import make_route, make_upstream, serve


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="module")
def gateway_options(run_dir) -> dict:
    return {"collectstatic": True, "env": {"GATEWAY_RUN_DIR": str(run_dir), "GATEWAY_SECURE_COOKIES": "0"}}


def test_the_charts_hold_the_traffic_from_before_the_page_was_opened(live, upstream, run_dir):
    make_route("orders", "/orders", make_upstream("backend", upstream.url))
    serve(live)
    started = time.monotonic()
    while time.monotonic() - started < 2.5 * status.SAMPLE_EVERY:  # nobody has the page open meanwhile
        for _ in range(10):
            assert requests.get(live.url("/orders/x"), timeout=5).status_code == 200
        time.sleep(0.5)

    kept = [json.loads(line) for line in (run_dir / status.SAMPLES_FILE).read_text().splitlines()]
    assert len(kept) >= 2
    assert kept[-1]["routes"]["orders"]["n"] > kept[0]["routes"].get("orders", {"n": 0})["n"]

    session = login(live, "127.0.0.1")
    figures = session.get(live.url("/admin/status.json"), timeout=10).json()["figures"]
    (orders,) = [r for r in figures["routes"] if r["route"] == "orders"]
    assert orders["series"] and max(orders["series"]) > 0
    assert orders["rps"] > 0
