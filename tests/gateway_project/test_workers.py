"""The gateway's gunicorn worker: when a worker leaves a new connection to a less loaded one (pure logic; the
worker on a real gunicorn is in test_workers_e2e.py)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from gateway_project import workers


@pytest.fixture
def worker():
    """A GatewayWorker's accept bookkeeping, in slot 0, with the shared table restored afterwards."""
    saved = list(workers._counts)
    w = object.__new__(workers.GatewayWorker)
    w._slot, w._pid, w._open, w._held_since, w._last_hold = 0, os.getpid(), 0, None, 0.0
    for i in range(len(workers._counts)):
        workers._counts[i] = 0
    workers._counts[0] = w._pid
    yield w
    for i, value in enumerate(saved):
        workers._counts[i] = value


def other(slot: int, pid: int, connections: int) -> None:
    workers._counts[2 * slot] = pid
    workers._counts[2 * slot + 1] = connections


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_accepts_while_within_the_slack_of_the_least_loaded_live_worker(worker):
    other(1, os.getppid(), 5)
    other(2, os.getppid(), 9)
    worker._open = 5 + workers.ACCEPT_SLACK
    assert not worker.hold_back()
    worker._open += 1
    assert worker.hold_back()


def test_a_lone_worker_and_a_dead_workers_slot_never_hold_back(worker, dead_pid):
    worker._open = 50
    assert not worker.hold_back()
    other(3, dead_pid, 0)
    assert not worker.hold_back()


def test_holds_a_connection_back_at_most_the_maximum_deferral(worker, monkeypatch):
    other(1, os.getppid(), 0)
    worker._open = 10
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    waited = 0.0
    while worker.hold_back():
        now[0] += workers.ACCEPT_RETRY
        waited += workers.ACCEPT_RETRY
        assert waited <= workers.ACCEPT_MAX_DEFER + 2 * workers.ACCEPT_RETRY
    assert waited >= workers.ACCEPT_MAX_DEFER - workers.ACCEPT_RETRY
    # A new wait later (the other worker took the connections meanwhile) starts its own clock.
    now[0] += 1.0
    assert worker.hold_back()
