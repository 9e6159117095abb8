"""Starting gunicorn gateways for end-to-end tests, and talking to them from the test process."""

from __future__ import annotations

import uuid
from contextlib import contextmanager

from django.conf import settings
from django.db import connection

from gateway_project import store
from tests.support.servers import Gateway, RedisServer


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
    redis: RedisServer,
    *,
    workers: int = 2,
    env: dict | None = None,
    prefix: str | None = None,
    collectstatic: bool = False,
) -> Gateway:
    """A gateway on the test database and `redis`; gateways given the same prefix act as one fleet."""
    return Gateway(
        tmp_path_factory.mktemp("gateway"),
        redis_url=redis.url,
        database_url=database_url_for_gateway(),
        prefix=prefix or f"g{uuid.uuid4().hex[:10]}",
        workers=workers,
        env=env,
    ).start(collectstatic=collectstatic)


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
