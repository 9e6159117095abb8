"""Operator actions and live state; the admin page, the API and the management commands call these, and every
action is recorded in the audit trail (the breaker's own history keeps its transitions too)."""

from __future__ import annotations

from dataclasses import dataclass

from django.apps import apps
from django.db import transaction
from django.utils import timezone
from redis.exceptions import RedisError

from breakers import redis_storage, sync
from breakers.compiled import settings_from
from breakers.models import BreakerConfig, BreakerTransition
from breakers.policy import CLOSED, DEFAULT, FORCED_OPEN, MODES, OPEN, BreakerSettings, label
from breakers.redis_storage import RedisStorage
from breakers.storage import BreakerId
from gateway_project import audit, changes, store
from gateway_project.audit import Actor

_storage = RedisStorage()


class UnknownUpstream(LookupError):
    pass


@dataclass(frozen=True)
class BreakerStatus:
    upstream_id: int
    upstream: str
    mode: str
    state: str
    consecutive_failures: int
    window_calls: int
    window_failures: int
    next_probe_in: float | None  # seconds, when open
    last_transition: BreakerTransition | None
    error: str | None = None

    @property
    def css(self) -> str:
        return label(self.mode, self.state)[0]

    @property
    def label(self) -> str:
        return label(self.mode, self.state)[1]

    def as_dict(self) -> dict:
        last = self.last_transition
        return {
            "upstream": self.upstream,
            "mode": self.mode,
            "state": self.state,
            "consecutive_failures": self.consecutive_failures,
            "window_calls": self.window_calls,
            "window_failures": self.window_failures,
            "next_probe_in_seconds": self.next_probe_in,
            "last_transition": None
            if last is None
            else {
                "at": last.at.isoformat(),
                "from": last.from_state,
                "to": last.to_state,
                "reason": last.reason,
                "actor": last.actor,
            },
            "error": self.error,
        }


def _upstreams(names: list[str] | None = None):
    """The named upstreams (all of them for None; none for an empty list); UnknownUpstream for a missing one.

    Upstreams are the proxy app's; breakers know them by id and name, through Django's app registry.
    """
    queryset = apps.get_model("proxy", "Upstream").objects.select_related("breaker").order_by("name")
    if names is not None:
        found = {u.name: u for u in queryset.filter(name__in=names)}
        missing = [n for n in names if n not in found]
        if missing:
            raise UnknownUpstream(f"no upstream named {', '.join(repr(n) for n in missing)}")
        return [found[n] for n in names]
    return list(queryset)


def upstream_names() -> list[str]:
    return [u.name for u in _upstreams()]


def config_of(upstream) -> BreakerConfig | None:
    try:
        return upstream.breaker
    except BreakerConfig.DoesNotExist:
        return None


def policy_of(upstream) -> BreakerSettings:
    config = config_of(upstream)
    return DEFAULT if config is None else settings_from(config)


def mode_of(upstream) -> str:
    return policy_of(upstream).mode


def live_states(*, names: list[str] | None = None, page: bool = False) -> list[BreakerStatus]:
    """Every breaker's live state, read from Redis (and the last transition from the history).

    After the first Redis error the others are reported unknown without asking again, so a mute Redis costs
    one timeout per call, not one per upstream; `page`: read with the pages' short budget.
    """
    statuses = []
    redis_error: str | None = None
    client = None
    for upstream in _upstreams(names):
        policy = policy_of(upstream)
        view = None
        if redis_error is None:
            try:
                if page and client is None:
                    client = store.page_client()
                view = RedisStorage(client).view(BreakerId(upstream.id, upstream.name), policy)
                calls, failures = redis_storage.window_counts(upstream.id, policy, client=client)
            except RedisError as exc:  # Redis unavailable: say so per breaker, show the rest
                redis_error = type(exc).__name__
            else:
                sync.record_events(upstream.id, client=client)
        last = BreakerTransition.objects.filter(upstream_id=upstream.id).first()
        if view is None:
            statuses.append(
                BreakerStatus(
                    upstream.id,
                    upstream.name,
                    policy.mode,
                    "unknown",
                    0,
                    0,
                    0,
                    None,
                    last,
                    error=redis_error,
                )
            )
            continue
        statuses.append(
            BreakerStatus(
                upstream.id,
                upstream.name,
                policy.mode,
                view.state,
                view.consec,
                calls,
                failures,
                view.open_remaining if view.state == OPEN else None,
                last,
            )
        )
    return statuses


