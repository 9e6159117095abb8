"""Every setting of the gateway, declared once: its environment variable, type, default and meaning.

`read()` turns the environment into values, checked once at start-up; a bad value (or a misspelt GATEWAY_*
variable) stops start-up with ImproperlyConfigured naming the variable. Django's settings module and
gunicorn.conf.py both call it, so the server and the application can never read the environment differently.
README.md's settings table lists every variable declared here (tests/gateway_project/test_conf.py checks it).

Hot-path code takes these values when it is built (middleware `__init__`, compiled configuration), never per
request.

`make run` records the development settings it started with in `<GATEWAY_VAR_DIR>/make-run.env` (see
`write_run_file`), so that `manage.py` in any other shell uses the same database, Redis and DEBUG as the running
gateway. The file is read only by a process whose environment sets neither SECRET_KEY nor DEBUG: production
always sets SECRET_KEY, so it reads the environment alone.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


# --- Parsers: (variable name, raw text) -> value; each names the variable in its error. ------------------


def text(name: str, raw: str) -> str:
    return raw


def boolean(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}: expected one of 1/0, true/false, yes/no, on/off; got {raw!r}")


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            number = int(raw.replace("_", ""))
        except ValueError:
            raise ImproperlyConfigured(f"{name}: expected an integer, got {raw!r}") from None
        return _in_range(name, number, minimum, maximum)

    return parse


def number(minimum: float | None = None, maximum: float | None = None) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ImproperlyConfigured(f"{name}: expected a number, got {raw!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ImproperlyConfigured(f"{name}: expected a finite number, got {raw!r}")
        return _in_range(name, value, minimum, maximum)

    return parse


def _in_range(name: str, value, minimum, maximum):
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}: must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name}: must be at most {maximum}, got {value}")
    return value


def comma_list(name: str, raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def networks(name: str, raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A comma-separated list of addresses or CIDR networks; a bare address is a /32 or /128."""
    found = []
    for item in comma_list(name, raw):
        try:
            found.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ImproperlyConfigured(f"{name}: {item!r} is not an IP address or CIDR network") from None
    return tuple(found)


