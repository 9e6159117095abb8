"""The core's management commands: api_token, audit_log, gateway_import (its audit trail, and a database it
cannot reach)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError

from gateway_project import tokens
from gateway_project.models import ApiToken, AuditEntry
from tests.support.commands import CLI, command
from tests.support.config import make_upstream
from tests.support.servers import REPO, free_port

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_prefix")]


def test_api_token_create_list_revoke():
    users = get_user_model().objects
    users.create_user("ops", password="x", is_staff=True)
    users.create_user("visitor", password="x")
    plaintext = command("api_token", "create", "ops", "--label", "ci").strip()
    token = tokens.authenticate(plaintext)
    assert (token.user.username, token.label, token.prefix) == ("ops", "ci", plaintext[:12])
    assert ApiToken.objects.get().key_hash != plaintext  # only the hash is kept
    (listed,) = command("api_token", "list").splitlines()
    assert listed.startswith(f"{token.prefix}  ops  ") and listed.endswith("active  ci")
    assert command("api_token", "revoke", token.prefix).strip() == f"{token.prefix}: revoked"
    assert tokens.authenticate(plaintext) is None
    with pytest.raises(CommandError, match="'visitor' is not an active staff user"):
        command("api_token", "create", "visitor")
    with pytest.raises(CommandError, match="no user named 'ghost'"):
        command("api_token", "create", "ghost")
    assert [(e.actor, e.action, e.object_type) for e in AuditEntry.objects.order_by("id")] == [
        (CLI, "create", "api_token"),
        (CLI, "revoke", "api_token"),
    ]


def test_audit_log_filters_by_object_and_actor(tmp_path):
    make_upstream("orders")
    path = tmp_path / "doc.yaml"
    path.write_text(command("gateway_export"))
    path.write_text(path.read_text().replace("read_timeout: 30.0", "read_timeout: 5.0"))
    command("gateway_import", str(path))
    lines = command("audit_log", "--type", "upstream", "--object", "orders").splitlines()
    assert lines[0].endswith(f"{CLI} (cli from {AuditEntry.objects.get().address})  update upstream 'orders'  [import]")
    assert lines[1] == "    read_timeout: 30.0 → 5.0"
    assert command("audit_log", "--actor", "user:") == ""
    (entry,) = json.loads(command("audit_log", "--json", "--actor", "cli:"))
    assert entry["changes"] == {"read_timeout": [30.0, 5.0]}


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
