"""breakers.services (live state, reset, operator modes) and the `breakers` and `reset_breakers` commands.

Transactional tests: reading or resetting a breaker writes its pending transitions into the history through
breakers.sync, which closes the database connection afterwards, and that would end the transaction a plain
`django_db` test runs in (see test_reading_live_states_inside_a_transaction_keeps_it).
"""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError
from django.db import transaction

from breakers import services
from breakers.models import BreakerTransition
from breakers.policy import CLOSED, FORCED_OPEN, HALF_OPEN, NORMAL, OPEN, SHADOW
from gateway_project.audit import Actor
from gateway_project.models import AuditEntry
from proxy.models import Upstream
from tests.support.commands import CLI, command
from tests.support.config import TEST_ACTOR, breaker_modes, breaker_op, make_upstream

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_prefix")]


@pytest.fixture
def upstreams() -> dict[str, Upstream]:
    """alpha open, beta closed with two failures counted, gamma half-open in shadow mode."""
    alpha = make_upstream("alpha", breaker_consecutive_failures=1, breaker_open_seconds=300)
    beta = make_upstream("beta", breaker_consecutive_failures=5)
    gamma = make_upstream("gamma", breaker_consecutive_failures=1, breaker_open_seconds=0.1, breaker_mode=SHADOW)
    run("fail", alpha, "status 503")
    run("flush", beta, "3")
    run("fail", beta, "status 502")
    run("fail", beta, "status 502")
    run("fail", gamma, "status 504")
    run("acquire", gamma, "", open_seconds=0)
    return {"alpha": alpha, "beta": beta, "gamma": gamma}


def run(op: str, upstream: Upstream, extra: str, **overrides):
    return breaker_op(op, upstream, extra, **overrides)


def states() -> dict[str, str]:
    return {s.upstream: s.state for s in services.live_states()}


# live state


def test_live_states_lists_every_upstream_with_its_state(upstreams):
    statuses = services.live_states()
    assert [(s.upstream, s.mode, s.state) for s in statuses] == [
        ("alpha", NORMAL, OPEN),
        ("beta", NORMAL, CLOSED),
        ("gamma", SHADOW, HALF_OPEN),
    ]
    alpha, beta, gamma = statuses
    assert 290 < alpha.next_probe_in <= 300
    assert beta.next_probe_in is None and gamma.next_probe_in is None
    assert (beta.consecutive_failures, beta.window_calls, beta.window_failures) == (2, 5, 2)
    assert (alpha.window_calls, alpha.window_failures) == (1, 1)
    assert alpha.last_transition.reason == "1 consecutive failures (last: status 503)"
    assert (alpha.last_transition.from_state, alpha.last_transition.to_state) == (CLOSED, OPEN)
    assert beta.last_transition is None
    assert gamma.last_transition.to_state == HALF_OPEN
    assert all(s.error is None for s in statuses)
    # The events were moved into the history, with the upstream's id and name.
    rows = BreakerTransition.objects.filter(upstream_name="gamma").order_by("at", "id")
    assert [(r.upstream_id, r.kind, r.from_state, r.to_state) for r in rows] == [
        (upstreams["gamma"].id, "state", CLOSED, OPEN),
        (upstreams["gamma"].id, "state", OPEN, HALF_OPEN),
    ]


def test_live_states_of_named_upstreams(upstreams):
    assert [s.upstream for s in services.live_states(names=["gamma", "alpha"])] == ["gamma", "alpha"]
    with pytest.raises(services.UnknownUpstream, match="no upstream named 'nope', 'zilch'"):
        services.live_states(names=["alpha", "nope", "zilch"])


def test_an_upstream_without_state_is_closed():
    make_upstream("fresh")
    (status,) = services.live_states()
    assert (status.state, status.consecutive_failures, status.window_calls, status.last_transition) == (
        CLOSED,
        0,
        0,
        None,
    )


# reset


def test_reset_all(upstreams):
    assert services.reset_breakers(names=None, actor=Actor("test:ops", "cli")) == ["alpha", "beta", "gamma"]
    statuses = services.live_states()
    assert {(s.state, s.consecutive_failures, s.window_calls) for s in statuses} == {(CLOSED, 0, 0)}
    resets = BreakerTransition.objects.filter(actor=Actor("test:ops", "cli")).order_by("upstream_name")
    assert [(r.upstream_name, r.from_state, r.to_state, r.reason) for r in resets] == [
        ("alpha", OPEN, CLOSED, "reset by test:ops"),
        ("beta", CLOSED, CLOSED, "reset by test:ops"),
        ("gamma", HALF_OPEN, CLOSED, "reset by test:ops"),
    ]


