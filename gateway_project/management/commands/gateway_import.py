"""Apply a configuration document: validate all of it first, then change everything in one transaction."""

import sys

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from gateway_project import configfile
from gateway_project.audit import Actor


class Command(BaseCommand):
    help = (
        "Import a configuration document (YAML or JSON; '-' reads standard input). Nothing changes unless the "
        "whole document is valid. Objects missing from a section are kept, or deleted with --prune."
    )

    def add_arguments(self, parser):
        parser.add_argument("file")
        parser.add_argument("--dry-run", action="store_true", help="Print what would change; change nothing.")
        parser.add_argument("--prune", action="store_true", help="Delete objects that are not in the document.")

    def handle(self, *args, **options):
        path = options["file"]
        try:
            if path == "-":
                text = sys.stdin.read()
            else:
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            plan = configfile.import_document(
                configfile.parse(text), actor=Actor.cli(), prune=options["prune"], dry_run=options["dry_run"]
            )
        except configfile.ConfigError as exc:
            raise CommandError(
                f"{path}: {len(exc.problems)} problem(s), nothing was changed:\n  " + "\n  ".join(exc.problems)
            ) from exc
        except DatabaseError as exc:
            # An operator's mistake or an outage, not a bug: say what happened in one line, not a traceback.
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CommandError(f"the database is unavailable, nothing was changed: {reason}") from exc
        if not plan.changes:
            self.stdout.write("No changes.")
            return
        for change in plan.changes:
            self.stdout.write(f"  {change.action} {change.object_type} {change.name!r}")
            if change.action == "update":
                for line in change.lines():
                    self.stdout.write(f"      {line}")
        if options["dry_run"]:
            self.stdout.write(f"Dry run: {len(plan.changes)} change(s) would be applied; nothing was changed.")
            return
        self.stdout.write(self.style.SUCCESS(f"Applied {len(plan.changes)} change(s)."))
