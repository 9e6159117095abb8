"""The circuit breaker settings in the configuration document: each upstream's nested `breaker` mapping."""

from __future__ import annotations

import json

import pytest

from breakers.models import BreakerConfig
from gateway_project import configfile
from proxy.models import Upstream
from tests.support.config import TEST_ACTOR, make_upstream, problems_of

# Saves publish the configuration revision to Redis after commit: a real one, under a private prefix.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_prefix")]

WHERE = "upstreams[0] (backend)"
DEFAULTS = {
    "mode": "normal",
    "consecutive_failures": 5,
    "failure_rate": 50,
    "window_seconds": 60,
    "minimum_calls": 20,
    "slow_call_ms": 0,
    "open_seconds": 30.0,
    "half_open_probes": 1,
    "failure_statuses": [502, 503, 504],
}


@pytest.fixture
def tuned() -> Upstream:
    return make_upstream(
        "backend",
        breaker_mode="shadow",
        breaker_consecutive_failures=0,
        breaker_failure_rate=25,
        breaker_window_seconds=120,
        breaker_minimum_calls=7,
        breaker_slow_call_ms=1500,
        breaker_open_seconds=2.5,
        breaker_half_open_probes=3,
        breaker_failure_statuses="504, 500,429",
    )


def document(**breaker) -> dict:
    return {"version": 1, "upstreams": [{"name": "backend", "base_url": "http://127.0.0.1:9", "breaker": breaker}]}


def breaker_fields(name: str = "backend") -> dict:
    """The upstream's stored breaker settings (BreakerConfig), named as the document names them."""
    values = BreakerConfig.objects.filter(upstream__name=name).values().get()
    return {k: v for k, v in values.items() if k != "upstream_id"}


def apply(doc) -> list[str]:
    plan = configfile.plan(doc)
    configfile.apply(plan, actor=TEST_ACTOR)
    return [str(change) for change in plan.changes]


def test_export_nests_the_breaker_settings(tuned):
    (item,) = configfile.export_document()["upstreams"]
    assert item["breaker"] == {
        "mode": "shadow",
        "consecutive_failures": 0,
        "failure_rate": 25,
        "window_seconds": 120,
        "minimum_calls": 7,
        "slow_call_ms": 1500,
        "open_seconds": 2.5,
        "half_open_probes": 3,
        "failure_statuses": [429, 500, 504],
    }
    assert not any(key.startswith("breaker_") for key in item)


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_export_then_import_changes_nothing(tuned, fmt):
    before = breaker_fields()
    text = configfile.dump(configfile.export_document(), fmt)
    if fmt == "json":
        json.loads(text)
    plan = configfile.plan(configfile.parse(text))
    assert (plan.changes, plan.saves, plan.deletes) == ([], [], [])
    assert breaker_fields() == before


def test_an_import_sets_the_breaker_and_names_the_changed_fields(tuned):
    doc = configfile.export_document()
    breaker = doc["upstreams"][0]["breaker"]
    breaker.update(mode="forced_open", open_seconds=60, failure_statuses=[503])
    assert apply(doc) == [
        "update upstream 'backend': breaker.mode, breaker.open_seconds, breaker.failure_statuses",
    ]
    fields = breaker_fields()
    assert (fields["mode"], fields["open_seconds"], fields["failure_statuses"]) == (
        "forced_open",
        60.0,
        "503",
    )
    assert isinstance(fields["open_seconds"], float)
    assert configfile.plan(configfile.export_document()).changes == []


def test_omitted_breaker_keys_take_their_defaults(tuned):
    apply(document(consecutive_failures=3))
    (item,) = configfile.export_document()["upstreams"]
    assert item["breaker"] == {**DEFAULTS, "consecutive_failures": 3}


def test_an_omitted_breaker_mapping_takes_the_defaults(tuned):
    doc = document()
    del doc["upstreams"][0]["breaker"]
    apply(doc)
    assert configfile.export_document()["upstreams"][0]["breaker"] == DEFAULTS


def test_a_new_upstream_with_a_partial_breaker():
    assert apply(document(mode="disabled", failure_statuses=[])) == ["create upstream 'backend'"]
    breaker = configfile.export_document()["upstreams"][0]["breaker"]
    assert breaker == {**DEFAULTS, "mode": "disabled", "failure_statuses": []}


def test_unknown_keys_inside_breaker_are_reported_with_their_location():
    problems = problems_of(document(threshold=3, consecutive_failures=3, Mode="normal"))
    assert problems == [f"{WHERE}.breaker.Mode: unknown field", f"{WHERE}.breaker.threshold: unknown field"]


def test_an_invalid_mode_is_reported():
    problems = problems_of(document(mode="sideways"))
    assert f"{WHERE}.breaker.mode: must be one of normal, forced_open, disabled, shadow" in problems


@pytest.mark.parametrize("statuses", [["503"], [503, True], "503", [503, None]])
def test_failure_statuses_that_are_not_a_list_of_codes_are_reported(statuses):
    problems = problems_of(document(failure_statuses=statuses))
    expected = "expected a list, got str" if isinstance(statuses, str) else "must be a list of status codes"
    assert f"{WHERE}.breaker.failure_statuses: {expected}" in problems


def test_failure_statuses_outside_400_to_599_are_reported():
    problems = problems_of(document(failure_statuses=[503, 302]))
    assert any("'302' is not an HTTP status code between 400 and 599." in p for p in problems), problems


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("consecutive_failures", "five", "expected an integer, got str"),
        ("open_seconds", True, "expected an integer or a number, got a boolean"),
        ("mode", 1, "expected a string, got int"),
        ("half_open_probes", 1.5, "expected an integer, got float"),
    ],
)
def test_wrong_types_inside_breaker_are_reported(key, value, problem):
    assert f"{WHERE}.breaker.{key}: {problem}" in problems_of(document(**{key: value}))


def test_a_breaker_that_is_not_a_mapping_is_reported():
    doc = document()
    doc["upstreams"][0]["breaker"] = ["mode", "normal"]
    assert problems_of(doc) == [f"{WHERE}.breaker: expected a mapping, got list"]


def test_nothing_changes_when_the_breaker_is_invalid(tuned):
    before = breaker_fields()
    problems_of(document(mode="sideways", window_seconds=1))
    assert breaker_fields() == before


def test_values_the_model_refuses_are_reported_at_their_place_in_the_breaker_mapping():
    problems = problems_of(document(mode="sideways", window_seconds=1, failure_statuses=[302]))
    assert not [p for p in problems if ".breaker_" in p]
    assert len([p for p in problems if p.startswith(f"{WHERE}.breaker.mode:")]) == 1
    assert any(p.startswith(f"{WHERE}.breaker.window_seconds:") for p in problems)
    assert any(p.startswith(f"{WHERE}.breaker.failure_statuses:") for p in problems)
