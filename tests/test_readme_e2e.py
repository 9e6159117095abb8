"""The README's first contact, run as written: `make run`'s own recipe starts the gateway (on a fresh machine:
the embedded store), then the "Try it" commands run in a new plain shell, in order, and each does what its
comment says. Also: manage.py in that plain shell reaches the running gateway's database, and refuses what
it cannot see."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.support.servers import REPO, free_port, wait_until

pytestmark = pytest.mark.slow

SETTINGS_PREFIXES = ("GATEWAY_", "DEBUG", "SECRET_KEY", "DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")


def plain_environment(var: Path) -> dict[str, str]:
    """A new shell: none of the gateway's settings, but for where this test keeps `var/` (the repository's own
    var/ belongs to the developer's `make run`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIXES)}
    env["GATEWAY_VAR_DIR"] = str(var)
    return env


def make_run_recipe() -> list[str]:
    """The command lines of the Makefile's `run` target, with the Makefile's variables filled in."""
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^run: venv\n((?:\t.*\n)+)", makefile, re.M).group(1)
    gunicorn = Path(sys.executable).with_name("gunicorn")
    lines = [line.strip().lstrip("@") for line in recipe.splitlines()]
    return [
        line.replace("$(PY)", sys.executable).replace("$(VENV)/bin/gunicorn", str(gunicorn))
        for line in lines
        if not line.startswith("mkdir")
    ]


def try_it_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Try it") :]
    start = section.index("```sh\n") + 6
    block = section[start : section.index("\n```", start)]
    return [line for line in block.splitlines() if line and not line[0].isspace()]


@contextmanager
def make_run(workdir: Path, **settings: str):
    """Start a gateway with the Makefile's own `run` recipe, given `settings` as make's command line would;
    yield where it listens, what it printed and its environment."""
    var, port = workdir / "var", free_port()
    env = {
        **plain_environment(var),
        "DEBUG": "1",  # the Makefile's `export DEBUG ?= 1`
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "GATEWAY_LOG_LEVEL": "WARNING",
        **settings,
    }
    *setup, serve = make_run_recipe()
    printed = []
    for line in setup:
        if "collectstatic" in line:
            continue  # DEBUG serves static files from the apps; the API docs page is not part of this test
        # A recipe line runs in a shell, as make runs it.
        result = subprocess.run(line, shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)  # noqa: S602
        assert result.returncode == 0, (line, result.stderr)
        printed.append(result.stdout)
    log = open(workdir / "gunicorn.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen("exec " + serve, shell=True, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S602
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(base + "/readyz", timeout=1).ok, 30, "make run's gateway")
        yield {"base": base, "port": port, "var": var, "printed": "".join(printed), "env": env}
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(15)
        log.close()


@pytest.fixture(scope="module")
def made_run(tmp_path_factory):
    """What `make run` leaves running on a machine without Redis (the embedded store)."""
    with make_run(tmp_path_factory.mktemp("make-run"), REDIS_URL="embedded://") as running:
        yield running


@pytest.fixture(scope="module")
def made_run_with_redis(tmp_path_factory, redis_server):
    """What `make run` leaves running next to a Redis (here the suite's, under a key prefix of its own)."""
    workdir = tmp_path_factory.mktemp("make-run-redis")
    with make_run(workdir, REDIS_URL=redis_server.url, GATEWAY_REDIS_PREFIX=f"readme{os.getpid()}") as running:
        yield running


def run_in_a_plain_shell(commands: list[str], made_run) -> list[str]:
    """Run the commands in one bash, in order, as a user types them; return each one's output."""
    port, var = made_run["port"], made_run["var"]
    script = []
    for index, command in enumerate(commands):
        command = command.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace("localhost:8000", f"localhost:{port}")
        command = command.replace("var/api-token", f"{var}/api-token")
        script += [f"echo '@@ {index}'", command]
    result = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=REPO,
        env=plain_environment(var),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return re.split(r"@@ \d+\n", result.stdout)[1:]


def test_try_it_does_what_the_readme_says_in_order(made_run):
    commands = try_it_commands()
    assert len(commands) == 15
    out = run_in_a_plain_shell(commands, made_run)
    hello, delay, failing, nowhere, ready, loop, token, usage, clear, fail, errors, recover, reset, again, trail = out
    assert hello.startswith("HTTP/1.1 200") and '"service": "demo"' in hello
    assert delay.startswith("HTTP/1.1 200") and '"delayed_seconds": 0.5' in delay
    assert failing.startswith("HTTP/1.1 503")
    assert nowhere.startswith("HTTP/1.1 404") and '"request_id"' in nowhere
    assert json.loads(ready)["status"] == "ready"
    counted = collections.Counter({code: int(n) for n, code in (line.split() for line in loop.splitlines())})
    assert counted == {"200": 97, "429": 23}
    assert token == ""
    assert [(row["client"], row["used"]) for row in json.loads(usage)] == [("ip:<127.0.0.1>", 100)]
    assert json.loads(clear) == {"client": "ip:<127.0.0.1>", "cleared": True}
    assert json.loads(fail)["failing"] is True
    assert errors.splitlines() == [
        '"error": "simulated failure"',
        '"error": "simulated failure"',
        '"error": "circuit_open"',
    ]
    assert json.loads(recover) == {"failing": False}
    assert (json.loads(reset)["upstream"], json.loads(reset)["state"]) == ("demo", "closed")
    assert again == "200\n"
    entries = json.loads(trail)["results"]
    assert [(e["action"], e["object_type"], e["object_name"]) for e in entries] == [
        ("reset", "breaker", "demo"),
        ("clear_counter", "rate_limit", "demo-per-ip"),
    ]
    assert {e["actor"].split(" ")[1] for e in entries} == {"(admin)"}


