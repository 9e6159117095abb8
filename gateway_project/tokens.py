"""Bearer tokens of staff users for the management API: made, revoked and checked here.

The admin, the `api_token` command and the API's authentication call these. A token acts with its user's
permissions; only its SHA-256 is stored, so it is shown once, when made.
"""

from __future__ import annotations

import hashlib
import secrets

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from gateway_project import audit
from gateway_project.audit import Actor
from gateway_project.models import ApiToken

PREFIX = "gwt_"


def hash_token(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


@transaction.atomic
def create_token(*, user, actor: Actor, label: str = "") -> tuple[ApiToken, str]:
    """A new token for an active staff `user`; returns the stored record and the token, which is not kept."""
    if not (user.is_active and user.is_staff):
        raise ValidationError(f"{user.get_username()!r} is not an active staff user; API tokens are for staff.")
    plaintext = PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, label=label, prefix=plaintext[:12], key_hash=hash_token(plaintext))
    audit.record(
        actor=actor,
        action="create",
        object_type="api_token",
        object_name=token.prefix,
        changes={"user": [None, user.get_username()], "label": [None, label]},
    )
    return token, plaintext


@transaction.atomic
def revoke_token(*, token: ApiToken, actor: Actor) -> bool:
    """Revoke a token at once; False if it was revoked already."""
    stored = ApiToken.objects.select_for_update().get(pk=token.pk)
    revoked = stored.revoked_at is None
    if revoked:
        stored.revoked_at = timezone.now()
        stored.save(update_fields=["revoked_at"])
        audit.record(
            actor=actor,
            action="revoke",
            object_type="api_token",
            object_name=stored.prefix,
            changes={"revoked_at": [None, stored.revoked_at.isoformat()]},
        )
    token.revoked_at = stored.revoked_at
    return revoked


def authenticate(plaintext: str) -> ApiToken | None:
    """The active token of an active staff user that `plaintext` is, or None."""
    if not plaintext.startswith(PREFIX):
        return None
    token = ApiToken.objects.select_related("user").filter(key_hash=hash_token(plaintext), revoked_at=None).first()
    if token is None or not (token.user.is_active and token.user.is_staff):
        return None
    return token
