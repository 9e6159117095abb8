"""Create the demo upstream and route (and an admin login and API token) for a first run; `make run` calls it."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from gateway_project import tokens
from gateway_project.audit import Actor
from proxy import services

ADMIN = "admin"


class Command(BaseCommand):
    help = "Create the demo upstream and the /demo/ route, and an admin user with an API token on first run."

    def add_arguments(self, parser):
        parser.add_argument("--no-admin", action="store_true", help="Do not create the admin user.")

    def handle(self, *args, **options):
        host, port = settings.GATEWAY_LISTEN
        actor = Actor.cli()
        for line in services.ensure_demo(listen_host=host, listen_port=port, actor=actor):
            self.stdout.write(line)
        base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"  # noqa: S104
        self.stdout.write(self.style.SUCCESS(f"Gateway: {base}/demo/  (try: curl -i {base}/demo/hello)"))
        if not options["no_admin"]:
            self._admin(base, actor)

    def _admin(self, base: str, actor: Actor) -> None:
        var = Path(settings.VAR_DIR)
        credentials, token_file = var / "admin-credentials", var / "api-token"
        users = get_user_model().objects
        if not users.filter(is_superuser=True).exists():
            password = secrets.token_urlsafe(12)
            users.create_superuser(ADMIN, "admin@localhost", password)
            _private(credentials, f"{ADMIN} {password}\n")
            # A fresh password is printed once, now; after a restart it may have been changed in the admin.
            self.stdout.write(self.style.SUCCESS(f"Admin:   {base}/admin/  login {ADMIN} / {password}"))
            self.stdout.write(f"         (saved in {credentials}; change it in the admin)")
        else:
            self.stdout.write(self.style.SUCCESS(f"Admin:   {base}/admin/"))
            self.stdout.write(
                f"         log in with the account you set up; the first run's password was saved in {credentials} "
                "as created (`manage.py changepassword admin` sets a new one)"
            )
        admin = users.filter(username=ADMIN, is_staff=True, is_active=True).first()
        if not token_file.exists() and admin is not None:
            _, plaintext = tokens.create_token(user=admin, label="make run", actor=actor)
            _private(token_file, plaintext + "\n")
        if token_file.exists():
            self.stdout.write(self.style.SUCCESS(f"API:     {base}/_gateway/api/v1/  (docs at /_gateway/api/v1/docs/)"))
            self.stdout.write(
                f'         token of {ADMIN!r} in {token_file}: curl -H "Authorization: Bearer $(cat {token_file})" ...'
            )


def _private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, 0o600)
