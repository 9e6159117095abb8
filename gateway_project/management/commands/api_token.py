"""Make, list and revoke the management API's bearer tokens."""

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from gateway_project import tokens
from gateway_project.audit import Actor
from gateway_project.models import ApiToken


class Command(BaseCommand):
    help = (
        "API tokens for the management API (/_gateway/api/v1/): `create USER [--label TEXT]` prints a new token "
        "of a staff user once; `revoke PREFIX` revokes one; `list` shows them all."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="Print a new token for a staff user (shown once).")
        create.add_argument("user")
        create.add_argument("--label", default="", help="What the token is for.")
        revoke = sub.add_parser("revoke", help="Revoke a token by its prefix (gwt_...).")
        revoke.add_argument("prefix")
        sub.add_parser("list", help="Every token: prefix, user, label, created, revoked.")

    def handle(self, *args, **options):
        action = options["action"]
        if action == "create":
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"no user named {options['user']!r}")
            try:
                _, plaintext = tokens.create_token(user=user, label=options["label"], actor=Actor.cli())
            except ValidationError as exc:
                raise CommandError(exc.messages[0]) from exc
            self.stdout.write(plaintext)
        elif action == "revoke":
            found = list(ApiToken.objects.filter(prefix=options["prefix"]))
            if len(found) != 1:
                raise CommandError(f"{len(found) or 'no'} tokens have the prefix {options['prefix']!r}")
            revoked = tokens.revoke_token(token=found[0], actor=Actor.cli())
            self.stdout.write(f"{found[0].prefix}: {'revoked' if revoked else 'was already revoked'}")
        else:
            for token in ApiToken.objects.select_related("user"):
                revoked = f"revoked {token.revoked_at:%Y-%m-%d %H:%M}" if token.revoked_at else "active"
                self.stdout.write(
                    f"{token.prefix}  {token.user.get_username()}  {token.created_at:%Y-%m-%d %H:%M}  {revoked}  "
                    f"{token.label}".rstrip()
                )
