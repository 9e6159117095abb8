"""Saving and deleting configuration objects, for every way in: the admin, the API and the commands.

Each app's services.py wraps these for its models. One call validates the object as the admin and the import
do (`full_clean`: field validators and the model's `normalize()`/`clean()`), refuses the write when the object
changed since the caller read it (its ETag, `if_match`), saves it and records the change in the audit trail,
all in one transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

from django.db import models, router, transaction
from django.db.models.deletion import Collector

from gateway_project import audit
from gateway_project.audit import Actor


class Conflict(Exception):
    """The object changed (or was deleted) since the caller read it: its ETag no longer matches."""


def etag(obj: models.Model) -> str:
    """A strong validator of the object's stored values (RFC 9110 §8.8.3), without its quotes."""
    text = json.dumps(audit.values_of(obj), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _locked(obj: models.Model) -> models.Model | None:
    """The stored row of `obj`, locked until the transaction ends; None for a new object."""
    if obj.pk is None:
        return None
    return type(obj)._default_manager.select_for_update().filter(pk=obj.pk).first()


def _check(current: models.Model | None, if_match: str | None) -> None:
    if if_match is None:
        return
    if current is None or (if_match != "*" and if_match != etag(current)):
        raise Conflict("the object changed since it was read; read it again and repeat the change")


@transaction.atomic
def save(
    obj: models.Model,
    *,
    actor: Actor,
    object_type: str,
    name: str | None = None,
    if_match: str | None = None,
    note: str = "",
) -> dict[str, list]:
    """Validate and save `obj` and record what changed; returns {field: [old, new]} ({} when nothing did,
    and then nothing is written). Raises ValidationError, or Conflict for a stale `if_match`."""
    current = _locked(obj)
    _check(current, if_match)
    obj.full_clean()
    before = audit.values_of(current) if current is not None else {}
    changed = audit.difference(before, audit.values_of(obj))
    if current is not None and not changed:
        return {}
    obj.save()
    audit.record(
        actor=actor,
        action="update" if current is not None else "create",
        object_type=object_type,
        object_name=name if name is not None else str(obj),
        changes=changed,
        note=note,
    )
    return changed


@transaction.atomic
def delete(
    obj: models.Model, *, actor: Actor, object_type: str, name: str | None = None, if_match: str | None = None
) -> None:
    """Delete `obj` (and what the database deletes with it, named in the entry's note) and record it.
    Raises django.db.models.ProtectedError when other objects still use it, Conflict for a stale `if_match`."""
    current = _locked(obj)
    _check(current, if_match)
    collector = Collector(using=router.db_for_write(type(obj)))
    collector.collect([obj])
    cascaded = Counter(
        model._meta.verbose_name_plural
        for model, instances in collector.data.items()
        for instance in instances
        if instance != obj
    )
    note = "also deleted: " + ", ".join(f"{n} {what}" for what, n in sorted(cascaded.items())) if cascaded else ""
    audit.record(
        actor=actor,
        action="delete",
        object_type=object_type,
        object_name=name if name is not None else str(obj),
        changes=audit.difference(audit.values_of(obj), {}),
        note=note,
    )
    obj.delete()
