from __future__ import annotations

from django.db import models


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
