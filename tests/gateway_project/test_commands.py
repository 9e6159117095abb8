"""The core's management commands as an operator runs them, in a process of their own."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.servers import REPO, free_port


def test_gateway_import_against_an_unreachable_database_says_so_in_one_line(tmp_path):
    document = tmp_path / "gateway.yaml"
    document.write_text("version: 1\nupstreams: []\n")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
        "DATABASE_URL": f"postgres://gateway@127.0.0.1:{free_port()}/gateway",
        "GATEWAY_DB_TIMEOUT": "1",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "gateway_import", str(document)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("CommandError: the database is unavailable, nothing was changed: ")
