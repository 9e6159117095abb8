"""The audit trail: every change to configuration or live state, whoever makes it, in one model (AuditEntry).

Service functions take an `Actor` (keyword-only) and call `record()` in the transaction of the change; the
admin, the API and the commands build the actor from what they know (the request's user or token and client
address; the operating-system user for a command). Values are recorded in the configuration file's terms
(names, not ids), as `{field: [old, new]}`.
"""

from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.db import models

from gateway_project.models import AuditEntry

ADMIN, API, CLI = "admin", "api", "cli"


@dataclass(frozen=True)
class Actor:
    """Who makes a change, and from where."""

    name: str  # user:<name>, token:<prefix> (<user>), cli:<os user>
    via: str  # ADMIN, API or CLI
    address: str = ""

    def __str__(self) -> str:
        return self.name

    @classmethod
    def cli(cls) -> Actor:
        """A management command: the operating-system user on this host."""
        return cls(f"cli:{getpass.getuser()}", CLI, socket.gethostname())

    @classmethod
    def of_request(cls, request, via: str) -> Actor:
        """The user of an admin or API request, or the token it authenticated with, and the client's address."""
        from gateway_project.models import ApiToken

        token = getattr(request, "auth", None)
        user = request.user.get_username()
        name = f"token:{token.prefix} ({user})" if isinstance(token, ApiToken) else f"user:{user}"
        context = getattr(request, "gateway", None)
        return cls(name, via, context.client_ip if context is not None else request.META.get("REMOTE_ADDR", ""))


def record(
    *, actor: Actor, action: str, object_type: str, object_name: str, changes: dict | None = None, note: str = ""
) -> AuditEntry:
    """Write one audit entry (call it inside the transaction that makes the change)."""
    return AuditEntry.objects.create(
        actor=actor.name[:150],
        via=actor.via,
        address=actor.address[:255],
        action=action,
        object_type=object_type,
        object_name=str(object_name)[:150],
        changes=changes or {},
        note=note[:300],
    )


def plain(value: Any) -> Any:
    """A value as JSON holds it."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, models.Model):
        return str(value)
    return value


def values_of(obj: models.Model) -> dict[str, Any]:
    """The object's stored values: every concrete field but its id and timestamps kept by Django; related
    objects by their name."""
    values = {}
    for field in obj._meta.concrete_fields:
        if field.primary_key and not field.is_relation:
            continue
        if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            continue
        if field.is_relation:
            related_id = getattr(obj, field.attname)
            values[field.name] = None if related_id is None else str(getattr(obj, field.name))
        else:
            values[field.name] = plain(getattr(obj, field.attname))
    return values


def difference(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list]:
    """{field: [old, new]} for every field whose value differs (a missing side is None)."""
    return {key: [old.get(key), new.get(key)] for key in {**old, **new} if old.get(key) != new.get(key)}
