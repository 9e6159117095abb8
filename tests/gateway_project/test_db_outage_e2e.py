"""The database must not stall the configuration: a watcher whose connection went silent recovers by itself, and
/readyz says so meanwhile. Under real gunicorn, with PostgreSQL reached through a proxy that can cut every open
connection off without a word (as a network partition or a hung server does: the client's socket stays open,
nothing answers). PostgreSQL only: SQLite has no connection to lose; `make test` runs this module against a
PostgreSQL of its own."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest
import requests
from django.db import connection

from tests.support.config import make_route, make_upstream, serve
from tests.support.gateways import database_url_for_gateway, talking_to
from tests.support.servers import wait_until
from tests.support.tcp_proxy import SilentProxy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (make test runs it on one)"),
]


@pytest.fixture(scope="module")
def proxy(django_db_setup):
    database = urlsplit(database_url_for_gateway())
    found = SilentProxy(database.port or 5432).start()
    yield found
    found.stop()


@pytest.fixture(scope="module")
def gateway_options(proxy) -> dict:
    """The gateway reaches the database through `proxy`, which the tests silence."""
    database = urlsplit(database_url_for_gateway())
    through_proxy = database._replace(netloc=database.netloc.replace(f":{database.port}", f":{proxy.port}")).geturl()
    return {
        "env": {"DATABASE_URL": through_proxy, "GATEWAY_DB_TIMEOUT": "2", "GATEWAY_CONFIG_DB_CHECK_INTERVAL": "0.5"}
    }


def readyz(gateway) -> dict:
    return requests.get(gateway.url("/readyz"), headers={"Connection": "close"}, timeout=10).json()


def test_a_watcher_whose_database_connection_went_silent_recovers_and_readyz_says_stale_meanwhile(
    gateway, proxy, transactional_db, upstream
):
    with talking_to(gateway):
        backend = make_upstream("backend", upstream.url)
        make_route("first", "/first", backend)
        serve(gateway)
        assert readyz(gateway)["status"] == "ready"
        assert proxy.abandon() >= 2  # every worker's watcher connection (and any other) is now a dead end
        make_route("second", "/second", backend)
        changed = time.monotonic()

        # The watchers' next database check hangs on the silent connection. Within a few poll intervals past
        # the change, /readyz (on a connection of its own) sees the database ahead of the served configuration.
        stale = wait_until(lambda: readyz(gateway)["checks"]["config"].startswith("error"), 5, "a stale /readyz")
        assert stale
        body = readyz(gateway)
        assert body["status"] == "unavailable"
        assert "the database has had revision" in body["checks"]["config"]
        assert body["checks"]["database"] == "ok"

        # Each watcher gives up on the call after 2 x GATEWAY_DB_TIMEOUT, reconnects and applies the change.
        def everyone_serves_it() -> bool:
            return all(
                requests.get(gateway.url("/second/x"), headers={"Connection": "close"}, timeout=10).status_code == 200
                for _ in range(12)
            )

        wait_until(everyone_serves_it, 15, "every worker serving the change")
        assert time.monotonic() - changed < 4 * 2 + 3
        assert readyz(gateway)["status"] == "ready"
        assert "configuration check stalled" in gateway.log()
