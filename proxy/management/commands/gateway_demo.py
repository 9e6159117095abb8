"""Create the demo upstream and route (and an admin login) for a first run; `make run` calls it."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from proxy import services


class Command(BaseCommand):
    help = "Create the demo upstream and the /demo/ route, and an admin user on first run."

    def add_arguments(self, parser):
        parser.add_argument("--no-admin", action="store_true", help="Do not create the admin user.")

    def handle(self, *args, **options):
        host, port = settings.GATEWAY_LISTEN
        created = services.ensure_demo(listen_host=host, listen_port=port)
        for line in created:
            self.stdout.write(line)
        if not options["no_admin"]:
            self._admin()
        base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"  # noqa: S104
        self.stdout.write(
            self.style.SUCCESS(f"Gateway: {base}/demo/  (try: curl -i {base}/demo/hello)\nAdmin:   {base}/admin/")
        )

    def _admin(self) -> None:
        credentials = Path(settings.VAR_DIR) / "admin-credentials"
        users = get_user_model().objects
        if not users.filter(is_superuser=True).exists():
            password = secrets.token_urlsafe(12)
            users.create_superuser("admin", "admin@localhost", password)
            credentials.parent.mkdir(parents=True, exist_ok=True)
            credentials.write_text(f"admin {password}\n")
            os.chmod(credentials, 0o600)
            self.stdout.write(f"Created admin user 'admin' (password saved in {credentials}).")
        if credentials.exists():
            user, _, password = credentials.read_text().strip().partition(" ")
            self.stdout.write(self.style.SUCCESS(f"Admin login: {user} / {password}  (as created; change it in admin)"))
        else:
            self.stdout.write("An admin user exists already; `manage.py changepassword <user>` resets a password.")
