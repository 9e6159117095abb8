"""A rate limit policy's live counters, and clearing one client's, as the admin's Live usage page does."""

import json
from dataclasses import asdict

from django.core.management.base import BaseCommand, CommandError
from redis.exceptions import RedisError

from gateway_project.audit import Actor
from gateway_project.management import require_shared_store
from limits import services
from limits.models import RateLimitPolicy


class Command(BaseCommand):
    help = "Show the busiest clients of POLICY right now (read from Redis), or clear one client's counter."

    def add_arguments(self, parser):
        parser.add_argument("policy")
        parser.add_argument("--clear", metavar="CLIENT", help="Forget this client's count, e.g. 'ip:<203.0.113.7>'.")
        parser.add_argument("--top", type=int, default=20)
        parser.add_argument("--json", action="store_true", help="One JSON document, for scripts.")

    def handle(self, *args, **options):
        require_shared_store()
        policy = RateLimitPolicy.objects.filter(name=options["policy"]).first()
        if policy is None:
            raise CommandError(f"no rate limit policy named {options['policy']!r}")
        try:
            if options["clear"] is not None:
                cleared = services.clear_counter(policy=policy, client=options["clear"], actor=Actor.cli())
                self.stdout.write(f"cleared {options['clear']}" if cleared else "that counter had already expired")
                return
            rows = services.policy_usage(policy=policy, top=options["top"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        except RedisError as exc:
            raise CommandError(f"Redis is unavailable ({type(exc).__name__})") from exc
        if options["json"]:
            self.stdout.write(json.dumps([asdict(r) for r in rows], indent=2))
            return
        if not rows:
            self.stdout.write(f"No client is being counted by {policy.name} right now.")
            return
        width = max(len(r.client) for r in rows)
        self.stdout.write(f"{'CLIENT'.ljust(width)}  USED  EXPIRES IN")
        for r in rows:
            self.stdout.write(f"{r.client.ljust(width)}  {r.used}/{r.limit}  {r.expires_in:.0f}s")