def test_make_run_prints_the_first_password_once_then_where_the_login_lives(made_run):
    printed = made_run["printed"]
    _, password = (made_run["var"] / "admin-credentials").read_text().split()
    assert f"login admin / {password}" in printed
    assert "Settings of this run saved in" in printed
    again = subprocess.run(
        [sys.executable, "manage.py", "gateway_demo"], cwd=REPO, env=made_run["env"], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert password not in again.stdout
    assert f"the first run's password was saved in {made_run['var'] / 'admin-credentials'}" in again.stdout


def test_manage_py_in_a_plain_shell_uses_the_running_gateways_settings(made_run):
    def manage(*args):
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO,
            env=plain_environment(made_run["var"]),
            capture_output=True,
            text=True,
            timeout=60,
        )

    exported = manage("gateway_export")
    assert exported.returncode == 0, exported.stderr
    assert "- name: demo\n" in exported.stdout and "name: demo-per-ip" in exported.stdout
    refused = manage("breakers")
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.startswith("CommandError: the live state (breakers, rate-limit counters) is inside")


def readme_block(heading: str) -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index(heading) :]
    start = section.index("```sh\n") + 6
    return section[start : section.index("\n```", start)]


def run_day(heading: str, made_run, upstream, tmp_path) -> str:
    """Run one of the README's operator days as one script in a new plain shell, stopping at the first error."""
    script = readme_block(heading)
    for old, new in (
        ("127.0.0.1:8000", f"127.0.0.1:{made_run['port']}"),
        ("127.0.0.1:9000", f"127.0.0.1:{upstream.port}"),
        ("var/api-token", f"{made_run['var']}/api-token"),
        (".venv/bin/python manage.py", f"{sys.executable} {REPO}/manage.py"),
    ):
        script = script.replace(old, new)
    result = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=tmp_path,
        env=plain_environment(made_run["var"]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def api_get(made_run, path: str):
    token = (made_run["var"] / "api-token").read_text().strip()
    response = requests.get(
        made_run["base"] + "/_gateway/api/v1" + path, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    response.raise_for_status()
    return response.json()


DAY = [
    ("create", "upstream", "orders"),
    ("create", "route", "orders"),
    ("create", "consumer", "acme"),
]


def test_the_operators_day_with_curl_runs_as_written(made_run, upstream, tmp_path):
    output = run_day("### An operator's day with curl", made_run, upstream, tmp_path)
    assert '"applied":false,"changes":[{"action":"update","object_type":"upstream","name":"orders",' in output
    assert '"changes":{"read_timeout":[30.0,5.0]}}]' in output
    assert upstream.received[-1].header("X-Consumer-Name") == "acme"
    assert api_get(made_run, "/upstreams/orders/")["read_timeout"] == 5.0
    steps = [
        (e["action"], e["object_type"], e["object_name"], e["actor"].split(" ")[-1])
        for e in reversed(api_get(made_run, "/audit/?limit=7")["results"])
    ]
    key_prefix = steps[3][2]
    assert steps == [
        *[(*step, "(admin)") for step in DAY],
        ("create", "api_key", key_prefix, "(admin)"),
        ("create", "rate_limit", "acme-per-minute", "(admin)"),
        ("reset", "breaker", "orders", "(admin)"),
        ("update", "upstream", "orders", "(admin)"),
    ]


def test_the_same_day_with_manage_py_runs_as_written(made_run_with_redis, upstream, tmp_path):
    output = run_day("### The same day with manage.py", made_run_with_redis, upstream, tmp_path)
    assert "  create upstream 'orders'\n  create route 'orders'\n" in output
    assert "Dry run: 4 change(s) would be applied; nothing was changed." in output
    assert "reset orders\n" in output
    assert "  update upstream 'orders'\n      read_timeout: 30.0 → 5.0\n" in output
    assert upstream.received[-1].header("X-Consumer-Name") == "acme"
    assert api_get(made_run_with_redis, "/upstreams/orders/")["read_timeout"] == 5.0
    steps = [
        (e["action"], e["object_type"], e["object_name"], e["actor"].split(":")[0], e["via"])
        for e in reversed(api_get(made_run_with_redis, "/audit/?limit=20")["results"])
        if e["object_name"] != "demo" and e["object_type"] != "api_token" and e["object_name"] != "demo-per-ip"
    ]
    assert [step[:3] for step in steps] == [
        *DAY,
        ("create", "rate_limit", "acme-per-minute"),
        ("create", "api_key", steps[4][2]),
        ("reset", "breaker", "orders"),
        ("update", "upstream", "orders"),
    ]
    assert {step[3:] for step in steps} == {("cli", "cli")}
