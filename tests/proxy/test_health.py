"""A worker's target health at start (proxy.health.start), in-process: the thread itself runs in
test_health_checks_e2e.py on a real gunicorn."""

from __future__ import annotations

import pytest

from proxy import health
from proxy.models import Target
from tests.support.config import make_route, make_upstream


@pytest.fixture
def checked(db, redis_prefix, reload_config):
    upstream = make_upstream(
        "checked", "http://service.internal", health_check_path="/healthz", health_check_interval=0.2
    )
    for port in (9001, 9002):
        Target.objects.create(upstream=upstream, address=f"127.0.0.1:{port}")
    make_route("checked", "/checked", upstream)
    reload_config()
    (compiled,) = health.compiled_upstreams()
    yield compiled
    for target in compiled.targets:
        target.state.active_healthy = True


def test_a_starting_worker_applies_the_instances_verdicts_before_it_serves(checked, tmp_path, monkeypatch):
    """A worker started in place of another must not send requests to a target the instance's prober already
    found failing while its health thread waits for its first round."""
    health.write_json(
        tmp_path / health.ACTIVE,
        {str(checked.id): {"127.0.0.1:9001": {"healthy": False}, "127.0.0.1:9002": {"healthy": True}}},
    )
    started = []
    monkeypatch.setattr(health.HealthThread, "start", lambda thread: started.append(thread))
    monkeypatch.setattr(health, "_started_pid", None)
    health.start(str(tmp_path))
    assert len(started) == 1
    assert {t.address: t.state.active_healthy for t in checked.targets} == {
        "127.0.0.1:9001": False,
        "127.0.0.1:9002": True,
    }
    # The thread's rounds apply the file again only once it changes.
    assert started[0].seen_active == (tmp_path / health.ACTIVE).stat().st_mtime_ns


def test_a_worker_starts_even_when_the_verdicts_cannot_be_read(checked, tmp_path, monkeypatch):
    (tmp_path / health.ACTIVE).write_text("{not json")
    started = []
    monkeypatch.setattr(health.HealthThread, "start", lambda thread: started.append(thread))
    monkeypatch.setattr(health, "_started_pid", None)
    health.start(str(tmp_path))
    assert len(started) == 1
    assert all(t.state.active_healthy for t in checked.targets)


def test_a_verdict_applied_while_checks_are_switched_off_does_not_keep_a_target_out(checked, monkeypatch):
    """The health thread can apply a verdict of the old configuration (a target failing its check) while a load
    that switches the checks off is between its turns, after the load reset the flags. With the checks off
    nothing applies verdicts again, so the new configuration must not consult them at all."""
    upstream = checked
    from proxy.models import Upstream

    Upstream.objects.filter(pk=upstream.id).update(health_check_path="")

    def turn() -> None:
        # During the load: the old snapshot's upstream still has its check, and the verdict says failing.
        health.apply_active({str(upstream.id): {"127.0.0.1:9001": {"healthy": False}}}, [upstream])

    from gateway_project import runtime

    monkeypatch.setattr(runtime, "TURN_AFTER", 0.0)
    monkeypatch.setattr(runtime, "_turn", turn)
    runtime.bump()
    runtime.load()
    (compiled,) = health.compiled_upstreams()
    assert compiled.check is None
    assert {t.address: t.state.active_healthy for t in compiled.targets}["127.0.0.1:9001"] is False
    picked = {compiled.balancer.pick(0.0).address for _ in range(8)}
    assert picked == {"127.0.0.1:9001", "127.0.0.1:9002"}
