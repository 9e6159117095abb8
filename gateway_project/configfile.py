"""Configuration as code: the whole gateway configuration as one YAML or JSON document.

`gateway_export` writes it; `gateway_import` reads one, validates all of it before touching the database,
then applies it in one transaction. Each app contributes top-level sections (proxy: `upstreams`, `routes`);
docs/configuration.md describes the format. Export then import changes nothing.

Import semantics: items are matched to existing objects by name. A section missing from the document is left
alone. Objects that exist but are not in their section are kept, or deleted with `prune`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml
from django.core.exceptions import ValidationError
from django.db import models, transaction

from gateway_project import audit
from gateway_project.audit import Actor

FORMAT_VERSION = 1


class ConfigError(Exception):
    """The document is invalid; `problems` lists every problem found, each with its location."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Change:
    action: str  # create, update or delete
    section: str
    name: str
    fields: tuple[str, ...] = ()
    #: Each changed field as the document writes it ('read_timeout', 'breaker.mode', 'upstream'): (path, old, new).
    values: tuple[tuple[str, Any, Any], ...] = ()

    @property
    def object_type(self) -> str:
        """The section's objects in the singular: upstream, route, consumer, rate_limit."""
        return self.section.removesuffix("s")

    def __str__(self) -> str:
        what = f"{self.action} {self.object_type} {self.name!r}"
        return f"{what}: {', '.join(self.fields)}" if self.fields else what

    def lines(self) -> list[str]:
        """Each changed value as `path: old → new`, in the document's terms."""
        return [f"{path}: {show(old)} → {show(new)}" for path, old, new in self.values]

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "object_type": self.object_type,
            "name": self.name,
            "changes": {path: [old, new] for path, old, new in self.values},
        }


def show(value: Any) -> str:
    """A value as the document would write it, on one line."""
    if isinstance(value, str):
        return value if value else "''"
    return json.dumps(value)


