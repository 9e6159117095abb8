"""Running management commands in-process, as an operator's shell would."""

from __future__ import annotations

import getpass
import io

from django.core.management import call_command

CLI = f"cli:{getpass.getuser()}"  # the audit trail's actor for a command run by this user


def command(*args) -> str:
    """Run a management command; return what it printed."""
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()
