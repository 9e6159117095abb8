"""Bad settings stop start-up with a message that names the setting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.servers import REPO

GOOD = {
    "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
    "SECRET_KEY": "x" * 50,
    "REDIS_URL": "redis://127.0.0.1:1/0",
}


def check(**env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DEBUG", "DATABASE_URL"))}
    environment.update(GOOD)
    environment.update(env)
    for key, value in env.items():
        if value is None:
            environment.pop(key)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_good_settings_start():
    result = check()
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"SECRET_KEY": ""}, "SECRET_KEY"),
        ({"DATABASE_URL": "nosuchdb://x"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL"),
        ({"REDIS_URL": "embedded://"}, "REDIS_URL"),
        ({"GATEWAY_LISTEN": "127.0.0.1"}, "GATEWAY_LISTEN"),
        ({"GATEWAY_LISTEN": "127.0.0.1:99999"}, "GATEWAY_LISTEN"),
        ({"GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8,not-a-network"}, "GATEWAY_TRUSTED_PROXIES"),
        ({"GATEWAY_MAX_BODY_BYTES": "ten"}, "GATEWAY_MAX_BODY_BYTES"),
        ({"GATEWAY_REDIS_SOCKET_TIMEOUT": "0"}, "GATEWAY_REDIS_SOCKET_TIMEOUT"),
        ({"GATEWAY_LOG_FORMAT": "xml"}, "GATEWAY_LOG_FORMAT"),
        ({"GATEWAY_ADMIN_PATH": "/"}, "GATEWAY_ADMIN_PATH"),
        ({"GATEWAY_REDIS_PAGE_TIMEOUT": "0"}, "GATEWAY_REDIS_PAGE_TIMEOUT"),
        ({"GATEWAY_CLIENT_BODY_TIMEOUT": "0"}, "GATEWAY_CLIENT_BODY_TIMEOUT"),
        ({"GATEWAY_CLIENT_BODY_MIN_RATE": "-1"}, "GATEWAY_CLIENT_BODY_MIN_RATE"),
        ({"GATEWAY_ADMIN_HOST": "admin.example.com:8443"}, "GATEWAY_ADMIN_HOST"),
        ({"GATEWAY_ADMIN_HOST": "under_score.example"}, "GATEWAY_ADMIN_HOST"),
        ({"GATEWAY_ADMIN_LISTEN": "10.0.0.1"}, "GATEWAY_ADMIN_LISTEN"),
        ({"GATEWAY_ADMIN_LISTEN": "127.0.0.1:8000"}, "GATEWAY_ADMIN_LISTEN"),
    ],
)
def test_bad_settings_fail_naming_the_setting(env, named):
    result = check(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"{named}:" in result.stderr.strip().splitlines()[-1]


def test_embedded_store_is_allowed_explicitly_or_with_debug():
    assert check(REDIS_URL="embedded://", GATEWAY_ALLOW_EMBEDDED_STORE="1").returncode == 0
    assert check(REDIS_URL="embedded://", DEBUG="1").returncode == 0
