"""Each upstream's circuit breaker in the configuration document: the `breaker` mapping nested in its item.

An upstream without breaker settings exports the defaults; an item without `breaker` (or with some of its keys
left out) takes the defaults for what it leaves out, as every other field does.
"""

from __future__ import annotations

from typing import Any

from breakers.models import BreakerConfig
from breakers.policy import MODES
from gateway_project.configfile import Context, Extension, Reader, apply_fields, full_check, set_statuses
from gateway_project.validation import status_list

DEFAULT_STATUSES = [502, 503, 504]


def _current(upstream) -> BreakerConfig:
    """The upstream's stored settings, or unsaved defaults."""
    if upstream.pk is not None:
        found = BreakerConfig.objects.filter(upstream_id=upstream.pk).first()
        if found is not None:
            return found
    return BreakerConfig()


class BreakerFields(Extension):
    key = "breaker"
    fields = (
        ("mode", str),
        ("consecutive_failures", int),
        ("failure_rate", int),
        ("window_seconds", int),
        ("minimum_calls", int),
        ("slow_call_ms", int),
        ("open_seconds", (int, float)),
        ("half_open_probes", int),
    )
    compared = (*(name for name, _ in fields), "failure_statuses")

    def export(self, upstream) -> dict[str, Any]:
        # An upstream built from a document (not yet saved) exports the settings it would get.
        config = getattr(upstream, "_breaker_config", None) or _current(upstream)
        item = {name: getattr(config, name) for name, _ in self.fields}
        item["failure_statuses"] = status_list(config.failure_statuses)
        return item

    def build(self, item: Reader, upstream, ctx: Context) -> None:
        config = _current(upstream)
        apply_fields(config, item, self.fields)
        set_statuses(config, "failure_statuses", item, item.get("failure_statuses", list, DEFAULT_STATUSES))
        if config.mode not in MODES:
            item.problem("mode", f"must be one of {', '.join(MODES)}")
            config.mode = MODES[0]  # reported once, here, with the choices spelled out
        full_check(config, item, exclude=("upstream",))
        upstream._breaker_config = config

    def differences(self, upstream, current) -> tuple[str, ...]:
        new, old = upstream._breaker_config, _current(current)
        return tuple(f"{self.key}.{name}" for name in self.compared if getattr(new, name) != getattr(old, name))

    def save(self, upstream) -> None:
        config = upstream._breaker_config
        config.upstream = upstream
        config.save()
