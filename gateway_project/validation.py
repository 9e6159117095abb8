"""Validation of values every app accepts: object names and lists of HTTP status codes.

Shared by model fields, admin forms, the configuration file and the API, so every way in applies one rule.
"""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_STATUS_RE = re.compile(r"[0-9]{3}")


def validate_name(value: str) -> None:
    if not NAME_RE.match(value or ""):
        raise ValidationError(
            "Use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit.", code="invalid_name"
        )


def parse_statuses(value: str) -> frozenset[int]:
    """A comma-separated list of HTTP status codes in 400-599."""
    statuses = set()
    for token in (t.strip() for t in (value or "").split(",")):
        if not token:
            continue
        if not _STATUS_RE.fullmatch(token) or not 400 <= int(token) <= 599:
            raise ValidationError(f"{token!r} is not an HTTP status code between 400 and 599.", code="invalid_status")
        statuses.add(int(token))
    return frozenset(statuses)


def normalize_statuses(value: str) -> str:
    return ",".join(str(s) for s in sorted(parse_statuses(value)))


def status_list(value: str) -> list[int]:
    """A stored (normalized) status list as the configuration file writes it."""
    return sorted(parse_statuses(value))