def listen(name: str, raw: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port`; returns (host, port)."""
    host, sep, port = raw.rpartition(":")
    if not sep:
        raise ImproperlyConfigured(f"{name}: expected host:port, got {raw!r}")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port_number = int(port)
    except ValueError:
        raise ImproperlyConfigured(f"{name}: port must be a number, got {raw!r}") from None
    if not 0 < port_number < 65536:
        raise ImproperlyConfigured(f"{name}: port must be between 1 and 65535, got {port_number}")
    return host, port_number


_HOST_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")


def host_name(name: str, raw: str) -> str:
    """A DNS host name, lower-cased and without a trailing dot."""
    host = raw.lower().rstrip(".")
    if not _HOST_NAME.fullmatch(host):
        raise ImproperlyConfigured(f"{name}: expected a host name such as admin.gateway.internal, got {raw!r}")
    return host


def choice(*options: str, upper: bool = False) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.upper() if upper else raw
        if value not in options:
            raise ImproperlyConfigured(f"{name}: expected one of {', '.join(options)}, got {raw!r}")
        return value

    return parse


def header_name(name: str, raw: str) -> str:
    if not raw.replace("-", "").isalnum():
        raise ImproperlyConfigured(f"{name}: a header name of letters, digits and '-', got {raw!r}")
    return raw


def redis_prefix(name: str, raw: str) -> str:
    if not raw.replace("-", "").replace("_", "").isalnum():
        raise ImproperlyConfigured(f"{name}: letters, digits, '-' and '_' only, got {raw!r}")
    return raw


def admin_path(name: str, raw: str) -> str:
    path = "/" + raw.strip("/")
    if path == "/" or not path.replace("/", "").replace("_", "").replace("-", "").isalnum():
        raise ImproperlyConfigured(f"{name}: a path such as /admin or /_gateway/admin, got {raw!r}")
    return path


def http_url(name: str, raw: str) -> str:
    if raw and (urlsplit(raw).scheme not in ("http", "https") or not urlsplit(raw).hostname):
        raise ImproperlyConfigured(f"{name}: an http:// or https:// URL such as http://prometheus:9090, got {raw!r}")
    return raw.rstrip("/")


def metrics_token(name: str, raw: str) -> str:
    if raw and len(raw) < 16:
        raise ImproperlyConfigured(f"{name}: use at least 16 characters")
    return raw


# --- The settings ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One environment variable. `default` is a value, or a function of the values read before it."""

    env: str
    parse: Callable[[str, str], Any]
    default: Any
    doc: str
    tuning: bool = False  # an advanced knob: README lists these in their own table

    def default_for(self, values: Mapping[str, Any]) -> Any:
        return self.default(values) if callable(self.default) else self.default


def _cpu_count(values) -> int:
    return os.cpu_count() or 1


SETTINGS: tuple[Setting, ...] = (
    Setting("DEBUG", boolean, False, "Development mode: readable logs, the demo, the embedded store allowed."),
    Setting("SECRET_KEY", text, "", "Required when `DEBUG` is off."),
    Setting(
        "ALLOWED_HOSTS",
        comma_list,
        ["localhost", "127.0.0.1", "[::1]"],
        "Host headers the gateway answers; add every host your routes use (or `*`).",
    ),
    Setting(
        "GATEWAY_VAR_DIR",
        text,
        str(BASE_DIR / "var"),
        "Where the SQLite database, static files and `make run`'s files live.",
    ),
    Setting(
        "DATABASE_URL",
        text,
        lambda v: f"sqlite:///{Path(v['GATEWAY_VAR_DIR']) / 'gateway.sqlite3'}",
        "Configuration store; `postgres://user:pass@host/db` in production.",
    ),
    Setting(
        "GATEWAY_DB_TIMEOUT",
        number(0.1, 600),
        5.0,
        "Seconds a database call may take: connect and statement timeout and TCP keepalive (PostgreSQL), busy "
        "timeout (SQLite); the configuration watcher gives up on a call after this long and reconnects.",
    ),
    Setting(
        "REDIS_URL",
        text,
        "",
        "Shared state: one Redis or a Redis Cluster node (`redis://`, `rediss://`, `unix://`; cluster seeds "
        "`redis://h1:7000,h2:7001`), a Sentinel-watched primary (`redis+sentinel://s1:26379,s2:26379/<service>`), "
        "or `embedded://`.",
    ),
    Setting(
        "GATEWAY_ALLOW_EMBEDDED_STORE",
        boolean,
        False,
        "Allow the embedded store with `DEBUG` off (single process only).",
    ),
    Setting("GATEWAY_LISTEN", listen, ("127.0.0.1", 8000), "Listen address of `make run` / gunicorn."),
    Setting("GATEWAY_WORKERS", integer(1, 256), _cpu_count, "gunicorn worker processes (1 with the embedded store)."),
    Setting("GATEWAY_WORKER_CONNECTIONS", integer(1), 1000, "Requests in flight per worker (gevent)."),
    Setting("GATEWAY_KEEPALIVE", integer(0), 5, "Seconds an idle client keep-alive connection stays open."),
    Setting(
        "GATEWAY_WORKER_TIMEOUT", integer(1), 30, "Seconds before gunicorn restarts a worker that stopped answering."
    ),
    Setting("GATEWAY_GRACEFUL_TIMEOUT", integer(0), 30, "Seconds a stopping worker gets to finish its requests."),
    Setting(
        "GATEWAY_TRUSTED_PROXIES",
        networks,
        (),
        "Comma-separated addresses/CIDRs of proxies in front of the gateway whose `X-Forwarded-For`/`-Proto`/"
        "`-Host` are believed.",
    ),
    Setting(
        "GATEWAY_ADMIN_ALLOWED_NETWORKS",
        networks,
        networks("GATEWAY_ADMIN_ALLOWED_NETWORKS", "127.0.0.0/8,::1"),
        "Client networks that may reach the admin and `/_gateway/api`.",
    ),
    Setting(
        "GATEWAY_ADMIN_HOST",
        host_name,
        None,
        "Serve the admin and `/_gateway/api` only on this host name, and no route there (recommended in production).",
    ),
    Setting(
        "GATEWAY_ADMIN_LISTEN",
        listen,
        None,
        "A second listen address for the admin and `/_gateway/api` alone (no route is served there).",
    ),
    Setting(
        "GATEWAY_ADMIN_PATH",
        admin_path,
        "/admin",
        "Where the admin lives (e.g. `/_gateway/admin` to free `/admin` for routes).",
    ),
    Setting(
        "GATEWAY_MAX_BODY_BYTES",
        integer(0),
        10 * 1024 * 1024,
        "Default request body limit (413 above it); 0 = none. Routes can override.",
    ),
    Setting(
        "GATEWAY_RETRY_BUFFER_BYTES",
        integer(0, 64 * 1024 * 1024),
        1024 * 1024,
        "Request bodies up to this size are buffered so they can be retried.",
    ),
    Setting(
        "GATEWAY_CLIENT_BODY_TIMEOUT",
        number(0.1, 3600),
        20.0,
        "Seconds a request body may stall, and after which it must keep the minimum rate; then 408.",
    ),
    Setting(
        "GATEWAY_CLIENT_BODY_MIN_RATE",
        number(0),
        500.0,
        "Bytes per second a request body must average once it has taken the timeout above; 0 = no minimum.",
    ),
    Setting(
        "GATEWAY_SEND_TIMEOUT",
        number(0.1, 86400),
        60.0,
        "Seconds a response write may wait for the client to take bytes before the gateway closes the connection "
        "(nginx's send_timeout); a client that stops reading holds no worker slot or upstream connection for longer.",
    ),
    Setting(
        "GATEWAY_UPGRADE_IDLE_TIMEOUT",
        number(0.1, 86400),
        300.0,
        "Seconds an upgraded connection (WebSocket, ...) may pass no bytes either way before the gateway closes it.",
    ),
    Setting(
        "GATEWAY_UPGRADE_MAX_CONNECTIONS",
        integer(1),
        lambda v: max(1, v["GATEWAY_WORKER_CONNECTIONS"] // 2),
        "Upgraded connections a worker holds at once; further upgrade requests get 503.",
    ),
    Setting(
        "GATEWAY_RUN_DIR",
        text,
        "",
        "Directory the workers of one instance share: the active health checks' leader lock, their results and each "
        "worker's target health.",
        tuning=True,
    ),
    Setting(
        "GATEWAY_POOL_MAXSIZE",
        integer(1),
        lambda v: v["GATEWAY_WORKER_CONNECTIONS"],
        "Keep-alive connections kept per upstream per worker.",
    ),
    Setting(
        "GATEWAY_POOL_NUM_POOLS", integer(1), 100, "Upstream hosts a worker keeps connection pools for.", tuning=True
    ),
    Setting(
        "GATEWAY_CONFIG_POLL_INTERVAL",
        number(0.01, 60),
        0.25,
        "Seconds between a worker's checks for configuration changes.",
    ),
    Setting(
        "GATEWAY_CONFIG_DB_CHECK_INTERVAL",
        number(0.1, 3600),
        5.0,
        "Seconds between a worker's checks of the database itself (a lost Redis message is noticed then).",
        tuning=True,
    ),
    Setting(
        "GATEWAY_CONFIG_WATCH",
        boolean,
        True,
        "Follow configuration changes in a background thread (off only for in-process tests).",
        tuning=True,
    ),
    Setting(
        "GATEWAY_REDIS_PREFIX", redis_prefix, "gw", "Prefix of every Redis key; gateways sharing a prefix act as one."
    ),
    Setting("GATEWAY_REDIS_CONNECT_TIMEOUT", number(0.001, 10), 0.05, "Hot-path Redis connect timeout, seconds."),
    Setting(
        "GATEWAY_REDIS_SOCKET_TIMEOUT",
        number(0.001, 10),
        0.1,
        "Hot-path Redis command timeout, seconds: how long Redis may stay silent with commands outstanding before "
        "the failure modes apply (and what a hung Redis costs a request).",
    ),
    Setting(
        "GATEWAY_REDIS_MAX_CONNECTIONS",
        integer(1, 10_000),
        64,
        "Short-timeout Redis connections per worker for the configuration watcher and `/readyz`.",
        tuning=True,
    ),
    Setting(
        "GATEWAY_REDIS_PIPELINE_WINDOW",
        integer(1, 100_000),
        64,
        "Hot-path commands a worker has written and not yet had answered, per Redis node; more wait in the worker.",
        tuning=True,
    ),
    Setting(
        "GATEWAY_REDIS_OPS_TIMEOUT", number(0.01, 60), 2.0, "Redis timeout for admin actions and commands, seconds."
    ),
    Setting(
        "GATEWAY_REDIS_PAGE_TIMEOUT",
        number(0.01, 60),
        0.25,
        "Redis timeout for pages that only read (live admin views, the demo switch); then they say it is down.",
    ),
    Setting(
        "GATEWAY_REDIS_OPS_MAX_CONNECTIONS",
        integer(1, 1000),
        16,
        "Redis connections per process for admin pages, commands and background work.",
        tuning=True,
    ),
    Setting(
        "GATEWAY_BREAKER_SYNC_INTERVAL",
        number(0.05, 60),
        1.0,
        "Seconds between a worker's flushes of counted successes and re-reads of the breakers in use.",
        tuning=True,
    ),
    Setting(
        "GATEWAY_BREAKER_FALLBACK_SECONDS",
        number(0.05, 60),
        1.0,
        "After a breaker's Redis call fails, seconds a worker decides alone before trying Redis again.",
        tuning=True,
    ),
    Setting(
        "GATEWAY_BREAKER_ACTIVE_SECONDS",
        number(1, 86400),
        60.0,
        "Breakers used within this many seconds are re-read by the background sync.",
        tuning=True,
    ),
    Setting(
        "GATEWAY_DEMO",
        boolean,
        lambda v: v["DEBUG"],
        "Serve the demo upstream at `/_demo/` (its failure switch included).",
    ),
    Setting("GATEWAY_VIA", text, "gateway", "Pseudonym in the `Via` header."),
    Setting("GATEWAY_API_KEY_HEADER", header_name, "X-API-Key", "Header clients send their API key in."),
    Setting(
        "GATEWAY_CONSUMER_HEADER", header_name, "X-Consumer-Name", "Header telling the upstream the consumer's name."
    ),
    Setting("GATEWAY_SERVER_TIMING", boolean, True, "Send the `Server-Timing` header."),
    Setting("GATEWAY_LOG_QUERY", boolean, False, "Log query strings in the access log."),
    Setting(
        "GATEWAY_LOG_FORMAT",
        choice("json", "console"),
        lambda v: "console" if v["DEBUG"] else "json",
        "Log line format: `json` or `console`.",
    ),
    Setting(
        "GATEWAY_LOG_LEVEL", choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", upper=True), "INFO", "Log level."
    ),
    Setting(
        "GATEWAY_METRICS_ALLOWED_NETWORKS",
        networks,
        networks("GATEWAY_METRICS_ALLOWED_NETWORKS", "127.0.0.0/8,::1"),
        "Clients that may read `/metrics`.",
    ),
    Setting(
        "GATEWAY_METRICS_TOKEN", metrics_token, "", "Bearer token (16+ characters) that opens `/metrics` to any client."
    ),
    Setting(
        "GATEWAY_PROMETHEUS_URL",
        http_url,
        "",
        "Prometheus server that scrapes every instance: the admin's status page shows the fleet's figures from it. "
        "Empty: this instance's own.",
    ),
    Setting(
        "GATEWAY_METRICS_DIR",
        text,
        "",
        "prometheus_client's multiprocess directory (emptied at start).",
    ),
    Setting(
        "GATEWAY_RATELIMIT_IPV6_PREFIX", integer(1, 128), 64, "IPv6 network size counted as one client by rate limits."
    ),
    Setting(
        "GATEWAY_RATELIMIT_IPV4_PREFIX", integer(1, 32), 32, "IPv4 network size counted as one client by rate limits."
    ),
    Setting(
        "GATEWAY_SECURE_COOKIES",
        boolean,
        lambda v: not v["DEBUG"],
        "Admin session and CSRF cookies only over HTTPS.",
    ),
    Setting(
        "CSRF_TRUSTED_ORIGINS",
        comma_list,
        [],
        "Origins allowed to post admin forms when served behind another host name.",
    ),
)
_BY_ENV = {s.env: s for s in SETTINGS}


