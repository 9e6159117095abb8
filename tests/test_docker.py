"""The Docker files, checked without a Docker engine (none runs here; `docker compose up` itself is not run):
the Dockerfile passes hadolint, compose.yaml validates against the Compose specification, the build context
leaves out the virtualenv and make run's files, and what the stack mounts and imports exists and is valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway_project import configfile
from tests.support.servers import REPO

BIN = Path(sys.executable).parent


def test_the_dockerfile_passes_hadolint_without_a_finding():
    result = subprocess.run(
        [str(BIN / "hadolint"), "--failure-threshold", "style", "--no-color", "docker/Dockerfile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (0, ""), result.stdout + result.stderr


def test_compose_yaml_is_valid_compose_and_builds_from_the_repository_root():
    result = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "compose.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    build = compose["services"]["gateway"]["build"]
    assert (REPO / build["context"] / build["dockerfile"]).is_file()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), volume
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{port}: published beyond this machine"


def test_the_build_context_leaves_out_the_virtualenv_and_make_runs_files():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip()}
    assert {".venv/", "var/", ".git/"} <= ignored
    for line in (REPO / "docker" / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), line
                assert not any(source.startswith(i.rstrip("/")) for i in ignored), f"{line}: excluded from the context"


def test_no_default_password_is_left_unsaid():
    text = (REPO / "compose.yaml").read_text()
    compose = yaml.safe_load(text)
    assert (
        compose["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
        == "${GRAFANA_ADMIN_PASSWORD:-admin}"
    )
    assert "admin / admin unless GRAFANA_ADMIN_PASSWORD is set" in text
    # The gateway's admin gets a random password at first start (gateway_demo), printed to the logs.
    assert "python manage.py gateway_demo\n" in (REPO / "docker" / "entrypoint.sh").read_text()


@pytest.mark.django_db
def test_the_stacks_sample_upstream_and_route_import_cleanly(redis_prefix):
    for path in sorted((REPO / "docker" / "gateway").glob("*.yaml")):
        plan = configfile.plan(configfile.parse(path.read_text()))
        assert [str(change) for change in plan.changes] == ["create upstream 'whoami'", "create route 'whoami'"]
