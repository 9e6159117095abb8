"""Revoke API keys, as the admin's Revoke action does."""

from django.core.management.base import BaseCommand, CommandError

from gateway_project.audit import Actor
from limits import services
from limits.models import ApiKey


class Command(BaseCommand):
    help = "Revoke API keys by their prefix (the first characters shown in the admin and in exports, gw_...)."

    def add_arguments(self, parser):
        parser.add_argument("prefixes", nargs="+", metavar="PREFIX")

    def handle(self, *args, **options):
        keys = []
        for prefix in options["prefixes"]:
            found = list(ApiKey.objects.filter(prefix=prefix).select_related("consumer"))
            if len(found) != 1:
                raise CommandError(f"{len(found) or 'no'} API keys have the prefix {prefix!r}; nothing was revoked")
            keys.extend(found)
        actor = Actor.cli()
        for key in keys:
            revoked = services.revoke_api_key(key=key, actor=actor)
            state = "revoked" if revoked else "was already revoked"
            self.stdout.write(f"{key.prefix} ({key.consumer.name}): {state}")