def status_rows(*, names: list[str] | None = None) -> list[dict]:
    """The live breakers for other apps' pages (registry.breaker_status_providers), read with the pages' budget."""
    rows = []
    for status in live_states(names=names, page=True):
        row = status.as_dict()
        row.update(upstream_id=status.upstream_id, label=status.label, css=status.css)
        row["next_probe_in"] = row.pop("next_probe_in_seconds")
        rows.append(row)
    return rows


def route_page_lines(*, route_id: int, upstream_name: str) -> list[tuple[str, list[str]]]:
    """For the route's admin page: its upstream's breaker, live."""
    try:
        (status,) = live_states(names=[upstream_name], page=True)
    except UnknownUpstream:
        return []
    probe = f"; next probe in {status.next_probe_in:.0f} s" if status.next_probe_in is not None else ""
    line = (
        f"{status.label} (mode {status.mode}); {status.window_failures} failures of {status.window_calls} calls in "
        f"its window, {status.consecutive_failures} in a row{probe}"
    )
    return [(f"Circuit breaker of {upstream_name}", [line])]


def reset_breakers(*, names: list[str] | None = None, actor: Actor) -> list[str]:
    """Close the named breakers (all when `names` is None) and clear their counts; returns the names reset.

    A breaker whose mode is forced_open stays closed in Redis but still rejects: `held_open()` names those."""
    done = []
    for upstream in _upstreams(names):
        view = _storage.reset(BreakerId(upstream.id, upstream.name), policy_of(upstream), actor=actor.name)
        sync.record_events(upstream.id)
        mode = mode_of(upstream)
        audit.record(
            actor=actor,
            action="reset",
            object_type="breaker",
            object_name=upstream.name,
            changes={"state": [view.from_state, CLOSED.value]} if view.from_state != CLOSED else {},
            note=f"mode {mode} still holds it open" if mode == FORCED_OPEN else "",
        )
        done.append(upstream.name)
    return done


def held_open(*, names: list[str] | None = None) -> list[str]:
    """Of the named upstreams, those whose breaker mode is forced_open: a reset does not let requests through."""
    return [u.name for u in _upstreams(names) if mode_of(u) == FORCED_OPEN]


def save_config(*, config: BreakerConfig, actor: Actor, if_match: str | None = None) -> dict[str, list]:
    """Save an upstream's breaker settings (validated, ETag-guarded, recorded)."""
    return changes.save(config, actor=actor, object_type="breaker", name=config.upstream.name, if_match=if_match)


@transaction.atomic
def set_mode(*, names: list[str], mode: str, actor: Actor) -> list[str]:
    """Set the operator mode (normal, forced_open, disabled, shadow); every gateway applies it within a second."""
    if mode not in MODES:
        raise ValueError(f"unknown breaker mode {mode!r}; choose one of {', '.join(MODES)}")
    changed = []
    for upstream in _upstreams(names):
        config = config_of(upstream) or BreakerConfig(upstream=upstream)
        if config.mode == mode:
            continue
        BreakerTransition.objects.create(
            upstream_id=upstream.id,
            upstream_name=upstream.name,
            kind="mode",
            from_state=config.mode,
            to_state=mode,
            reason=f"mode set to {mode}",
            actor=actor.name[:150],
            at=timezone.now(),
        )
        config.mode = mode
        changes.save(config, actor=actor, object_type="breaker", name=upstream.name)
        changed.append(upstream.name)
    return changed
