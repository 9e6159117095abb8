#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    from gateway_project import conf

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        conf.exit_on_error(exc)


if __name__ == "__main__":
    main()
