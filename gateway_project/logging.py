"""One log format for Django, gunicorn and the gateway.

Everything goes through the standard library's logging into structlog's ProcessorFormatter, so a line from
Django's request handler, from gunicorn's error log and from the gateway's access log look alike: one JSON
object per line in production, readable key=value lines with DEBUG on. Every line logged while a request is
handled carries its request_id (bound in a context variable by the request-ID middleware).
"""

from __future__ import annotations

import logging
import logging.config
from typing import Any

import structlog

FORMATS = ("json", "console")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_SHARED = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
]


def build_logging_config(*, debug: bool, fmt: str, level: str) -> dict[str, Any]:
    """The `LOGGING` setting: a dictConfig plus the two gateway options, validated here."""
    from django.core.exceptions import ImproperlyConfigured

    if fmt not in FORMATS:
        raise ImproperlyConfigured(f"GATEWAY_LOG_FORMAT: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    level = level.upper()
    if level not in LEVELS:
        raise ImproperlyConfigured(f"GATEWAY_LOG_LEVEL: expected one of {', '.join(LEVELS)}, got {level!r}")
    if fmt == "json":
        renderer: Any = structlog.processors.JSONRenderer()
        final = [structlog.processors.dict_tracebacks, renderer]
    else:
        final = [structlog.dev.ConsoleRenderer(colors=False)]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "gateway": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
                "foreign_pre_chain": [*_SHARED, structlog.stdlib.ExtraAdder()],
            },
        },
        "filters": {
            "exceptions_only": {"()": "gateway_project.logging.ExceptionsOnly"},
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "gateway", "stream": "ext://sys.stderr"},
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            "django": {"level": level, "handlers": [], "propagate": True},
            "django.server": {"level": "WARNING"},
            # Django logs every 4xx/5xx response here; for a gateway those are upstream answers already in the
            # access log. Keep only real exceptions.
            "django.request": {"level": "WARNING", "filters": ["exceptions_only"]},
            # Our access log replaces gunicorn's; its error log joins the shared format.
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
            "urllib3": {"level": "WARNING"},
        },
    }


class ExceptionsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is not None


def configure(config: dict[str, Any]) -> None:
    """LOGGING_CONFIG hook: apply the dictConfig and point structlog at the same handlers."""
    logging.config.dictConfig(config)
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
