"""Read the audit trail: who changed what, from where, old -> new."""

import json

from django.core.management.base import BaseCommand

from gateway_project.configfile import show
from gateway_project.models import AuditEntry


class Command(BaseCommand):
    help = "Show the latest audit entries, newest first; filter by object type, object name and actor."

    def add_arguments(self, parser):
        parser.add_argument("--type", dest="object_type", help="upstream, route, consumer, rate_limit, api_key, ...")
        parser.add_argument("--object", dest="object_name", help="The object's name (an API key's prefix).")
        parser.add_argument("--actor", help="user:<name>, token:<prefix> (<user>) or cli:<os user>; a prefix works.")
        parser.add_argument("--limit", type=int, default=50)
        parser.add_argument("--json", action="store_true", help="One JSON document, for scripts.")

    def handle(self, *args, **options):
        entries = AuditEntry.objects.all()
        if options["object_type"]:
            entries = entries.filter(object_type=options["object_type"])
        if options["object_name"]:
            entries = entries.filter(object_name=options["object_name"])
        if options["actor"]:
            entries = entries.filter(actor__startswith=options["actor"])
        entries = list(entries[: options["limit"]])
        if options["json"]:
            fields = ("at", "actor", "via", "address", "action", "object_type", "object_name", "changes", "note")
            rows = [{f: getattr(e, f) for f in fields} | {"at": e.at.isoformat()} for e in entries]
            self.stdout.write(json.dumps(rows, indent=2))
            return
        for e in entries:
            line = f"{e.at:%Y-%m-%d %H:%M:%S}  {e.actor} ({e.via} from {e.address or '?'})  {e.action} "
            self.stdout.write(line + f"{e.object_type} {e.object_name!r}" + (f"  [{e.note}]" if e.note else ""))
            for field, (old, new) in e.changes.items():
                self.stdout.write(f"    {field}: {show(old)} → {show(new)}")
