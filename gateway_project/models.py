from __future__ import annotations

from django.conf import settings
from django.db import models


class ConfigRevision(models.Model):
    """A single row counting configuration changes; workers reload their compiled tables when it moves.

    `token` changes with every change and never repeats, so a restored backup or a re-created row (whose
    revision number may repeat an old one) is still noticed as new.
    """

    revision = models.BigIntegerField(default=1)
    token = models.CharField(max_length=32, default="initial")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "configuration revision"

    def __str__(self) -> str:
        return f"revision {self.revision} ({self.token[:8]})"


class AuditEntry(models.Model):
    """One change to the gateway's configuration or live state: who, from where, what, old -> new.

    Written by the one service layer (gateway_project/audit.py) that the admin, the API, the commands and the
    configuration import all call; never edited.
    """

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.CharField(
        max_length=150, db_index=True, help_text="user:<name>, token:<prefix> (<user>) or cli:<os user>."
    )
    via = models.CharField(max_length=10, help_text="admin, api or cli.")
    address = models.CharField(
        "from", max_length=255, blank=True, default="", help_text="Client address, or the host a command ran on."
    )
    action = models.CharField(max_length=20, db_index=True, help_text="create, update, delete, revoke, reset, ...")
    object_type = models.CharField("object type", max_length=30, db_index=True)
    object_name = models.CharField("object", max_length=150, db_index=True)
    changes = models.JSONField(
        default=dict, blank=True, help_text="Each changed field, in the configuration file's terms: [old, new]."
    )
    note = models.CharField(max_length=300, blank=True, default="")

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = "audit entry"
        verbose_name_plural = "audit trail"

    def __str__(self) -> str:
        return f"{self.actor} {self.action} {self.object_type} {self.object_name}"


class ApiToken(models.Model):
    """A bearer token of a staff user for the management API. Only its SHA-256 is stored; the token is shown
    once, when created. It acts with its user's permissions."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="gateway_api_tokens")
    label = models.CharField(max_length=100, blank=True, default="", help_text="What this token is for.")
    prefix = models.CharField(max_length=12, editable=False, help_text="The token's first characters.")
    key_hash = models.CharField("SHA-256 of the token", max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["user__username", "created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @property
    def active(self) -> bool:
        return self.revoked_at is None
