"""The configuration snapshot (gateway_project.runtime): consistent parts, and never a newer name than content."""

from __future__ import annotations

import pytest

from gateway_project import runtime


@pytest.fixture
def changing_part():
    """A part whose every load sees the configuration change right after it was read (a burst of commits)."""
    loads: list[int] = []

    def load():
        loads.append(runtime.db_state()[0])
        runtime.bump()  # commits at once: no transaction is open here
        return loads[-1]

    runtime.register("changing", load, empty=None)
    yield loads
    del runtime._loaders["changing"]


def test_a_snapshot_loaded_while_changes_keep_committing_is_reloaded_by_the_next_check(transactional_db, changing_part):
    runtime.bump()
    snapshot = runtime.load()
    assert len(changing_part) == 3  # three tries, each overtaken by a change
    # The snapshot is named after the revision read before its parts, not the newer one in the database, so
    # the watcher sees it is behind and loads again.
    assert snapshot.revision == changing_part[-1]
    assert snapshot["changing"] == changing_part[-1]
    assert runtime.db_state()[1] != snapshot.token


def test_a_snapshot_loaded_while_nothing_changes_names_the_current_revision(transactional_db):
    runtime.bump()
    snapshot = runtime.load()
    assert (snapshot.revision, snapshot.token) == runtime.db_state()


def test_every_loader_compiles_its_rows_in_turns(transactional_db, monkeypatch):
    """Each part's rows go through runtime.in_turns, so a large configuration never holds the worker's requests
    for the whole compile (with no time between turns: one turn after every row)."""
    from breakers.models import BreakerConfig
    from limits.models import RateLimitPolicy
    from tests.support.config import make_route, make_upstream

    for index in range(3):
        upstream = make_upstream(f"u{index}", f"http://127.0.0.1:{9000 + index}", breaker_consecutive_failures=5)
        make_route(f"r{index}", f"/r{index}", upstream)
        RateLimitPolicy.objects.create(name=f"p{index}", limit=10, window_seconds=60)
    assert BreakerConfig.objects.count() == 3
    turns = []
    monkeypatch.setattr(runtime, "TURN_AFTER", 0.0)
    monkeypatch.setattr(runtime, "_turn", lambda: turns.append(1))
    snapshot = runtime.load()
    assert len(snapshot["routes"].routes) == 3
    # 3 upstreams, 3 routes, 3 breaker settings, 3 policies: a turn after each.
    assert len(turns) >= 12


def test_a_load_takes_turns_for_a_bounded_time(transactional_db, monkeypatch, settings):
    """A worker saturated with requests makes every turn long: a load stops taking them once it has spent
    TURN_BUDGET * GATEWAY_DB_TIMEOUT in them, so the watcher's bound on a poll still leaves it time to finish."""
    import time

    from tests.support.config import make_route, make_upstream

    for index in range(6):
        make_route(f"r{index}", f"/r{index}", make_upstream(f"u{index}", f"http://127.0.0.1:{9000 + index}"))
    settings.GATEWAY_DB_TIMEOUT = 0.04  # 20 ms of turns
    turns = []

    def long_turn() -> None:
        turns.append(1)
        time.sleep(0.01)

    monkeypatch.setattr(runtime, "TURN_AFTER", 0.0)
    monkeypatch.setattr(runtime, "_turn", long_turn)
    snapshot = runtime.load()
    assert len(snapshot["routes"].routes) == 6  # all compiled
    assert 1 <= len(turns) <= 2  # of the 12 rows' turns, what 20 ms allow


def test_a_route_committed_with_its_upstream_during_a_load_is_in_the_next_read(transactional_db, monkeypatch):
    """Between the upstreams' query and the routes' query (a turn of the load), an upstream and a route to it are
    committed: the route is left out of that read instead of failing the load, and the load reads again."""
    from tests.support.config import make_route, make_upstream

    make_route("old", "/old", make_upstream("old", "http://127.0.0.1:9000"))
    runtime.load()
    added = []

    def turn() -> None:
        if not added:
            added.append(make_route("new", "/new", make_upstream("new", "http://127.0.0.1:9001")))

    monkeypatch.setattr(runtime, "TURN_AFTER", 0.0)
    monkeypatch.setattr(runtime, "_turn", turn)
    snapshot = runtime.load()
    assert sorted(route.name for route in snapshot["routes"].routes) == ["new", "old"]
    assert (snapshot.revision, snapshot.token) == runtime.db_state()


TURNS = """
from gevent import monkey

monkey.patch_all()
import time

import django
import gevent

django.setup()
from gateway_project import runtime

ticks = []


def ticker():
    while True:
        gevent.sleep(0.001)
        ticks.append(1)


def busy(items):
    for item in items:
        end = time.perf_counter() + 0.001
        while time.perf_counter() < end:
            pass  # 1 ms of compiling, with no switch of its own
        yield item


gevent.spawn(ticker)
gevent.sleep(0.01)
runtime._turns_left = 1.0  # what a load gives itself (load() sets it)
ticks.clear()
list(busy(range(60)))
print("without", len(ticks))
ticks.clear()
list(runtime.in_turns(busy(range(60))))
print("with", len(ticks))
"""


def test_in_a_gevent_worker_requests_run_between_the_turns():
    """60 ms of compiling on a gevent loop: another greenlet (a request's) gets to run every few ms in turns, and
    not at all without them."""
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", TURNS],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        capture_output=True,
        text=True,
        check=True,
    )
    counts = dict(line.split() for line in out.stdout.splitlines())
    assert int(counts["without"]) == 0
    assert int(counts["with"]) >= 6  # a turn every 5 ms of 60
