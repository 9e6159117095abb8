from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from breakers.policy import DEFAULT, Mode
from gateway_project.validation import normalize_statuses


class BreakerConfig(models.Model):
    """An upstream's circuit breaker settings. An upstream without a row has a breaker with the defaults."""

    upstream = models.OneToOneField(
        "proxy.Upstream", on_delete=models.CASCADE, primary_key=True, related_name="breaker"
    )
    mode = models.CharField(
        "breaker mode",
        max_length=12,
        choices=[
            (Mode.NORMAL.value, "normal"),
            (Mode.FORCED_OPEN.value, "forced open: reject every request"),
            (Mode.DISABLED.value, "disabled: always pass, still count"),
            (Mode.SHADOW.value, "shadow: count and record transitions, never reject"),
        ],
        default=Mode.NORMAL.value,
        help_text="Set by the breaker actions too (force open, disable, back to normal).",
    )
    consecutive_failures = models.PositiveIntegerField(
        "open after consecutive failures",
        default=DEFAULT.consecutive_failures,
        validators=[MaxValueValidator(10_000)],
        help_text="Open the breaker after this many failed attempts in a row, across all workers. 0: off.",
    )
    failure_rate = models.PositiveSmallIntegerField(
        "open at failure rate (%)",
        default=DEFAULT.failure_rate,
        validators=[MaxValueValidator(100)],
        help_text="Open when at least this share of the calls in the window failed. 0: off.",
    )
    window_seconds = models.PositiveIntegerField(
        "failure-rate window (s)",
        default=DEFAULT.window_seconds,
        validators=[MinValueValidator(2), MaxValueValidator(3600)],
    )
    minimum_calls = models.PositiveIntegerField(
        "minimum calls",
        default=DEFAULT.minimum_calls,
        validators=[MinValueValidator(1)],
        help_text="The failure rate counts only once the window holds this many calls.",
    )
    slow_call_ms = models.PositiveIntegerField(
        "slow call (ms)",
        default=DEFAULT.slow_call_ms,
        help_text="An attempt slower than this (to response headers) counts as a failure. 0: off.",
    )
    open_seconds = models.FloatField(
        "open for (s)",
        default=DEFAULT.open_seconds,
        validators=[MinValueValidator(0.1), MaxValueValidator(86400)],
        help_text="How long an open breaker rejects before probing.",
    )
    half_open_probes = models.PositiveSmallIntegerField(
        "probes",
        default=DEFAULT.half_open_probes,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="Requests let through, across all workers, to test a recovering upstream. That many "
        "successes close the breaker; one failure opens it again.",
    )
    failure_statuses = models.CharField(
        "failure statuses",
        max_length=200,
        default="502,503,504",
        blank=True,
        help_text="Upstream statuses that count as failures. Connect errors and timeouts always do; 4xx and the "
        "gateway's own answers never do.",
    )

    class Meta:
        ordering = ["upstream__name"]
        verbose_name = "circuit breaker settings"
        verbose_name_plural = "circuit breaker settings"

    def __str__(self) -> str:
        return f"breaker of {self.upstream_id}"

    def clean(self) -> None:
        self.normalize()

    def normalize(self) -> None:
        try:
            self.failure_statuses = normalize_statuses(self.failure_statuses)
        except ValidationError as exc:
            raise ValidationError({"failure_statuses": exc}) from None


class Breaker(models.Model):
    """The live breakers page in the admin. Breaker state lives in Redis, not in this (unmanaged) table;
    the model exists so the page has a place and permissions: viewing needs 'view breaker', actions need
    'change breaker'."""

    class Meta:
        managed = False
        db_table = "breakers_live_state_placeholder"
        verbose_name = "breaker"
        verbose_name_plural = "breakers (live)"

    def __str__(self) -> str:
        return "breaker"


class BreakerTransition(models.Model):
    """One change of a breaker: a state transition (closed, open, half_open) or an operator's mode change."""

    class Kind(models.TextChoices):
        STATE = "state", "state transition"
        MODE = "mode", "operator mode change"

    upstream_id = models.BigIntegerField(null=True, db_index=True)
    upstream_name = models.CharField(max_length=63, db_index=True)
    kind = models.CharField(max_length=5, choices=Kind.choices, default=Kind.STATE)
    from_state = models.CharField("from", max_length=12)
    to_state = models.CharField("to", max_length=12)
    reason = models.CharField(max_length=300, blank=True, default="")
    actor = models.CharField("operator", max_length=150, blank=True, default="", help_text="Who, for operator actions.")
    at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = "breaker transition"

    def __str__(self) -> str:
        return f"{self.upstream_name}: {self.from_state} -> {self.to_state}"