def _at(item: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        item = item.get(part) if isinstance(item, dict) else None
    return item


def _values(old: dict[str, Any], new: dict[str, Any], fields: tuple[str, ...]) -> tuple[tuple[str, Any, Any], ...]:
    """The changed fields' values; a field named by its model attribute (upstream_id) is its item key (upstream)."""
    paths = (field.removesuffix("_id") for field in fields)
    return tuple((path, _at(old, path), _at(new, path)) for path in paths)


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    saves: list[models.Model] = field(default_factory=list)
    deletes: list[models.Model] = field(default_factory=list)


class Context:
    """What the import has resolved so far: the final objects of each section, by name."""

    def __init__(self) -> None:
        self.final: dict[str, dict[str, models.Model]] = {}
        self.problems: list[str] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")


class Section:
    """One top-level list of named objects. Subclasses say how an object becomes an item and back."""

    key: str
    model: type[models.Model]
    natural_key = "name"
    #: Fields compared to decide whether an existing object changes.
    compared: tuple[str, ...] = ()

    def queryset(self):
        return self.model.objects.all()

    def name_of(self, obj) -> str:
        return getattr(obj, self.natural_key)

    def export(self, obj) -> dict[str, Any]:
        raise NotImplementedError

    def build(self, item: Reader, obj, ctx: Context) -> None:
        """Set `obj`'s fields from `item`; report problems through `item` or `ctx`."""
        raise NotImplementedError

    def differences(self, obj, current) -> tuple[str, ...]:
        """The names of what `obj` (built from the document) changes in `current` (the database's)."""
        return tuple(f for f in self.compared if getattr(obj, f) != getattr(current, f))

    def validate_final(self, objects: dict[str, models.Model], ctx: Context) -> None:
        """Checks across the section's final objects (for example, two routes matching the same requests)."""

    def save(self, obj) -> None:
        obj.save()


class Reader:
    """Typed access to one item of a section, collecting problems with their location."""

    def __init__(self, data: dict, where: str, ctx: Context) -> None:
        self.data = data
        self.where = where
        self.ctx = ctx
        self.seen: set[str] = set()

    def problem(self, key: str | None, message: str) -> None:
        self.ctx.problem(f"{self.where}.{key}" if key else self.where, message)

    def get(self, key: str, kinds: type | tuple[type, ...], default: Any = ..., *, nullable: bool = False) -> Any:
        self.seen.add(key)
        if key not in self.data:
            if default is ...:
                self.problem(key, "is required")
            return None if default is ... else default
        value = self.data[key]
        if value is None and nullable:
            return None
        if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
            self.problem(key, f"expected {_kind_names(kinds)}, got a boolean")
            return None if default is ... else default
        if not isinstance(value, kinds):
            self.problem(key, f"expected {_kind_names(kinds)}, got {type(value).__name__}")
            return None if default is ... else default
        if isinstance(value, float) and not math.isfinite(value):
            self.problem(key, "must be a finite number")
            return None if default is ... else default
        return value

    def finish(self) -> None:
        for key in sorted(set(self.data) - self.seen):
            self.problem(key, "unknown field")


def _kind_names(kinds) -> str:
    names = {
        str: "a string",
        bool: "true or false",
        int: "an integer",
        float: "a number",
        list: "a list",
        dict: "a mapping",
    }
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def apply_fields(obj, item: Reader, fields: Iterable[tuple]) -> None:
    """Copy plain fields from the item; a field the item leaves out takes the model's default.

    Each field is (model field name, kinds) or, when the document names it differently (inside a nested
    mapping, say), (model field name, kinds, document key)."""
    for name, kinds, *key in fields:
        model_field = obj._meta.get_field(name)
        default = model_field.get_default()
        value = item.get(key[0] if key else name, kinds, default, nullable=model_field.null)
        if isinstance(value, int) and not isinstance(value, bool) and isinstance(model_field, models.FloatField):
            value = float(value)
        setattr(obj, name, value)


def full_check(obj, item: Reader, *, exclude: tuple[str, ...] = (), locate=None) -> None:
    """Run the model's field validators and its normalize(); report problems at the item.

    `locate` maps a model field name to its place in the item when the document nests it differently.
    """
    for check in (lambda: obj.clean_fields(exclude=[*exclude, "id"]), obj.normalize):
        try:
            check()
        except ValidationError as exc:
            report_validation(item, exc, locate)


def set_statuses(obj, field: str, item: Reader, statuses, key: str | None = None) -> None:
    """Store a document's list of status codes in a model's comma-separated field."""
    if statuses is None:
        return
    if all(isinstance(s, int) and not isinstance(s, bool) for s in statuses):
        setattr(obj, field, ",".join(str(s) for s in statuses))
    else:
        item.problem(key or field, "must be a list of status codes")


def report_validation(item: Reader, exc: ValidationError, locate=None) -> None:
    if hasattr(exc, "error_dict"):
        for key, errors in exc.message_dict.items():
            for message in errors:
                place = None if key == "__all__" else (locate(key) if locate else key)
                item.problem(place, message)
    else:
        for message in exc.messages:
            item.problem(None, message)


class Extension:
    """Settings another app keeps about a section's objects, nested in each item under `key` (the breakers
    app's `breaker` mapping in every upstream, say). The owning section never needs to know of it."""

    key: str

    def export(self, obj) -> Any:
        raise NotImplementedError

    def build(self, item: Reader, obj, ctx: Context) -> None:
        """Read the nested mapping (`item` reads inside it) and keep what to save on `obj` until save()."""
        raise NotImplementedError

    def differences(self, obj, current) -> tuple[str, ...]:
        """What `obj` (as built) changes against `current`, as document paths such as 'breaker.mode'."""
        raise NotImplementedError

    def save(self, obj) -> None:
        """Called once `obj` itself is saved."""
        raise NotImplementedError


_sections: list[Section] = []
_extensions: dict[str, list[Extension]] = {}


def extend(section_key: str, extension: Extension) -> None:
    """Nest `extension` in every item of the section `section_key`."""
    found = _extensions.setdefault(section_key, [])
    if all(e.key != extension.key for e in found):
        found.append(extension)


def _build(section: Section, item: Reader, obj, ctx: Context) -> None:
    section.build(item, obj, ctx)
    for extension in _extensions.get(section.key, ()):
        data = item.get(extension.key, dict, {})
        nested = Reader(data if isinstance(data, dict) else {}, f"{item.where}.{extension.key}", ctx)
        extension.build(nested, obj, ctx)
        nested.finish()
    item.finish()


def _export(section: Section, obj) -> dict[str, Any]:
    item = section.export(obj)
    for extension in _extensions.get(section.key, ()):
        item[extension.key] = extension.export(obj)
    return item


def _differences(section: Section, obj, current) -> tuple[str, ...]:
    changed = section.differences(obj, current)
    for extension in _extensions.get(section.key, ()):
        changed += extension.differences(obj, current)
    return changed


def register(section: Section) -> None:
    """Add a section; sections apply in registration order and prune in reverse."""
    if any(s.key == section.key for s in _sections):
        return
    _sections.append(section)


def sections() -> list[Section]:
    return list(_sections)


def export_document() -> dict[str, Any]:
    document: dict[str, Any] = {"version": FORMAT_VERSION}
    for section in _sections:
        objects = sorted(section.queryset(), key=section.name_of)
        document[section.key] = [_export(section, obj) for obj in objects]
    return document


def dump(document: dict[str, Any], fmt: str = "yaml") -> str:
    if fmt == "json":
        return json.dumps(document, indent=2) + "\n"
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False, allow_unicode=True)


