"""Helpers the gateway's management commands share."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import CommandError


def require_shared_store() -> None:
    """Refuse to read or change live state (breakers, rate-limit counters) that this process cannot see.

    With the embedded store the live state lives inside the running gateway's one process; a command runs in a
    process of its own, whose embedded store is empty. Answering from it would be pretending.
    """
    if settings.GATEWAY_EMBEDDED_STORE:
        raise CommandError(
            "the live state (breakers, rate-limit counters) is inside the running gateway's process: it uses the "
            "embedded store (REDIS_URL=embedded://), which no other process can reach. Use the admin or the API "
            "(/_gateway/api/v1/), or run the gateway with a Redis (REDIS_URL)."
        )
