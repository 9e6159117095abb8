from __future__ import annotations

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