def parse(text: str) -> dict[str, Any]:
    """YAML or JSON (JSON is YAML); raises ConfigError for anything that is not a mapping."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML or JSON: {exc}"]) from exc
    if not isinstance(document, dict):
        raise ConfigError(["the document must be a mapping with 'version' and section lists"])
    return document


def plan(document: dict[str, Any], *, prune: bool = False) -> Plan:
    """Validate the whole document against the database and say what applying it would change."""
    ctx = Context()
    result = Plan()
    known = {s.key for s in _sections}
    version = document.get("version")
    if version != FORMAT_VERSION:
        ctx.problem("version", f"must be {FORMAT_VERSION}, got {version!r}")
    for key in sorted(set(document) - known - {"version"}):
        ctx.problem(key, f"unknown section (known: {', '.join(sorted(known))})")

    pending_deletes: list[tuple[Section, list[models.Model]]] = []
    for section in _sections:
        existing = {section.name_of(obj): obj for obj in section.queryset()}
        items = document.get(section.key)
        if items is None or not isinstance(items, list):
            if items is not None:
                ctx.problem(section.key, "must be a list")
            # Untouched, but still checked against the sections that changed (a route whose upstream is pruned).
            ctx.final[section.key] = dict(existing)
            section.validate_final(ctx.final[section.key], ctx)
            continue
        final: dict[str, models.Model] = {}
        for index, data in enumerate(items):
            where = f"{section.key}[{index}]"
            if not isinstance(data, dict):
                ctx.problem(where, "must be a mapping")
                continue
            name = data.get(section.natural_key)
            if not isinstance(name, str) or not name:
                ctx.problem(f"{where}.{section.natural_key}", "is required and must be a string")
                continue
            where = f"{where} ({name})"
            if name in final:
                ctx.problem(where, f"{section.natural_key} {name!r} appears twice")
                continue
            current = existing.get(name)
            obj = section.model.objects.get(pk=current.pk) if current is not None else section.model()
            item = Reader(data, where, ctx)
            _build(section, item, obj, ctx)
            final[name] = obj
            if current is None:
                new = _export(section, obj) if not ctx.problems else {}
                created = tuple((path, None, value) for path, value in new.items() if path != section.natural_key)
                result.changes.append(Change("create", section.key, name, values=created))
                result.saves.append(obj)
            else:
                changed = _differences(section, obj, current)
                if changed:
                    values = () if ctx.problems else _values(_export(section, current), _export(section, obj), changed)
                    result.changes.append(Change("update", section.key, name, changed, values))
                    result.saves.append(obj)
        leftovers = [obj for name, obj in existing.items() if name not in final]
        if prune:
            pending_deletes.append((section, leftovers))
        else:
            final.update({section.name_of(obj): obj for obj in leftovers})
        ctx.final[section.key] = final
        section.validate_final(final, ctx)

    for section, leftovers in reversed(pending_deletes):
        for obj in sorted(leftovers, key=section.name_of):
            old = _export(section, obj) if not ctx.problems else {}
            deleted = tuple((path, value, None) for path, value in old.items() if path != section.natural_key)
            result.changes.append(Change("delete", section.key, section.name_of(obj), values=deleted))
            result.deletes.append(obj)
    if ctx.problems:
        raise ConfigError(ctx.problems)
    return result


def apply(result: Plan, *, actor: Actor, prune: bool = False) -> None:
    """Write a plan in one transaction, each change with its audit entry: every change lands, or none does."""
    by_model = {s.model: s for s in _sections}
    note = "import --prune" if prune else "import"
    with transaction.atomic():
        for obj in result.saves:
            section = by_model[type(obj)]
            section.save(obj)
            for extension in _extensions.get(section.key, ()):
                extension.save(obj)
        for obj in result.deletes:
            obj.delete()
        for change in result.changes:
            audit.record(
                actor=actor,
                action=change.action,
                object_type=change.object_type,
                object_name=change.name,
                changes=change.as_dict()["changes"],
                note=note,
            )


def import_document(document: dict[str, Any], *, actor: Actor, prune: bool = False, dry_run: bool = False) -> Plan:
    """The import service (gateway_import, the API): validate the whole document and, unless `dry_run`, apply
    it. Validation and writing share one transaction that holds the configuration revision row, so no admin
    save or other import commits in between. Raises ConfigError listing every problem."""
    from gateway_project import runtime

    with transaction.atomic():
        runtime.lock()
        result = plan(document, prune=prune)
        if result.changes and not dry_run:
            apply(result, actor=actor, prune=prune)
    return result
