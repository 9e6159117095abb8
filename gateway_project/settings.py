"""Settings, read once from the environment. README.md lists every variable.

A bad value stops start-up with ImproperlyConfigured naming the variable; nothing is checked lazily.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from gateway_project import redis_url
from gateway_project.env import (
    env_bool,
    env_float,
    env_host,
    env_int,
    env_list,
    env_listen,
    env_networks,
    env_str,
)
from gateway_project.logging import build_logging_config

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("GATEWAY_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY: required when DEBUG is off (use a long random string)")
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"  # noqa: S105 (DEBUG only)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])

# --- Database ------------------------------------------------------------------------------------------------

_database_url = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'gateway.sqlite3'}")
try:
    _database = dj_database_url.parse(_database_url, conn_max_age=0)
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL: {exc}") from exc
if _database["ENGINE"] == "django.db.backends.sqlite3":
    Path(_database["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    _database["OPTIONS"] = {
        # WAL lets gateway workers read the config while the admin writes it.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        "transaction_mode": "IMMEDIATE",
        "timeout": 10,
    }
    _test_name = env_str("GATEWAY_TEST_SQLITE")
    if _test_name:
        _database["TEST"] = {"NAME": _test_name}
elif _database["ENGINE"] == "django.db.backends.postgresql":
    _database.setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
# django-prometheus's wrappers count queries, errors and their time (the admin's and the config loads'; a
# proxied request makes none).
_database["ENGINE"] = _database["ENGINE"].replace("django.db.backends.", "django_prometheus.db.backends.")
DATABASES = {"default": _database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis ---------------------------------------------------------------------------------------------------

GATEWAY_REDIS_URL = redis_url.resolve_redis_url(env_str("REDIS_URL"))
GATEWAY_EMBEDDED_STORE = redis_url.is_embedded(GATEWAY_REDIS_URL)
if GATEWAY_EMBEDDED_STORE and not DEBUG and not env_bool("GATEWAY_ALLOW_EMBEDDED_STORE", False):
    raise ImproperlyConfigured(
        "REDIS_URL: no Redis is configured or answering on 127.0.0.1:6379, and the embedded store is refused "
        "with DEBUG off; set REDIS_URL, or GATEWAY_ALLOW_EMBEDDED_STORE=1 for a single-process gateway"
    )
GATEWAY_REDIS_PREFIX = env_str("GATEWAY_REDIS_PREFIX", "gw")
if not GATEWAY_REDIS_PREFIX.replace("-", "").replace("_", "").isalnum():
    raise ImproperlyConfigured(f"GATEWAY_REDIS_PREFIX: letters, digits, '-' and '_' only, got {GATEWAY_REDIS_PREFIX!r}")
GATEWAY_REDIS_CONNECT_TIMEOUT = env_float("GATEWAY_REDIS_CONNECT_TIMEOUT", 0.05, minimum=0.001, maximum=10)
GATEWAY_REDIS_SOCKET_TIMEOUT = env_float("GATEWAY_REDIS_SOCKET_TIMEOUT", 0.05, minimum=0.001, maximum=10)
GATEWAY_REDIS_OPS_TIMEOUT = env_float("GATEWAY_REDIS_OPS_TIMEOUT", 2.0, minimum=0.01, maximum=60)
# Pages that read Redis (the admin's live views, the demo's failure switch) wait this long, then say it is down.
GATEWAY_REDIS_PAGE_TIMEOUT = env_float("GATEWAY_REDIS_PAGE_TIMEOUT", 0.25, minimum=0.01, maximum=60)
GATEWAY_REDIS_MAX_CONNECTIONS = env_int("GATEWAY_REDIS_MAX_CONNECTIONS", 64, minimum=1, maximum=10_000)

# --- Gateway -------------------------------------------------------------------------------------------------

GATEWAY_LISTEN = env_listen("GATEWAY_LISTEN", "127.0.0.1:8000")
GATEWAY_TRUSTED_PROXIES = env_networks("GATEWAY_TRUSTED_PROXIES", "")
GATEWAY_ADMIN_ALLOWED_NETWORKS = env_networks("GATEWAY_ADMIN_ALLOWED_NETWORKS", "127.0.0.0/8,::1")
GATEWAY_MAX_BODY_BYTES = env_int("GATEWAY_MAX_BODY_BYTES", 10 * 1024 * 1024, minimum=0)
GATEWAY_RETRY_BUFFER_BYTES = env_int("GATEWAY_RETRY_BUFFER_BYTES", 1024 * 1024, minimum=0, maximum=64 * 1024 * 1024)
# A request body that stops for this long, or (after this long) averages under the minimum rate, gets 408.
GATEWAY_CLIENT_BODY_TIMEOUT = env_float("GATEWAY_CLIENT_BODY_TIMEOUT", 20.0, minimum=0.1, maximum=3600)
GATEWAY_CLIENT_BODY_MIN_RATE = env_float("GATEWAY_CLIENT_BODY_MIN_RATE", 500.0, minimum=0)
GATEWAY_POOL_MAXSIZE = env_int(
    "GATEWAY_POOL_MAXSIZE", env_int("GATEWAY_WORKER_CONNECTIONS", 1000, minimum=1), minimum=1
)
GATEWAY_POOL_NUM_POOLS = env_int("GATEWAY_POOL_NUM_POOLS", 100, minimum=1)
GATEWAY_CONFIG_POLL_INTERVAL = env_float("GATEWAY_CONFIG_POLL_INTERVAL", 0.25, minimum=0.01, maximum=60)
GATEWAY_CONFIG_WATCH = env_bool("GATEWAY_CONFIG_WATCH", True)
GATEWAY_VIA = env_str("GATEWAY_VIA", "gateway")
GATEWAY_API_KEY_HEADER = env_str("GATEWAY_API_KEY_HEADER", "X-API-Key")
GATEWAY_CONSUMER_HEADER = env_str("GATEWAY_CONSUMER_HEADER", "X-Consumer-Name")
for _name, _value in (
    ("GATEWAY_API_KEY_HEADER", GATEWAY_API_KEY_HEADER),
    ("GATEWAY_CONSUMER_HEADER", GATEWAY_CONSUMER_HEADER),
):
    if not _value.replace("-", "").isalnum():
        raise ImproperlyConfigured(f"{_name}: a header name of letters, digits and '-', got {_value!r}")
GATEWAY_SERVER_TIMING = env_bool("GATEWAY_SERVER_TIMING", True)
GATEWAY_LOG_QUERY = env_bool("GATEWAY_LOG_QUERY", False)
GATEWAY_METRICS_ALLOWED_NETWORKS = env_networks("GATEWAY_METRICS_ALLOWED_NETWORKS", "127.0.0.0/8,::1")
GATEWAY_METRICS_TOKEN = env_str("GATEWAY_METRICS_TOKEN", "")
if GATEWAY_METRICS_TOKEN and len(GATEWAY_METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("GATEWAY_METRICS_TOKEN: use at least 16 characters")
# IPv6 clients are counted per network of this size by rate limits (a /64 is usually one subscriber).
GATEWAY_RATELIMIT_IPV6_PREFIX = env_int("GATEWAY_RATELIMIT_IPV6_PREFIX", 64, minimum=1, maximum=128)
GATEWAY_RATELIMIT_IPV4_PREFIX = env_int("GATEWAY_RATELIMIT_IPV4_PREFIX", 32, minimum=1, maximum=32)
GATEWAY_DEMO = env_bool("GATEWAY_DEMO", DEBUG)
GATEWAY_ADMIN_PATH = "/" + env_str("GATEWAY_ADMIN_PATH", "/admin").strip("/")
if GATEWAY_ADMIN_PATH == "/" or not GATEWAY_ADMIN_PATH.replace("/", "").replace("_", "").replace("-", "").isalnum():
    raise ImproperlyConfigured(
        f"GATEWAY_ADMIN_PATH: a path such as /admin or /_gateway/admin, got {GATEWAY_ADMIN_PATH!r}"
    )
# Paths the gateway serves itself; no route may claim them and they are never proxied. Everything else the
# gateway owns lives under /_gateway/ (static files for the admin, the API).
GATEWAY_RESERVED_PREFIXES = ("/healthz", "/readyz", "/metrics", "/_gateway", "/_demo", GATEWAY_ADMIN_PATH)
GATEWAY_ADMIN_PREFIXES = (GATEWAY_ADMIN_PATH, "/_gateway/api")
# The production recommendation: the admin (and the management API) on a host name and/or a listen address of
# its own. When set, the admin answers only there and no route is served there (proxy.middleware).
GATEWAY_ADMIN_HOST = env_host("GATEWAY_ADMIN_HOST")
GATEWAY_ADMIN_LISTEN = env_listen("GATEWAY_ADMIN_LISTEN", None)
if GATEWAY_ADMIN_LISTEN is not None and GATEWAY_ADMIN_LISTEN[1] == GATEWAY_LISTEN[1]:
    raise ImproperlyConfigured("GATEWAY_ADMIN_LISTEN: must use another port than GATEWAY_LISTEN")

# --- Django --------------------------------------------------------------------------------------------------

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "proxy",
    "limits",
    "breakers",
]

# The gateway steps run first. For a proxied request, proxy.middleware.RouteMiddleware hands the request to
# its own short pipeline (GATEWAY_PIPELINE, then the proxy view) and the Django middleware below it never
# runs: no sessions, CSRF or clickjacking headers are added to upstream responses.
MIDDLEWARE = [
    "gateway_project.request_id.RequestIdMiddleware",
    "proxy.middleware.RouteMiddleware",
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "gateway_project.django_metrics.PrometheusAfterMiddleware",
]
GATEWAY_PIPELINE = [
    "limits.middleware.ApiKeyMiddleware",
    "limits.middleware.RateLimitMiddleware",
    "breakers.middleware.BreakerMiddleware",
]

ROOT_URLCONF = "gateway_project.urls"
WSGI_APPLICATION = "gateway_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/_gateway/static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = DEBUG

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("GATEWAY_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
CSRF_COOKIE_HTTPONLY = True
# The admin's cookies share an origin with every route unless GATEWAY_ADMIN_HOST separates them, so they carry
# names no upstream uses (the proxy strips them from forwarded requests and refuses upstream Set-Cookies for
# them: proxy/cookies.py). Over HTTPS the __Host- prefix makes browsers refuse any version of them that is not
# Secure, host-only and Path=/ (a sibling subdomain cannot plant one); the prefix requires Path=/, and the
# admin path scopes them over plain HTTP instead.
if SESSION_COOKIE_SECURE:
    SESSION_COOKIE_NAME, CSRF_COOKIE_NAME = "__Host-gateway-session", "__Host-gateway-csrf"
else:
    SESSION_COOKIE_NAME, CSRF_COOKIE_NAME = "gateway-session", "gateway-csrf"
    SESSION_COOKIE_PATH = CSRF_COOKIE_PATH = GATEWAY_ADMIN_PATH
# Admin messages live in the session, not in a cookie of their own.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
X_FRAME_OPTIONS = "DENY"

LOGGING_CONFIG = "gateway_project.logging.configure"
LOGGING = build_logging_config(
    debug=DEBUG,
    fmt=env_str("GATEWAY_LOG_FORMAT", "console" if DEBUG else "json"),
    level=env_str("GATEWAY_LOG_LEVEL", "INFO"),
)
