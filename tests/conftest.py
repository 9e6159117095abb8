"""Fixtures: a real redis-server, real upstream servers on loopback, and real gunicorn gateways."""

from __future__ import annotations

import uuid

import pytest
from django.conf import settings

from gateway_project import runtime, store
from tests.support.gateways import start_gateway, talking_to
from tests.support.servers import RedisServer
from tests.support.upstream import Upstream

#: Fixtures that start gunicorn: a test using one is marked `e2e` (see pytest_collection_modifyitems).
GUNICORN_FIXTURES = frozenset({"gateway", "four_workers", "own_gateway", "live", "gw4", "gw"})
DATABASE_FIXTURES = frozenset({"db", "transactional_db", "django_db_reset_sequences", "django_db_serialized_rollback"})


def pytest_collection_modifyitems(items) -> None:
    """Mark the tests that run a gunicorn gateway `e2e` (the *_e2e.py modules, and any test using a shared
    gateway fixture) and those that use the database `database`, so that `make test`'s PostgreSQL pass runs what
    can differ by engine: the in-process tests that touch the database (and those marked `postgres`), not the
    gunicorn tests nor the pure logic ones."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if GUNICORN_FIXTURES & fixtures or item.path.stem.endswith("_e2e"):
            item.add_marker(pytest.mark.e2e)
        if DATABASE_FIXTURES & fixtures or item.get_closest_marker("django_db"):
            item.add_marker(pytest.mark.database)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A redis-server of the suite's own. The suite fails, not skips, when none can be started."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    settings.GATEWAY_REDIS_URL = server.url
    store.reset_clients()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def every_key_expires(redis_server):
    """After the whole suite, no key the gateway wrote to the suite's Redis may lack a TTL."""
    yield
    import redis

    client = redis.Redis.from_url(redis_server.url)
    immortal = [key for key in client.scan_iter(count=1000) if client.ttl(key) == -1]
    client.close()
    assert not immortal, f"Redis keys without a TTL: {immortal[:20]}"


@pytest.fixture
def redis_prefix(redis_server):
    """A fresh key prefix for one test, so tests never see each other's keys."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    previous = settings.GATEWAY_REDIS_PREFIX
    settings.GATEWAY_REDIS_PREFIX = prefix
    yield prefix
    settings.GATEWAY_REDIS_PREFIX = previous


@pytest.fixture
def redis_client(redis_server, redis_prefix):
    return store.ops_client()


@pytest.fixture
def upstream():
    server = Upstream().start()
    yield server
    server.stop()


@pytest.fixture
def in_process(settings, monkeypatch):
    """Serve the admin and the API from this process inside the test's transaction: a fast password hasher for
    admin_user, and no runtime.start() when the test client builds the middleware (it ends with
    close_old_connections(), which would close the connection holding the test's transaction; the admin pages
    do not need the compiled configuration). Static files need no collectstatic: tests/settings.py."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    monkeypatch.setattr(runtime, "start", lambda: None)


@pytest.fixture(scope="module")
def gateway_options() -> dict:
    """How a module's `gateway` is started (the keywords of `start_gateway`); a module overrides this fixture to
    run its gateway with other settings."""
    return {}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, redis_server, gateway_options, django_db_setup, django_db_blocker):
    """A gunicorn gateway (2 workers unless `gateway_options` says otherwise), shared by the tests of one module."""
    with django_db_blocker.unblock():
        gw = start_gateway(tmp_path_factory, redis_server, **gateway_options)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def four_workers(tmp_path_factory, redis_server, django_db_setup, django_db_blocker):
    """A gunicorn gateway with 4 workers: more workers than cores, so they really share the state."""
    with django_db_blocker.unblock():
        gw = start_gateway(tmp_path_factory, redis_server, workers=4)
    yield gw
    gw.stop()


@pytest.fixture
def gw4(four_workers, transactional_db):
    with talking_to(four_workers):
        yield four_workers


@pytest.fixture
def live(gateway, transactional_db, redis_server):
    """Use the module's gateway from a test: committed data, and this process publishing to its Redis prefix."""
    with talking_to(gateway):
        yield gateway


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory):
    """A redis-server for one module's gateway alone: its tests stop, freeze and restart it."""
    server = RedisServer(tmp_path_factory.mktemp("own-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def own_gateway(tmp_path_factory, own_redis, django_db_setup, django_db_blocker):
    """A gateway with 2 workers on `own_redis`."""
    with django_db_blocker.unblock():
        gw = start_gateway(tmp_path_factory, own_redis)
    yield gw
    gw.stop()


@pytest.fixture
def reload_config():
    """For in-process tests (no watcher thread): compile the configuration now."""
    return runtime.load
