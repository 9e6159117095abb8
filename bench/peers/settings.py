"""The Python peers of the benchmark: Django's hello-world floor and django-revproxy, in one tiny project.

No database, no sessions, no middleware: the least Django can do per request.
"""

import os

SECRET_KEY = "benchmark-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "peers.urls"
INSTALLED_APPS = ["revproxy"]
MIDDLEWARE = []
DATABASES = {}
USE_TZ = True
UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:9")
LOGGING_CONFIG = None
