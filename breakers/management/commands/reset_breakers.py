"""Close circuit breakers and clear their counts, as the admin's reset action does."""

from django.core.management.base import BaseCommand, CommandError
from redis.exceptions import RedisError

from breakers import services
from gateway_project.audit import Actor
from gateway_project.management import require_shared_store


class Command(BaseCommand):
    help = "Reset the breakers of the named upstreams (or of every upstream with --all) to closed."

    def add_arguments(self, parser):
        parser.add_argument("upstreams", nargs="*", metavar="UPSTREAM")
        parser.add_argument("--all", action="store_true", help="Reset every upstream's breaker.")

    def handle(self, *args, **options):
        names = options["upstreams"]
        if bool(names) == options["all"]:
            raise CommandError("name one or more upstreams, or use --all (not both)")
        require_shared_store()
        try:
            done = services.reset_breakers(names=names or None, actor=Actor.cli())
        except services.UnknownUpstream as exc:
            raise CommandError(str(exc)) from exc
        except RedisError as exc:
            raise CommandError(f"Redis is unavailable ({type(exc).__name__}); nothing was reset") from exc
        held = set(services.held_open(names=done))
        for name in done:
            if name in held:
                self.stdout.write(
                    f"reset {name}, but its mode forced_open still holds it open "
                    f"(`manage.py breaker_mode normal {name}` lets requests through)"
                )
            else:
                self.stdout.write(f"reset {name}")
        if not done:
            self.stdout.write("no upstreams")
