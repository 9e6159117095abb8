"""The one settings surface (gateway_project/conf.py): every variable declared once, documented, checked."""

from __future__ import annotations

import re

import pytest
from django.core.exceptions import ImproperlyConfigured

from gateway_project import conf
from tests.support.servers import REPO

GOOD = {"SECRET_KEY": "x" * 50}


def documented_variables() -> set[str]:
    """The variables named in the first column of README.md's settings tables."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Settings") :]
    section = section[: section.index("\n## ", 1)]
    first_cells = re.findall(r"^\| (.+?) \|", section, re.M)
    return {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}


def test_the_readme_documents_every_setting_and_nothing_else():
    declared = {s.env for s in conf.SETTINGS}
    documented = documented_variables()
    assert declared - documented == set(), "declared in conf.py but missing from README.md's settings tables"
    assert documented - declared == set(), "in README.md's settings tables but not a setting"


def test_the_environment_is_read_nowhere_else():
    """Only conf.py reads GATEWAY_* variables (and gunicorn.conf.py, through conf.read())."""
    variable = r"[\"'](?:GATEWAY_|REDIS_URL|DATABASE_URL|DEBUG|SECRET_KEY)\w*[\"']"
    reads = re.compile(rf"environ\.get\(\s*{variable}|environ\[\s*{variable}\s*\](?!\s*=)")
    paths = [
        *REPO.glob("*.py"),
        *(p for app in ("gateway_project", "proxy", "limits", "breakers") for p in (REPO / app).rglob("*.py")),
    ]
    offenders = [str(p.relative_to(REPO)) for p in paths if p.name != "conf.py" and reads.search(p.read_text())]
    assert offenders == []


def test_defaults():
    values = conf.read(GOOD)
    assert values["GATEWAY_LISTEN"] == ("127.0.0.1", 8000)
    assert values["GATEWAY_POOL_MAXSIZE"] == values["GATEWAY_WORKER_CONNECTIONS"] == 1000
    assert (values["GATEWAY_DEMO"], values["GATEWAY_LOG_FORMAT"], values["GATEWAY_SECURE_COOKIES"]) == (
        False,
        "json",
        True,
    )


def test_defaults_follow_the_settings_they_depend_on():
    values = conf.read({"DEBUG": "1", "GATEWAY_WORKER_CONNECTIONS": "50"})
    assert (values["GATEWAY_DEMO"], values["GATEWAY_LOG_FORMAT"], values["GATEWAY_SECURE_COOKIES"]) == (
        True,
        "console",
        False,
    )
    assert values["GATEWAY_POOL_MAXSIZE"] == 50


def test_a_misspelt_gateway_variable_is_refused_with_a_suggestion():
    expected = r"^GATEWAY_REDIS_PREFX: not a setting .*did you mean GATEWAY_REDIS_PREFIX\?"
    with pytest.raises(ImproperlyConfigured, match=expected):
        conf.read({**GOOD, "GATEWAY_REDIS_PREFX": "x"})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_CONFIG_POLL_INTERVAL", "nan"),
        ("GATEWAY_BREAKER_SYNC_INTERVAL", "0"),
        ("GATEWAY_LOG_LEVEL", "loud"),
        ("GATEWAY_KEEPALIVE", "-1"),
    ],
)
def test_a_bad_value_names_its_variable(name, value):
    with pytest.raises(ImproperlyConfigured, match=f"^{name}: "):
        conf.read({**GOOD, name: value})
