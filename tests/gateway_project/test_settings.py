"""Bad settings stop start-up with one line that names the setting; `make run`'s settings reach every shell."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway_project import conf
from tests.support.servers import REPO, free_port

GOOD = {
    "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
    "SECRET_KEY": "x" * 50,
    "REDIS_URL": "redis://127.0.0.1:1/0",
}
SHOW = (
    "import django; django.setup(); from django.conf import settings as s; "
    "print(s.DEBUG, s.DATABASES['default']['NAME'], s.GATEWAY_REDIS_URL, s.GATEWAY_LISTEN)"
)


def environment(var_dir, **env: str | None) -> dict[str, str]:
    """The process's environment without any gateway setting, plus `env` (None removes a variable)."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DEBUG", "DATABASE_URL", "REDIS_URL"))
    }
    environment.pop("SECRET_KEY", None)
    environment.update(GOOD)
    environment["GATEWAY_VAR_DIR"] = str(var_dir)
    for key, value in env.items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    return environment


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def check(tmp_path, **env: str | None) -> subprocess.CompletedProcess:
    return run([sys.executable, "-c", "import django; django.setup()"], environment(tmp_path, **env))


def test_good_settings_start(tmp_path):
    result = check(tmp_path)
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
def test_bad_settings_fail_naming_the_setting(tmp_path, env, named):
    result = check(tmp_path, **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"{named}:" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "manage.py", "gateway_export"],
        [str(Path(sys.executable).with_name("gunicorn")), "-c", "gunicorn.conf.py", "gateway_project.wsgi"],
    ],
    ids=["manage.py", "gunicorn"],
)
@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"SECRET_KEY": None}, "configuration error: SECRET_KEY: required when DEBUG is off"),
        ({"DATABASE_URL": "nosuchdb://x"}, "configuration error: DATABASE_URL: "),
        ({"GATEWAY_WORKRS": "2"}, "configuration error: GATEWAY_WORKRS: not a setting of this gateway; did you mean"),
    ],
)
def test_manage_py_and_gunicorn_say_what_is_wrong_in_one_line(tmp_path, argv, env, line):
    result = run(argv, environment(tmp_path, GATEWAY_LISTEN=f"127.0.0.1:{free_port()}", **env))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(line)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_embedded_store_is_allowed_explicitly_or_with_debug(tmp_path):
    assert check(tmp_path, REDIS_URL="embedded://", GATEWAY_ALLOW_EMBEDDED_STORE="1").returncode == 0
    assert check(tmp_path, REDIS_URL="embedded://", DEBUG="1").returncode == 0


# make run's settings in other shells


def test_a_plain_shell_uses_the_settings_make_run_recorded(tmp_path):
    """`make run` records DEBUG, the database and the Redis it chose; a new shell without them gets the same."""
    make_run = environment(
        tmp_path, DEBUG="1", SECRET_KEY=None, REDIS_URL=None, DATABASE_URL=f"sqlite:///{tmp_path}/run.sqlite3"
    )
    written = run([sys.executable, "-m", "gateway_project.conf"], make_run)
    assert written.returncode == 0, written.stderr
    assert str(tmp_path / conf.RUN_FILE) in written.stdout
    recorded = (tmp_path / conf.RUN_FILE).read_text()
    assert "DEBUG=1\n" in recorded
    assert f"DATABASE_URL=sqlite:///{tmp_path}/run.sqlite3\n" in recorded
    assert ("REDIS_URL=redis://127.0.0.1:6379/0\n" in recorded) or ("REDIS_URL=embedded://\n" in recorded)

    shell = environment(tmp_path, SECRET_KEY=None, REDIS_URL=None, DATABASE_URL=None)
    shown = run([sys.executable, "-c", SHOW], shell)
    assert shown.returncode == 0, shown.stderr
    debug, database, redis_url, _ = shown.stdout.split(" ", 3)
    assert (debug, database) == ("True", f"{tmp_path}/run.sqlite3")
    assert f"REDIS_URL={redis_url}\n" in recorded
    # The environment wins over the file.
    shown = run([sys.executable, "-c", SHOW], {**shell, "GATEWAY_LISTEN": "127.0.0.1:9123"})
    assert shown.stdout.strip().endswith("('127.0.0.1', 9123)")


def test_production_never_reads_the_file(tmp_path):
    """A process whose environment sets SECRET_KEY (production always does) reads the environment alone."""
    (tmp_path / conf.RUN_FILE).write_text("DEBUG=1\nDATABASE_URL=sqlite:////nonexistent/dev.sqlite3\n")
    shown = run([sys.executable, "-c", SHOW], environment(tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"False {tmp_path}/gateway.sqlite3 ")


def test_a_damaged_run_file_is_named(tmp_path):
    (tmp_path / conf.RUN_FILE).write_text("DEBUG=1\nREDIS_ULR=redis://x\n")
    result = run([sys.executable, "manage.py", "check"], environment(tmp_path, SECRET_KEY=None))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"configuration error: REDIS_ULR: line 2 of {tmp_path / conf.RUN_FILE} is not a setting of this gateway"
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"GATEWAY_SECURE_COOKIES": "0"}, "gateway-session / gateway-csrf /"),
        ({"GATEWAY_SECURE_COOKIES": "0", "GATEWAY_ADMIN_PATH": "/_gateway/admin"}, "gateway-session /_gateway"),
        ({"GATEWAY_SECURE_COOKIES": "1"}, "__Host-gateway-session / __Host-gateway-csrf /"),
    ],
)
def test_the_admins_cookies_cover_the_admin_and_the_api_and_no_more_than_they_must(tmp_path, env, expected):
    show = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.SESSION_COOKIE_NAME, s.SESSION_COOKIE_PATH, s.CSRF_COOKIE_NAME, s.CSRF_COOKIE_PATH)"
    )
    result = run([sys.executable, "-c", show], environment(tmp_path, **env))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(expected), result.stdout
