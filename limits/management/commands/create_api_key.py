"""Create an API key for a consumer (creating the consumer if asked) and print it once."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from gateway_project.audit import Actor
from limits import services
from limits.models import Consumer


class Command(BaseCommand):
    help = "Create an API key for CONSUMER and print it. The key is not stored; copy it now."

    def add_arguments(self, parser):
        parser.add_argument("consumer")
        parser.add_argument("--label", default="", help="What the key is for.")
        parser.add_argument("--create-consumer", action="store_true", help="Create the consumer if it is missing.")

    def handle(self, *args, **options):
        name, actor = options["consumer"], Actor.cli()
        with transaction.atomic():
            consumer = Consumer.objects.filter(name=name).first()
            if consumer is None:
                if not options["create_consumer"]:
                    raise CommandError(f"no consumer named {name!r} (use --create-consumer to create it)")
                consumer = Consumer(name=name)
                try:
                    services.save_consumer(consumer=consumer, actor=actor)
                except ValidationError as exc:
                    raise CommandError("; ".join(exc.messages)) from exc
            _, key = services.create_api_key(consumer=consumer, label=options["label"], actor=actor)
        self.stdout.write(key)
