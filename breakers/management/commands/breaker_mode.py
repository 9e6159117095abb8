"""Set the operator mode of circuit breakers, as the admin's live page does."""

from django.core.management.base import BaseCommand, CommandError

from breakers import services
from breakers.policy import MODES
from gateway_project.audit import Actor


class Command(BaseCommand):
    help = (
        "Set the breaker mode of the named upstreams (or of every upstream with --all): normal, forced_open "
        "(reject every request), disabled (always pass, still count) or shadow (count, never reject). Every "
        "gateway applies it within a second."
    )

    def add_arguments(self, parser):
        parser.add_argument("mode", choices=[str(m) for m in MODES])
        parser.add_argument("upstreams", nargs="*", metavar="UPSTREAM")
        parser.add_argument("--all", action="store_true", help="Every upstream's breaker.")

    def handle(self, *args, **options):
        names, mode = options["upstreams"], options["mode"]
        if bool(names) == options["all"]:
            raise CommandError("name one or more upstreams, or use --all (not both)")
        try:
            if options["all"]:
                names = services.upstream_names()
            changed = services.set_mode(names=names, mode=mode, actor=Actor.cli())
        except services.UnknownUpstream as exc:
            raise CommandError(str(exc)) from exc
        for name in names:
            self.stdout.write(f"{name}: {mode}" if name in changed else f"{name}: already {mode}")
