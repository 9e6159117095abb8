"""Write the whole gateway configuration as one YAML or JSON document (docs/configuration.md)."""

from django.core.management.base import BaseCommand

from gateway_project import configfile


class Command(BaseCommand):
    help = "Export upstreams, routes and every other configuration section as YAML (default) or JSON."

    def add_arguments(self, parser):
        parser.add_argument("--format", choices=("yaml", "json"), default="yaml")
        parser.add_argument("-o", "--output", help="Write to this file instead of standard output.")

    def handle(self, *args, **options):
        text = configfile.dump(configfile.export_document(), options["format"])
        if options["output"]:
            with open(options["output"], "w", encoding="utf-8") as fh:
                fh.write(text)
        else:
            self.stdout.write(text, ending="")
