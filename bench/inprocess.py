#!/usr/bin/env python
"""What the gateway's own code costs per proxied request, without gunicorn: its WSGI application called in a
loop on one greenlet, against a real nginx upstream and a real Redis on 127.0.0.1.

    .venv/bin/python bench/inprocess.py                   # CPU us per request, 5 repetitions of 2,000
    .venv/bin/python bench/inprocess.py --callgrind       # instructions per request, under valgrind
    .venv/bin/python bench/inprocess.py --cprofile tottime    # cProfile's table, sorted by that column

It measures the checkout it is run from, this script and virtualenv serving any checkout:
`cd /tmp/before && /work/main/.venv/bin/python /work/main/bench/inprocess.py --callgrind`.
Instructions counted by callgrind do not depend on what else the machine does, but runs of one commit still
varied by about 4 % (1.28 to 1.33 million per request over four runs on 2026-12-01): work on a timer, such as
the Redis pipe's TIME once a second, comes more often per request under valgrind's slowdown. Run each side
more than once. They leave out the kernel's work (system calls), which the CPU figures include.

The gateway runs as bench/run.py configures it (a rate-limit policy on every request that is never hit, the
breaker, metrics, the JSON access line, written to /dev/null here), with gevent's monkey patching as in a
worker.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WARM_UP = 300


def child(requests: int, cprofile: str | None) -> None:
    """In the process that runs the gateway: warm up, then serve `requests` and report."""
    from gevent import monkey

    monkey.patch_all()
    sys.path.insert(0, os.getcwd())
    import io

    from gevent import get_hub

    from gateway_project import metrics
    from gateway_project.wsgi import application

    if hasattr(metrics, "tally_per_loop_pass"):  # as a worker does (workers.GatewayWorker.run), since 2026-12-01
        metrics.tally_per_loop_pass(get_hub().loop.run_callback)

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # the access lines

    def environ() -> dict:
        return {
            "REQUEST_METHOD": "GET",
            "SCRIPT_NAME": "",
            "PATH_INFO": "/gw/small",
            "QUERY_STRING": "",
            "RAW_URI": "/gw/small",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": "127.0.0.1:8000",
            "HTTP_USER_AGENT": "wrk",
            "HTTP_ACCEPT": "*/*",
            "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_PORT": "50000",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.errors": sys.stderr,
            "wsgi.version": (1, 0),
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.url_scheme": "http",
        }

    statuses: list[str] = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    def one() -> None:
        body = application(environ(), start_response)
        for _ in body:
            pass
        body.close()
        if not statuses.pop().startswith("200"):
            raise SystemExit("the gateway did not answer 200")

    for _ in range(WARM_UP):
        one()
    if cprofile:
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.enable()
        for _ in range(requests):
            one()
        profile.disable()
        pstats.Stats(profile, stream=sys.stdout).sort_stats(cprofile).print_stats(40)
        if os.environ.get("BENCH_PSTATS"):
            profile.dump_stats(os.environ["BENCH_PSTATS"])
        return
    if os.environ.get("BENCH_INPROCESS_CALLGRIND"):
        for _ in range(requests):
            one()
        return
    for _ in range(5):
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(requests):
            one()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(f"{cpu / requests * 1e6:6.0f} us CPU, {wall / requests * 1e6:6.0f} us wall per request", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--callgrind", action="store_true", help="count instructions with valgrind")
    parser.add_argument("--cprofile", metavar="SORT", help="print cProfile's table sorted by SORT")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.requests, args.cprofile)
        return

    sys.path.insert(0, str(HERE))
    from run import BODY, NEVER_HIT, Process, free_port, start_nginx

    work = Path(tempfile.mkdtemp(prefix="gateway-inprocess-"))
    work.chmod(0o755)
    processes = []
    try:
        upstream_port, redis_port = free_port(), free_port()
        processes.append(
            start_nginx(
                work,
                "upstream",
                f"""
  server {{
    listen 127.0.0.1:{upstream_port};
    location = /small {{ default_type application/json; return 200 '{BODY}'; }}
  }}""",
                workers=1,
            )
        )
        processes.append(
            Process(
                "redis",
                ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                log=work / "redis.log",
            )
        )
        env = {
            **os.environ,
            "DEBUG": "0",
            "SECRET_KEY": "benchmark-secret-key-0123456789abcdefghijklmnop",
            "ALLOWED_HOSTS": "*",
            "DATABASE_URL": f"sqlite:///{work / 'gateway.sqlite3'}",
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "GATEWAY_VAR_DIR": str(work / "var"),
            "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
            "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics"),
            "PYTHONHASHSEED": "0",
        }
        (work / "metrics").mkdir()
        config = {
            "version": 1,
            "upstreams": [{"name": "bench", "base_url": f"http://127.0.0.1:{upstream_port}", "read_timeout": 60}],
            "routes": [{"name": "bench", "path_prefix": "/gw", "upstream": "bench"}],
            "rate_limits": [NEVER_HIT],
        }
        (work / "gateway.json").write_text(json.dumps(config))
        time.sleep(0.5)  # nginx and Redis listening
        for command in (["migrate", "--noinput", "-v", "0"], ["gateway_import", str(work / "gateway.json")]):
            subprocess.run([sys.executable, "manage.py", *command], env=env, check=True, stdout=subprocess.DEVNULL)
        me = [sys.executable, str(Path(__file__).resolve()), "--child"]
        if args.callgrind:
            if shutil.which("valgrind") is None:
                sys.exit("--callgrind needs valgrind (Debian: apt-get install valgrind)")
            counts = []
            for requests in (100, 400):  # the difference leaves out start-up and warm-up
                out = subprocess.run(
                    [
                        *("valgrind", "--tool=callgrind", f"--callgrind-out-file={work / 'callgrind.%p'}"),
                        *(*me, "--requests", str(requests)),
                    ],
                    env={**env, "BENCH_INPROCESS_CALLGRIND": "1"},
                    capture_output=True,
                    text=True,
                    check=True,
                )
                counts.append(int(re.search(r"Collected : (\d+)", out.stderr).group(1)))
            print(f"{(counts[1] - counts[0]) / 300:,.0f} instructions per request (callgrind, 300 requests)")
        else:
            command = [*me, "--requests", str(args.requests)]
            if args.cprofile:
                command += ["--cprofile", args.cprofile]
            subprocess.run(command, env=env, check=True)
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
