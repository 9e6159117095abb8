"""Show every circuit breaker's live state."""

import json

from django.core.management.base import BaseCommand, CommandError

from breakers import services
from gateway_project.management import require_shared_store


class Command(BaseCommand):
    help = "List every upstream's breaker: mode, live state, failure counts, next probe and last transition."

    def add_arguments(self, parser):
        parser.add_argument("upstreams", nargs="*", metavar="UPSTREAM", help="Only these upstreams.")
        parser.add_argument("--json", action="store_true", help="One JSON document, for scripts.")

    def handle(self, *args, **options):
        require_shared_store()
        try:
            statuses = services.live_states(names=options["upstreams"] or None)
        except services.UnknownUpstream as exc:
            raise CommandError(str(exc)) from exc
        if options["json"]:
            self.stdout.write(json.dumps([s.as_dict() for s in statuses], indent=2))
            return
        header = ("UPSTREAM", "MODE", "STATE", "CONSEC", "WINDOW", "NEXT PROBE", "LAST TRANSITION")
        rows = [header]
        for s in statuses:
            last = s.last_transition
            rows.append(
                (
                    s.upstream,
                    s.mode,
                    s.state if s.error is None else f"unknown ({s.error})",
                    str(s.consecutive_failures),
                    f"{s.window_failures}/{s.window_calls}",
                    f"{s.next_probe_in:.0f}s" if s.next_probe_in is not None else "-",
                    f"{last.at:%Y-%m-%d %H:%M:%S} {last.from_state}->{last.to_state}: {last.reason}" if last else "-",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for row in rows:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
