"""The `consumers` and `rate_limits` sections of the configuration document (proxy/configfile.py)."""

from __future__ import annotations

import re
from typing import Any

from django.utils.dateparse import parse_datetime

from gateway_project.configfile import Context, Reader, Section, apply_fields, full_check
from limits.models import ApiKey, Consumer, RateLimitPolicy

_HASH_RE = re.compile(r"^[0-9a-f]{64}$")


class ConsumerSection(Section):
    """Consumers with their API keys. Keys travel as SHA-256 hashes: an export never holds a usable key."""

    key = "consumers"
    model = Consumer
    fields = (("enabled", bool), ("description", str))
    compared = ("enabled", "description")

    def export(self, obj) -> dict[str, Any]:
        desired = getattr(obj, "_desired_keys", None)
        if desired is not None:  # built from a document, not yet saved: the keys it would have
            keys = [
                ApiKey(key_hash=digest, prefix=p, label=label, revoked_at=at)
                for digest, (p, label, at) in desired.items()
            ]
        else:
            keys = obj.api_keys.order_by("created_at", "id") if obj.pk else []
        return {
            "name": obj.name,
            "enabled": obj.enabled,
            "description": obj.description,
            "api_keys": [self._key_item(k) for k in keys],
        }

    @staticmethod
    def _key_item(key: ApiKey) -> dict[str, Any]:
        return {
            "prefix": key.prefix,
            "sha256": key.key_hash,
            "label": key.label,
            "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        }

    def build(self, item: Reader, obj, ctx: Context) -> None:
        obj.name = item.get("name", str)
        apply_fields(obj, item, self.fields)
        keys = item.get("api_keys", list, None)
        if keys is None:
            obj._desired_keys = None  # no api_keys: this consumer's keys are left as they are
            full_check(obj, item)
            return
        current = {k.key_hash: k for k in ApiKey.objects.filter(consumer__name=obj.name)} if obj.name else {}
        desired = {}
        for index, data in enumerate(keys):
            where = f"api_keys[{index}]"
            if not isinstance(data, dict) or set(data) - {"prefix", "sha256", "label", "revoked_at"}:
                item.problem(where, "must be a mapping of prefix, sha256, label and revoked_at")
                continue
            digest, prefix = data.get("sha256"), data.get("prefix", "")
            if not isinstance(digest, str) or not _HASH_RE.match(digest):
                item.problem(f"{where}.sha256", "must be 64 lower-case hex digits")
                continue
            if not isinstance(prefix, str) or len(prefix) > 12:
                item.problem(f"{where}.prefix", "must be a string of at most 12 characters")
                continue
            revoked = data.get("revoked_at")
            revoked_at = parse_datetime(revoked) if isinstance(revoked, str) else None
            if revoked is not None and (revoked_at is None or revoked_at.tzinfo is None):
                item.problem(f"{where}.revoked_at", "must be an ISO 8601 date-time with a UTC offset, or null")
                continue
            label = data.get("label") or ""
            if not isinstance(label, str) or len(label) > 100:
                item.problem(f"{where}.label", "must be a string of at most 100 characters")
                continue
            if digest in desired:
                item.problem(where, "the same key appears twice")
                continue
            owner = ApiKey.objects.filter(key_hash=digest).exclude(consumer__name=obj.name).first()
            if owner is not None:
                item.problem(where, f"this key belongs to consumer {owner.consumer.name!r}")
                continue
            existing = current.get(digest)
            if existing is not None and existing.revoked_at is not None and revoked_at is None:
                item.problem(
                    f"{where}.revoked_at",
                    f"key {prefix}… is revoked, and a revoked key stays revoked: create a new key instead",
                )
                continue
            desired[digest] = (prefix, label, revoked_at)
        obj._desired_keys = desired
        full_check(obj, item)

    def validate_final(self, objects, ctx: Context) -> None:
        owners: dict[str, str] = {}
        for consumer in objects.values():
            for digest in getattr(consumer, "_desired_keys", None) or {}:
                if digest in owners:
                    ctx.problem(
                        f"consumers ({consumer.name})", f"key {digest[:12]}… is also listed under {owners[digest]!r}"
                    )
                owners[digest] = consumer.name

    def _current_keys(self, obj) -> dict[str, tuple]:
        if not obj.pk:
            return {}
        return {k.key_hash: (k.prefix, k.label, k.revoked_at) for k in ApiKey.objects.filter(consumer=obj)}

    def differences(self, obj, current) -> tuple[str, ...]:
        changed = super().differences(obj, current)
        if obj._desired_keys is not None and obj._desired_keys != self._current_keys(current):
            changed += ("api_keys",)
        return changed

    def save(self, obj) -> None:
        obj.save()
        if obj._desired_keys is None:
            return
        current = {k.key_hash: k for k in ApiKey.objects.filter(consumer=obj)}
        for digest, (prefix, label, revoked_at) in obj._desired_keys.items():
            key = current.pop(digest, None) or ApiKey(consumer=obj, key_hash=digest)
            key.prefix, key.label, key.revoked_at = prefix, label, revoked_at
            key.save()
        for key in current.values():
            key.delete()


class RateLimitSection(Section):
    key = "rate_limits"
    model = RateLimitPolicy
    fields = (
        ("scope", str),
        ("key_by", str),
        ("header_name", str),
        ("limit", int),
        ("window_seconds", int),
        ("algorithm", str),
        ("burst", int),
        ("mode", str),
        ("on_redis_failure", str),
        ("legacy_headers", bool),
        ("enabled", bool),
    )
    compared = (*(name for name, _ in fields), "route_id", "consumer_id")

    def queryset(self):
        return RateLimitPolicy.objects.select_related("route", "consumer")

    def export(self, obj) -> dict[str, Any]:
        item = {"name": obj.name, **{name: getattr(obj, name) for name, _ in self.fields}}
        item["route"] = obj.route.name if obj.route_id else None
        item["consumer"] = obj.consumer.name if obj.consumer_id else None
        return item

    def build(self, item: Reader, obj, ctx: Context) -> None:
        obj.name = item.get("name", str)
        apply_fields(obj, item, self.fields)
        for field, section in (("route", "routes"), ("consumer", "consumers")):
            name = item.get(field, str, None, nullable=True)
            target = ctx.final.get(section, {}).get(name) if name is not None else None
            if name is not None and target is None:
                item.problem(field, f"no {field} named {name!r}")
            setattr(obj, field, target)
        full_check(obj, item, exclude=("route", "consumer"))

    def validate_final(self, objects, ctx: Context) -> None:
        for policy in objects.values():
            for field, section in (("route", "routes"), ("consumer", "consumers")):
                target = getattr(policy, field, None)
                if target is not None and target.name not in ctx.final.get(section, {}):
                    ctx.problem(f"rate_limits ({policy.name})", f"its {field} {target.name!r} would be deleted")
