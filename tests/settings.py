"""Test settings: the production settings module, configured through the environment as an operator would.

The Redis URL here is a placeholder; the `redis_server` fixture starts a real redis-server and points the
settings at it. The SQLite test database is a file so that gunicorn processes started by end-to-end tests
share it with the test process.
"""

import os
import tempfile
from pathlib import Path

_tmp = Path(os.environ.get("TESTS_TMPDIR") or tempfile.mkdtemp(prefix="gateway-tests-"))
os.environ["TESTS_TMPDIR"] = str(_tmp)
os.environ.setdefault("SECRET_KEY", "test-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz")
os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:1/0")
os.environ.setdefault("GATEWAY_CONFIG_WATCH", "0")
os.environ.setdefault("GATEWAY_VAR_DIR", str(_tmp / "var"))
os.environ.setdefault("GATEWAY_LOG_LEVEL", "WARNING")
_sqlite = not os.environ.get("DATABASE_URL")
if _sqlite:
    os.environ["DATABASE_URL"] = f"sqlite:///{_tmp / 'gateway.sqlite3'}"

from gateway_project.settings import *  # noqa: E402, F403

if _sqlite:
    # A file, so that gunicorn processes started by end-to-end tests open the test process's database.
    DATABASES["default"]["TEST"] = {"NAME": str(_tmp / "test-gateway.sqlite3")}  # noqa: F405

ALLOWED_HOSTS = ["*"]

# In-process tests render admin pages without running collectstatic first.
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
Path(STATIC_ROOT).mkdir(parents=True, exist_ok=True)  # noqa: F405
