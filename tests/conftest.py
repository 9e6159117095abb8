"""Fixtures: a real redis-server, real upstream servers on loopback, and real gunicorn gateways."""

from __future__ import annotations

import uuid
from contextlib import contextmanager

import pytest
from django.conf import settings
from django.db import connection

from gateway_project import runtime, store
from tests.support.servers import Gateway, RedisServer
from tests.support.upstream import Upstream


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


def database_url_for_gateway() -> str:
    """The test database, as a DATABASE_URL a gunicorn process can open."""
    params = connection.settings_dict
    if params["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{params['NAME']}"
    user = params.get("USER") or ""
    password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    host = params.get("HOST") or "127.0.0.1"
    port = f":{params['PORT']}" if params.get("PORT") else ""
    return f"postgres://{auth}{host}{port}/{params['NAME']}"


def start_gateway(
    tmp_path_factory,
    redis_server,
    *,
    workers: int = 2,
    env: dict | None = None,
    prefix: str | None = None,
    collectstatic: bool = False,
) -> Gateway:
    """Start a gateway on the test database and `redis_server`; gateways given the same prefix act as one fleet."""
    prefix = prefix or f"g{uuid.uuid4().hex[:10]}"
    return Gateway(
        tmp_path_factory.mktemp("gateway"),
        redis_url=redis_server.url,
        database_url=database_url_for_gateway(),
        prefix=prefix,
        workers=workers,
        env=env,
    ).start(collectstatic=collectstatic)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, redis_server, django_db_setup, django_db_blocker):
    """A gunicorn gateway with 2 workers, shared by the tests of one module."""
    with django_db_blocker.unblock():
        gw = start_gateway(tmp_path_factory, redis_server)
    yield gw
    gw.stop()


@contextmanager
def talking_to(gateway: Gateway, redis: RedisServer | None = None):
    """Make this test process use the key prefix (and, if given, the Redis server) of a gateway's workers, so
    that its configuration changes reach them and its reads see their state; restore everything after."""
    previous = (settings.GATEWAY_REDIS_URL, settings.GATEWAY_REDIS_PREFIX)
    if redis is not None:
        settings.GATEWAY_REDIS_URL = redis.url
        store.reset_clients()
    settings.GATEWAY_REDIS_PREFIX = gateway.prefix
    try:
        yield gateway
    finally:
        settings.GATEWAY_REDIS_URL, settings.GATEWAY_REDIS_PREFIX = previous
        if redis is not None:
            store.reset_clients()


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
def own_gateway(request, tmp_path_factory, own_redis, django_db_setup, django_db_blocker):
    """A gateway on `own_redis`; the module's OWN_GATEWAY (a dict) passes options to Gateway."""
    options = {"workers": 2, **getattr(request.module, "OWN_GATEWAY", {})}
    with django_db_blocker.unblock():
        gw = Gateway(
            tmp_path_factory.mktemp("own-gateway"),
            redis_url=own_redis.url,
            database_url=database_url_for_gateway(),
            prefix=f"own{uuid.uuid4().hex[:8]}",
            **options,
        ).start()
    yield gw
    gw.stop()


@pytest.fixture
def reload_config():
    """For in-process tests (no watcher thread): compile the configuration now."""
    return runtime.load
