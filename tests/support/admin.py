"""Logging into the admin through a gateway, as an operator's browser does."""

from __future__ import annotations

import re

import requests
from django.contrib.auth import get_user_model


def login(gateway, client_address: str) -> requests.Session:
    get_user_model().objects.create_superuser("operator", "op@example.com", "correct horse battery")
    session = requests.Session()
    session.headers["X-Forwarded-For"] = client_address
    page = session.get(gateway.url("/admin/login/"), timeout=10)
    assert page.status_code == 200
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = session.post(
        gateway.url("/admin/login/?next=/admin/"),
        data={"csrfmiddlewaretoken": token, "username": "operator", "password": "correct horse battery"},
        headers={"Referer": gateway.url("/admin/login/")},
        timeout=10,
    )
    assert response.status_code == 200
    assert "Log out" in response.text
    return session


def upstream_form(name: str, base_url: str, *, targets: tuple[str, ...] = (), **fields) -> dict[str, str]:
    """The upstream page's form as the browser sends it: every field at its default, the targets inline with
    one row per address (weight 100) and the breaker's inline; `fields` override any of them by their form
    names (`read_timeout`, `breaker-0-mode`, ...)."""
    form = {
        "name": name,
        "base_url": base_url,
        "enabled": "on",
        "balancing": "round_robin",
        "connect_timeout": "2",
        "read_timeout": "30",
        "deadline": "60",
        "max_retries": "2",
        "backoff_factor": "0.1",
        "backoff_max": "2",
        "backoff_jitter": "0.1",
        "retry_on_statuses": "502,503,504",
        "tls_verify": "on",
        "retry_budget_percent": "20",
        "retry_budget_min": "3",
        "eject_consecutive_failures": "5",
        "eject_on_statuses": "502,503,504",
        "eject_seconds": "30",
        "eject_max_seconds": "300",
        "eject_max_percent": "10",
        "health_check_path": "",
        "health_check_interval": "10",
        "health_check_timeout": "2",
        "health_check_statuses": "200",
        "healthy_threshold": "2",
        "unhealthy_threshold": "3",
        "targets-TOTAL_FORMS": str(len(targets)),
        "targets-INITIAL_FORMS": "0",
        "targets-MIN_NUM_FORMS": "0",
        "targets-MAX_NUM_FORMS": "1000",
        "breaker-TOTAL_FORMS": "1",
        "breaker-INITIAL_FORMS": "0",
        "breaker-MIN_NUM_FORMS": "0",
        "breaker-MAX_NUM_FORMS": "1",
        "breaker-0-mode": "normal",
        "breaker-0-consecutive_failures": "5",
        "breaker-0-failure_rate": "50",
        "breaker-0-window_seconds": "60",
        "breaker-0-minimum_calls": "20",
        "breaker-0-failure_statuses": "502,503,504",
        "breaker-0-slow_call_ms": "0",
        "breaker-0-open_seconds": "30",
        "breaker-0-half_open_probes": "1",
    }
    for index, address in enumerate(targets):
        form.update({f"targets-{index}-address": address, f"targets-{index}-weight": "100"})
        form[f"targets-{index}-enabled"] = "on"
    form.update(fields)
    return form