RUN_FILE = "make-run.env"


def run_file(environ: Mapping[str, str]) -> Path:
    """Where `make run` records its settings: in GATEWAY_VAR_DIR."""
    return Path(environ.get("GATEWAY_VAR_DIR") or BASE_DIR / "var") / RUN_FILE


def read_run_file(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings `make run` recorded, for a development shell (no SECRET_KEY, no DEBUG); else nothing."""
    path = run_file(environ)
    if "SECRET_KEY" in environ or "DEBUG" in environ or not path.is_file():
        return {}
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or name not in _BY_ENV:
            raise ImproperlyConfigured(f"{name or line}: line {number} of {path} is not a setting of this gateway")
        values[name] = value
    return values


def write_run_file(environ: Mapping[str, str] | None = None, **resolved: str) -> Path:
    """Record the settings of `make run` (every declared variable it was given, plus `resolved` values such as
    the Redis it chose) for manage.py in other shells."""
    environ = os.environ if environ is None else environ
    values = {s.env: environ[s.env] for s in SETTINGS if s.env in environ}
    values.update(resolved)
    path = run_file(environ)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Written by `make run` at every start: the settings of the gateway it runs. manage.py and gunicorn read",
        "# this file when their environment sets neither SECRET_KEY nor DEBUG; the environment wins over it.",
        *(f"{name}={value}" for name, value in values.items()),
    ]
    temporary = path.with_suffix(".tmp")
    temporary.write_text("\n".join(lines) + "\n")
    os.chmod(temporary, 0o600)
    temporary.replace(path)
    return path


def read(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every setting's value from `environ` (default: os.environ, over `make run`'s file when that applies), by
    variable name; raise ImproperlyConfigured naming the variable on any bad one."""
    if environ is None:
        environ = {**read_run_file(os.environ), **os.environ}
    unknown = sorted(n for n in environ if n.startswith("GATEWAY_") and n not in _BY_ENV)
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, _BY_ENV, n=1)
        hint = f"; did you mean {close[0]}?" if close else "; README.md lists every setting"
        raise ImproperlyConfigured(f"{name}: not a setting of this gateway{hint}")
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = environ.get(setting.env)
        raw = None if raw is None else raw.strip()
        empty_means_default = setting.parse is not comma_list and setting.parse is not networks
        if raw is None or (raw == "" and empty_means_default):
            values[setting.env] = setting.default_for(values)
        else:
            values[setting.env] = setting.parse(setting.env, raw)
    admin_listen = values["GATEWAY_ADMIN_LISTEN"]
    if admin_listen is not None and admin_listen[1] == values["GATEWAY_LISTEN"][1]:
        raise ImproperlyConfigured("GATEWAY_ADMIN_LISTEN: must use another port than GATEWAY_LISTEN")
    if not values["SECRET_KEY"] and not values["DEBUG"]:
        raise ImproperlyConfigured("SECRET_KEY: required when DEBUG is off (use a long random string)")
    return values


def exit_on_error(exc: ImproperlyConfigured) -> None:
    """How manage.py and gunicorn stop on a configuration error: one line naming the variable, no traceback."""
    sys.exit(f"configuration error: {exc}")


if __name__ == "__main__":
    # `make run` records its settings, with the Redis it chose (a local one that answers, or the embedded store).
    from gateway_project.redis_url import resolve_redis_url

    try:
        chosen = resolve_redis_url(read()["REDIS_URL"])
    except ImproperlyConfigured as exc:
        exit_on_error(exc)
    print(f"Settings of this run saved in {write_run_file(REDIS_URL=chosen)}: manage.py in any shell uses them.")
