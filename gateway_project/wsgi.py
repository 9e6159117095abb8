"""WSGI entry point for gunicorn (see gunicorn.conf.py).

A response that takes the client's connection over (an upgraded connection: proxy/upgrade.py) is not handed to
gunicorn to write: its `take_over(environ)` writes to the socket itself, and gunicorn's async workers get their
ALREADY_HANDLED marker, on which they write nothing and go on to the connection's end.
"""

import os

from django.core.wsgi import get_wsgi_application
from gunicorn.workers.base_async import ALREADY_HANDLED

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

django_application = get_wsgi_application()


def application(environ, start_response):
    response = django_application(environ, start_response)
    take_over = getattr(response, "take_over", None)
    if take_over is None:
        return response
    take_over(environ)
    return ALREADY_HANDLED