def test_reset_named(upstreams):
    assert services.reset_breakers(names=["alpha"], actor=TEST_ACTOR) == ["alpha"]
    assert states() == {"alpha": CLOSED, "beta": CLOSED, "gamma": HALF_OPEN}
    assert services.live_states(names=["beta"])[0].consecutive_failures == 2


def test_reset_of_an_unknown_upstream_resets_nothing(upstreams):
    with pytest.raises(services.UnknownUpstream, match="no upstream named 'nope'"):
        services.reset_breakers(names=["alpha", "nope"], actor=TEST_ACTOR)
    assert states()["alpha"] == OPEN


# modes


def test_set_mode_records_who_changed_it(upstreams):
    assert services.set_mode(names=["alpha", "beta"], mode=FORCED_OPEN, actor=Actor("admin:root", "admin")) == [
        "alpha",
        "beta",
    ]
    assert breaker_modes() == {
        "alpha": FORCED_OPEN,
        "beta": FORCED_OPEN,
        "gamma": SHADOW,
    }
    rows = BreakerTransition.objects.filter(kind="mode").order_by("upstream_name")
    assert [(r.upstream_id, r.upstream_name, r.from_state, r.to_state, r.actor, r.reason) for r in rows] == [
        (upstreams["alpha"].id, "alpha", NORMAL, FORCED_OPEN, "admin:root", "mode set to forced_open"),
        (upstreams["beta"].id, "beta", NORMAL, FORCED_OPEN, "admin:root", "mode set to forced_open"),
    ]
    assert states()["alpha"] == OPEN  # the shared state is untouched; the mode overrides it
    assert services.live_states(names=["alpha"])[0].mode == FORCED_OPEN


def test_set_mode_to_the_same_mode_changes_nothing(upstreams):
    before = Upstream.objects.get(name="gamma").updated_at
    assert services.set_mode(names=["gamma"], mode=SHADOW, actor=TEST_ACTOR) == []
    assert not BreakerTransition.objects.filter(kind="mode").exists()
    assert Upstream.objects.get(name="gamma").updated_at == before


def test_set_mode_refuses_unknown_modes_and_upstreams(upstreams):
    with pytest.raises(ValueError, match="unknown breaker mode 'sideways'"):
        services.set_mode(names=["alpha"], mode="sideways", actor=TEST_ACTOR)
    with pytest.raises(services.UnknownUpstream):
        services.set_mode(names=["alpha", "nope"], mode=FORCED_OPEN, actor=TEST_ACTOR)
    assert set(breaker_modes().values()) == {NORMAL, SHADOW}
    assert not BreakerTransition.objects.filter(kind="mode").exists()


def test_set_mode_for_no_upstream_changes_nothing(upstreams):
    assert services.set_mode(names=[], mode=FORCED_OPEN, actor=TEST_ACTOR) == []
    assert FORCED_OPEN not in set(breaker_modes().values())


# commands


def test_breakers_json(upstreams):
    listed = json.loads(command("breakers", "--json"))
    assert [(b["upstream"], b["mode"], b["state"]) for b in listed] == [
        ("alpha", NORMAL, OPEN),
        ("beta", NORMAL, CLOSED),
        ("gamma", SHADOW, HALF_OPEN),
    ]
    alpha = listed[0]
    assert 290 < alpha["next_probe_in_seconds"] <= 300
    assert alpha["last_transition"]["reason"] == "1 consecutive failures (last: status 503)"
    assert (alpha["last_transition"]["from"], alpha["last_transition"]["to"]) == (CLOSED, OPEN)
    assert listed[1]["consecutive_failures"] == 2
    assert (listed[1]["window_failures"], listed[1]["window_calls"]) == (2, 5)
    assert listed[1]["last_transition"] is None
    assert json.loads(command("breakers", "beta", "--json"))[0]["upstream"] == "beta"


def test_breakers_table(upstreams):
    lines = command("breakers").splitlines()
    assert lines[0].split() == ["UPSTREAM", "MODE", "STATE", "CONSEC", "WINDOW", "NEXT", "PROBE", "LAST", "TRANSITION"]
    assert len(lines) == 4
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["alpha"][1:3] == [NORMAL, OPEN]
    assert rows["beta"][1:6] == [NORMAL, CLOSED, "2", "2/5", "-"]
    assert rows["gamma"][1:3] == [SHADOW, HALF_OPEN]
    assert "closed->open: 1 consecutive failures (last: status 503)" in lines[1]
    # The columns line up under the header.
    assert {line.index(rows[line.split()[0]][1]) for line in lines[1:]} == {lines[0].index("MODE")}


def test_breakers_with_an_unknown_upstream():
    with pytest.raises(CommandError, match="no upstream named 'nope'"):
        command("breakers", "nope")


