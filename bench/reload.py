#!/usr/bin/env python
"""What loading a changed configuration costs a gevent worker's requests, with N routes.

    .venv/bin/python bench/reload.py 1000          # 1,000 upstreams, each with a route
    (cd /tmp/before && $OLDPWD/.venv/bin/python $OLDPWD/bench/reload.py 1000)   # another checkout's code

Every worker loads a changed configuration on the event loop its requests run on (gateway_project/runtime.py).
This makes N upstreams and N routes in a fresh SQLite database (with the checkout it is run from), then, in a
process patched by gevent as a worker is and with what exists frozen for the garbage collector as the worker
does, loads the configuration 7 times while a greenlet sleeps 1 ms in a loop. Reported: the load's median and
range, and how late that greenlet woke at worst (the longest time the loop could not serve a request).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
from gevent import monkey

monkey.patch_all()
import gc
import statistics
import time

import django
import gevent

django.setup()
from gateway_project import runtime

runtime.load()
gc.freeze()
late = []


def ticker():
    last = time.perf_counter()
    while True:
        gevent.sleep(0.001)
        now = time.perf_counter()
        late.append(now - last - 0.001)
        last = now


gevent.spawn(ticker)
gevent.sleep(0.05)
took = []
for _ in range(7):
    started = time.perf_counter()
    runtime.load()
    took.append(time.perf_counter() - started)
    gevent.sleep(0.05)
late.sort()
print(
    f"load: median {statistics.median(took) * 1000:.0f} ms ({min(took) * 1000:.0f}-{max(took) * 1000:.0f}); "
    f"the loop's longest wait {late[-1] * 1000:.0f} ms, the next ones "
    + ", ".join(f"{x * 1000:.0f}" for x in reversed(late[-6:-1]))
    + " ms"
)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("routes", type=int, nargs="?", default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gateway-reload-"))
    try:
        config = {
            "version": 1,
            "upstreams": [
                {"name": f"u{i}", "base_url": f"http://127.0.0.1:{20000 + i % 40000}"} for i in range(args.routes)
            ],
            "routes": [{"name": f"r{i}", "path_prefix": f"/r{i}", "upstream": f"u{i}"} for i in range(args.routes)],
        }
        (work / "gateway.json").write_text(json.dumps(config))
        env = {
            **os.environ,
            "DEBUG": "0",
            "SECRET_KEY": "benchmark-secret-key-0123456789abcdefghijklmnop",
            "ALLOWED_HOSTS": "*",
            "DATABASE_URL": f"sqlite:///{work / 'gateway.sqlite3'}",
            "REDIS_URL": "",
            "GATEWAY_VAR_DIR": str(work / "var"),
            "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
        }
        for command in (["migrate", "--noinput", "-v", "0"], ["gateway_import", str(work / "gateway.json")]):
            subprocess.run([sys.executable, "manage.py", *command], env=env, check=True, stdout=subprocess.DEVNULL)
        print(f"{args.routes} routes and upstreams, {os.getcwd()}:", flush=True)
        subprocess.run([sys.executable, "-c", CHILD], env=env, check=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
