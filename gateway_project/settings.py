"""Settings, read once from the environment. README.md lists every variable.

A bad value stops start-up with ImproperlyConfigured naming the variable; nothing is checked lazily.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from gateway_project import conf, metrics, redis_url
from gateway_project.logging import build_logging_config

_env = conf.read()
metrics.keep_process_id_in_memory()
# Every GATEWAY_* setting under its own name (settings.GATEWAY_REDIS_PREFIX, ...): conf.py declares them all.
globals().update({name: value for name, value in _env.items() if name.startswith("GATEWAY_")})

BASE_DIR = conf.BASE_DIR
VAR_DIR = Path(_env["GATEWAY_VAR_DIR"])

DEBUG = _env["DEBUG"]
# The development key is only reachable with DEBUG on: conf.read() refuses DEBUG off without SECRET_KEY.
SECRET_KEY = _env["SECRET_KEY"] or "insecure-development-key-do-not-use-in-production"
ALLOWED_HOSTS = _env["ALLOWED_HOSTS"]
CSRF_TRUSTED_ORIGINS = _env["CSRF_TRUSTED_ORIGINS"]

# --- Database ------------------------------------------------------------------------------------------------

try:
    _database = dj_database_url.parse(_env["DATABASE_URL"], conn_max_age=0)
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL: {exc}") from exc
# Every database call is bounded (GATEWAY_DB_TIMEOUT): a database that hangs must not hold a worker's
# configuration watcher, or /readyz, for longer. PostgreSQL: connecting, each statement, and a connection whose
# peer went away without a word (TCP keepalive; tcp_user_timeout for data sent and never acknowledged).
_db_timeout = _env["GATEWAY_DB_TIMEOUT"]
if _database["ENGINE"] == "django.db.backends.sqlite3":
    Path(_database["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    _database["OPTIONS"] = {
        # WAL lets gateway workers read the config while the admin writes it.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        "transaction_mode": "IMMEDIATE",
        "timeout": _db_timeout,
    }
elif _database["ENGINE"] == "django.db.backends.postgresql":
    _seconds = max(1, round(_db_timeout))
    _database.setdefault("OPTIONS", {})
    for _name, _value in {
        "connect_timeout": _seconds,
        "keepalives": 1,
        "keepalives_idle": _seconds,
        "keepalives_interval": max(1, _seconds // 3),
        "keepalives_count": 3,
        "tcp_user_timeout": 2 * _seconds * 1000,
        "options": f"-c statement_timeout={int(_db_timeout * 1000)}",
    }.items():
        _database["OPTIONS"].setdefault(_name, _value)
    # A configuration load reads its rows with QuerySet.iterator() (runtime.in_turns) to build them a chunk at a
    # time. Client-side cursors keep that one query, as before, and work behind PgBouncer's transaction pooling.
    _database["DISABLE_SERVER_SIDE_CURSORS"] = True
# django-prometheus's wrappers count queries, errors and their time (the admin's and the config loads'; a
# proxied request makes none).
_database["ENGINE"] = _database["ENGINE"].replace("django.db.backends.", "django_prometheus.db.backends.")
DATABASES = {"default": _database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis ---------------------------------------------------------------------------------------------------

GATEWAY_REDIS_URL = redis_url.resolve_redis_url(_env["REDIS_URL"])
GATEWAY_EMBEDDED_STORE = redis_url.is_embedded(GATEWAY_REDIS_URL)
if GATEWAY_EMBEDDED_STORE and not DEBUG and not _env["GATEWAY_ALLOW_EMBEDDED_STORE"]:
    raise ImproperlyConfigured(
        "REDIS_URL: no Redis is configured or answering on 127.0.0.1:6379, and the embedded store is refused "
        "with DEBUG off; set REDIS_URL, or GATEWAY_ALLOW_EMBEDDED_STORE=1 for a single-process gateway"
    )

# --- Gateway -------------------------------------------------------------------------------------------------

# Paths the gateway serves itself; no route may claim them and they are never proxied. Everything else the
# gateway owns lives under /_gateway/ (static files for the admin, the API).
_admin = _env["GATEWAY_ADMIN_PATH"]
GATEWAY_RESERVED_PREFIXES = ("/healthz", "/readyz", "/metrics", "/_gateway", "/_demo", _admin)
GATEWAY_ADMIN_PREFIXES = (_admin, "/_gateway/api")

# --- Django --------------------------------------------------------------------------------------------------

INSTALLED_APPS = [
    "gateway_project.admin_site.GatewayAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "gateway_project.apps.GatewayConfig",
    "proxy",
    "limits",
    "breakers",
]

# The gateway steps run first. For a proxied request, proxy.middleware.RouteMiddleware hands the request to
# its own short pipeline (GATEWAY_PIPELINE, then the proxy view) and the Django middleware below it never
# runs: no sessions, CSRF or clickjacking headers are added to upstream responses.
MIDDLEWARE = [
    "gateway_project.middleware.GatewayMiddleware",
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
SESSION_COOKIE_SECURE = _env["GATEWAY_SECURE_COOKIES"]
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
CSRF_COOKIE_HTTPONLY = True
# The admin's cookies share an origin with every route unless GATEWAY_ADMIN_HOST separates them, so they carry
# names no upstream uses (the proxy strips them from forwarded requests and refuses upstream Set-Cookies for
# them: proxy/cookies.py). Over HTTPS the __Host- prefix makes browsers refuse any version of them that is not
# Secure, host-only and Path=/ (a sibling subdomain cannot plant one); the prefix requires Path=/. Over plain
# HTTP their path is the narrowest one the browser still sends to both the admin and the management API (which
# a logged-in browser uses with the same session): the admin path's and /_gateway/api's common ancestor, so
# /_gateway with GATEWAY_ADMIN_PATH=/_gateway/admin, and / with the default /admin.
if SESSION_COOKIE_SECURE:
    SESSION_COOKIE_NAME, CSRF_COOKIE_NAME = "__Host-gateway-session", "__Host-gateway-csrf"
else:
    SESSION_COOKIE_NAME, CSRF_COOKIE_NAME = "gateway-session", "gateway-csrf"
    SESSION_COOKIE_PATH = CSRF_COOKIE_PATH = os.path.commonpath([_admin, "/_gateway/api"])
# Admin messages live in the session, not in a cookie of their own.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
X_FRAME_OPTIONS = "DENY"

# --- The management API (gateway_project/api/) -------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "gateway_project.api.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",  # the admin's login, with CSRF
    ],
    "DEFAULT_PERMISSION_CLASSES": ["gateway_project.api.permissions.OperatorModelPermissions"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "gateway_project.api.schema.GatewayAutoSchema",
    "EXCEPTION_HANDLER": "gateway_project.api.errors.handle",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Gateway management API",
    "DESCRIPTION": "Upstreams, routes, rate limits, consumers and keys, breakers, the whole configuration, the "
    "audit trail. Authenticate with `Authorization: Bearer <token>` (a staff user's token: `manage.py api_token "
    "create USER`) or the admin's session. Objects are named as in the configuration file (docs/configuration.md).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": "/_gateway/api/v1",
    # Swagger UI from our own static files: the docs page works without reaching a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "BreakerModeEnum": "breakers.policy.MODES",
        "RateLimitModeEnum": "limits.models.RateLimitPolicy.Mode",
    },
}

LOGGING_CONFIG = "gateway_project.logging.configure"
LOGGING = build_logging_config(fmt=_env["GATEWAY_LOG_FORMAT"], level=_env["GATEWAY_LOG_LEVEL"])
