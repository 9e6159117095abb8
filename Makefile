# The two commands: `make run` serves the gateway with demo routes; `make test` runs the whole suite.
# Both set up everything they need (virtualenv, packages, database, static files) on a fresh machine.

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: run test test-fast lint venv clean test-tools

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

# `make run`: development defaults (DEBUG on, demo upstream, 127.0.0.1:8000). Override any variable from
# README.md on the command line or in the environment, e.g. `make run REDIS_URL=redis://10.0.0.5:6379/0`.
# It records those settings in var/make-run.env, so manage.py in any other shell uses the same ones.
run: export DEBUG ?= 1
run: venv
	@mkdir -p var
	$(PY) -m gateway_project.conf
	$(PY) manage.py migrate --noinput -v 0
	$(PY) manage.py collectstatic --noinput -v 0
	$(PY) manage.py gateway_demo
	$(VENV)/bin/gunicorn -c gunicorn.conf.py gateway_project.wsgi

# Tests start their own redis-server (a single one and a cluster), PostgreSQL (initdb, pg_ctl), for the
# dashboard and status page tests prometheus, and for the admin's browser test chromium (driven by Playwright
# at /usr/bin/chromium; Playwright never downloads a browser here). All come from Debian's packages, installed
# here when missing.
test-tools:
	@for tool in redis-server:redis-server prometheus:prometheus initdb:postgresql chromium:chromium; do \
	  name=$${tool%%:*}; package=$${tool##*:}; \
	  command -v $$name >/dev/null || ls /usr/lib/postgresql/*/bin/$$name >/dev/null 2>&1 && continue; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $$package (Debian package) for the tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$package >/dev/null || \
	      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$package >/dev/null; } || exit 1; \
	  else \
	    echo "error: the tests need $$name (Debian/Ubuntu: apt-get install $$package)" >&2; exit 1; \
	  fi; \
	done

# The suite runs on SQLite, then on a PostgreSQL of its own (tests/support/postgres.py; never the one a machine
# may run on 5432) for what depends on the database engine: the in-process tests (every query, transaction,
# lock and migration of the code is run there) and the tests marked `postgres` (configuration changes reaching
# gunicorn workers through the database; a database connection going silent). Tests that run gunicorn for
# what it does with Redis, upstreams and clients make the same few configuration reads on either engine.
test: venv test-tools
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest --ds=tests.settings $(PYTEST_ARGS)
	$(PY) -m tests.support.postgres $(VENV)/bin/pytest --ds=tests.settings -m "postgres or (database and not (slow or e2e))" $(PYTEST_ARGS)

# While iterating: skip the slow load, soak and large-transfer tests.
test-fast: venv test-tools
	$(VENV)/bin/pytest --ds=tests.settings -m "not slow" $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