def test_reset_breakers_command_resets_the_named(upstreams):
    assert command("reset_breakers", "alpha", "gamma").splitlines() == ["reset alpha", "reset gamma"]
    assert states() == {"alpha": CLOSED, "beta": CLOSED, "gamma": CLOSED}
    assert services.live_states(names=["beta"])[0].consecutive_failures == 2
    actors = set(BreakerTransition.objects.filter(reason__startswith="reset by").values_list("actor", flat=True))
    assert actors == {CLI}


def test_reset_breakers_command_all(upstreams):
    assert command("reset_breakers", "--all").splitlines() == ["reset alpha", "reset beta", "reset gamma"]
    assert set(states().values()) == {CLOSED}
    assert services.live_states(names=["beta"])[0].consecutive_failures == 0


def test_reset_breakers_command_all_without_upstreams():
    assert command("reset_breakers", "--all").splitlines() == ["no upstreams"]


@pytest.mark.parametrize("args", [(), ("alpha", "--all")])
def test_reset_breakers_command_needs_names_or_all_but_not_both(upstreams, args):
    with pytest.raises(CommandError, match="name one or more upstreams, or use --all"):
        command("reset_breakers", *args)
    assert states()["alpha"] == OPEN


def test_reset_breakers_command_with_an_unknown_upstream(upstreams):
    with pytest.raises(CommandError, match="no upstream named 'nope'"):
        command("reset_breakers", "alpha", "nope")
    assert states()["alpha"] == OPEN


def test_reading_live_states_inside_a_transaction_keeps_it(upstreams):
    with transaction.atomic():
        make_upstream("delta")
        assert [s.state for s in services.live_states(names=["alpha"])] == [OPEN]
        assert Upstream.objects.filter(name="delta").exists()


def test_reset_breakers_says_when_the_mode_still_holds_a_breaker_open(upstreams):
    services.set_mode(names=["alpha"], mode=FORCED_OPEN, actor=Actor("user:ops", "admin"))
    assert command("reset_breakers", "alpha", "beta").splitlines() == [
        "reset alpha, but its mode forced_open still holds it open "
        "(`manage.py breaker_mode normal alpha` lets requests through)",
        "reset beta",
    ]
    audited = AuditEntry.objects.filter(action="reset").order_by("object_name")
    assert [(e.actor, e.via, e.object_name, e.changes, e.note) for e in audited] == [
        (CLI, "cli", "alpha", {"state": [OPEN, CLOSED]}, "mode forced_open still holds it open"),
        (CLI, "cli", "beta", {}, ""),
    ]


def test_breaker_mode_command_sets_every_mode_and_records_who(upstreams):
    for mode in (FORCED_OPEN, "disabled", SHADOW, NORMAL):
        assert command("breaker_mode", mode, "alpha").splitlines() == [f"alpha: {mode}"]
        assert breaker_modes()["alpha"] == mode
    assert command("breaker_mode", NORMAL, "alpha").splitlines() == ["alpha: already normal"]
    assert command("breaker_mode", SHADOW, "--all").splitlines() == [
        "alpha: shadow",
        "beta: shadow",
        "gamma: already shadow",
    ]
    rows = BreakerTransition.objects.filter(kind="mode", upstream_name="alpha").order_by("id")
    assert [(r.from_state, r.to_state) for r in rows] == [
        (NORMAL, FORCED_OPEN),
        (FORCED_OPEN, "disabled"),
        ("disabled", SHADOW),
        (SHADOW, NORMAL),
        (NORMAL, SHADOW),
    ]
    assert {r.actor for r in rows} == {CLI}
    changes = [
        e.changes["mode"] for e in AuditEntry.objects.filter(object_type="breaker", object_name="alpha").order_by("id")
    ]
    assert changes == [
        [NORMAL, FORCED_OPEN],
        [FORCED_OPEN, "disabled"],
        ["disabled", SHADOW],
        [SHADOW, NORMAL],
        [NORMAL, SHADOW],
    ]
    with pytest.raises(CommandError, match="invalid choice"):
        command("breaker_mode", "sideways", "alpha")
    with pytest.raises(CommandError, match="no upstream named 'nope'"):
        command("breaker_mode", NORMAL, "nope")


def test_live_state_commands_refuse_the_embedded_store_and_touch_nothing(upstreams, settings):
    """A command's own embedded store is empty: answering from it would be pretending."""
    settings.GATEWAY_EMBEDDED_STORE = True
    for args in (("breakers",), ("reset_breakers", "alpha"), ("reset_breakers", "--all")):
        with pytest.raises(CommandError, match=r"inside the running gateway's process: it uses the embedded store"):
            command(*args)
    settings.GATEWAY_EMBEDDED_STORE = False
    assert states()["alpha"] == OPEN
    assert not BreakerTransition.objects.filter(reason__startswith="reset by").exists()
    assert not AuditEntry.objects.exists()
