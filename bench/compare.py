#!/usr/bin/env python
"""The gateway from two or more checkouts side by side, for a change's before and after.

    git worktree add /tmp/before main
    .venv/bin/python bench/compare.py /tmp/before .                      # 3 runs x 8 s at 64 connections
    .venv/bin/python bench/compare.py /tmp/before . --conns 64 8 1 --peers   # + Django's hello world, revproxy

Each checkout's gateway runs under gunicorn (2 workers, the project's gunicorn.conf.py) with its own SQLite
database and Redis database, in front of one nginx upstream, with the same configuration as bench/run.py's
gateway (one route, a rate-limit policy on every request that is never hit, the breaker, metrics, the access
log). The cells alternate between the checkouts within each run, so both see the same machine; the report is
the median per checkout of req/s, p50, p99 and CPU per request. Every checkout runs with this virtualenv's
packages. Runs on a 2-core machine vary by 5-10 % from one to the next: trust a difference that holds in every
run. Everything listens on 127.0.0.1 and stops when the script ends.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from run import BENCH, BIN, BODY, NEVER_HIT, ROOT, Process, free_port, start_nginx, wait_http, wrk

CONFIG = {
    "version": 1,
    "upstreams": [{"name": "bench", "base_url": "", "read_timeout": 60, "deadline": 120}],
    "routes": [{"name": "bench", "path_prefix": "/gw", "upstream": "bench"}],
    "rate_limits": [NEVER_HIT],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="+", type=Path, help="project checkouts to compare")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per cell")
    parser.add_argument("--conns", type=int, nargs="+", default=[64], help="wrk connections per cell")
    parser.add_argument("--peers", action="store_true", help="also Django's hello world and django-revproxy")
    parser.add_argument(
        "--routes",
        type=int,
        default=1,
        help="routes configured (to the same upstream); traffic goes to all of them for 5 s before the cells, so "
        "each has its metric series, and the cells measure one",
    )
    parser.add_argument(
        "--history",
        action="store_true",
        help="start each gateway with 10 minutes of status-page samples of every route, as after 10 minutes of "
        "running (the status page's background sampler keeps them; written by each checkout's own code)",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gateway-compare-"))
    work.chmod(0o755)  # nginx workers run as an unprivileged user
    processes: list[Process] = []
    try:
        upstream_port, redis_port = free_port(), free_port()
        upstream_body = f"""
  server {{
    listen 127.0.0.1:{upstream_port} backlog=4096;
    location = /small {{ default_type application/json; return 200 '{BODY}'; }}
  }}"""
        processes.append(start_nginx(work, "upstream", upstream_body, workers=1))
        processes.append(
            Process(
                "redis",
                ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                log=work / "redis.log",
            )
        )
        config = json.loads(json.dumps(CONFIG))
        config["upstreams"][0]["base_url"] = f"http://127.0.0.1:{upstream_port}"
        config["routes"] += [
            {"name": f"r{i}", "path_prefix": f"/r{i}", "upstream": "bench"} for i in range(args.routes - 1)
        ]
        (work / "spread.lua").write_text(
            f'request = function() return wrk.format("GET", "/r" .. math.random(0, {args.routes - 2}) .. "/small") end'
        )
        (work / "gateway.json").write_text(json.dumps(config))
        targets: dict[str, tuple[str, Process]] = {}
        first_env: dict[str, str] = {}
        for index, checkout in enumerate(args.checkouts):
            checkout = checkout.resolve()
            port = free_port()
            env = {
                "DEBUG": "0",
                "SECRET_KEY": "benchmark-secret-key-0123456789abcdefghijklmnop",
                "ALLOWED_HOSTS": "*",
                "DATABASE_URL": f"sqlite:///{work / f'gateway{index}.sqlite3'}",
                "REDIS_URL": f"redis://127.0.0.1:{redis_port}/{index + 3}",
                "GATEWAY_LISTEN": f"127.0.0.1:{port}",
                "GATEWAY_WORKERS": "2",
                "GATEWAY_LOG_LEVEL": "INFO",
                "GATEWAY_VAR_DIR": str(work / f"var{index}"),
                "GATEWAY_RUN_DIR": str(work / f"run{index}"),
                "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
            }
            (work / f"run{index}").mkdir()
            first_env = first_env or env
            for command in (["migrate", "--noinput", "-v", "0"], ["gateway_import", str(work / "gateway.json")]):
                subprocess.run(
                    [sys.executable, "manage.py", *command],
                    cwd=checkout,
                    env={**os.environ, **env},
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
            if args.history:
                subprocess.run(
                    [sys.executable, "-c", HISTORY, str(args.routes)],
                    cwd=checkout,
                    env={**os.environ, **env},
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
            name = f"{index}: {checkout}"
            process = Process(
                f"gateway{index}",
                [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "gateway_project.wsgi"],
                cwd=checkout,
                env=env,
                log=work / f"gateway{index}.log",
            )
            processes.append(process)
            targets[name] = (f"http://127.0.0.1:{port}/gw/small", process)
        if args.peers:
            common = {"PYTHONPATH": f"{BENCH}:{ROOT}", "BENCH_UPSTREAM": f"http://127.0.0.1:{upstream_port}/"}
            hello_port, revproxy_port = free_port(), free_port()
            hello_env = {
                **first_env,
                **common,
                "GATEWAY_LISTEN": f"127.0.0.1:{hello_port}",
                "REDIS_URL": f"redis://127.0.0.1:{redis_port}/1",
                "DJANGO_SETTINGS_MODULE": "peers.settings",
                "GATEWAY_LOG_LEVEL": "WARNING",
            }
            hello = Process(
                "hello",
                [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), "peers.wsgi:application"],
                env=hello_env,
                cwd=BENCH,
                log=work / "hello.log",
            )
            revproxy = Process(
                "revproxy",
                [
                    *(str(BIN / "gunicorn"), "-w", "2", "-k", "sync", "-b", f"127.0.0.1:{revproxy_port}"),
                    *("--no-control-socket", "peers.wsgi:application"),
                ],
                env=common,
                cwd=BENCH,
                log=work / "revproxy.log",
            )
            processes += [hello, revproxy]
            targets["django hello world"] = (f"http://127.0.0.1:{hello_port}/hello", hello)
            targets["django-revproxy"] = (f"http://127.0.0.1:{revproxy_port}/proxy/small", revproxy)
        for name, (url, process) in targets.items():
            try:
                wait_http(url, 60)
            except RuntimeError as exc:
                tail = process.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name}: {exc}; the end of its log:\n{tail}") from None
            wrk(url, 8, 2)  # warm-up: pools, caches, scripts
            if args.routes > 1 and url.endswith("/gw/small"):  # a gateway
                base = url.rsplit("/gw/", 1)[0]
                subprocess.run(
                    ["wrk", "-t2", "-c8", "-d5s", "-s", str(work / "spread.lua"), f"{base}/"],
                    check=True,
                    capture_output=True,
                )

        results: dict[tuple[int, str], list[dict]] = {}
        for run in range(args.runs):
            for connections in args.conns:
                for name, (url, process) in targets.items():
                    cpu = process.cpu_seconds()
                    result = wrk(url, connections, args.duration)
                    if result["non_2xx"] or result["socket_errors"]:
                        raise RuntimeError(f"{name} at {connections} connections: {result}")
                    result["cpu"] = (process.cpu_seconds() - cpu) * 1e6 / max(result["requests"], 1)
                    results.setdefault((connections, name), []).append(result)
                    print(f"run {run + 1} c={connections:<3} {name:50} {_line(result)}", flush=True)
        print("\nmedians:")
        for (connections, name), runs in results.items():
            median = {key: statistics.median(r[key] for r in runs) for key in ("rps", "p50", "p99", "cpu")}
            print(f"c={connections:<3} {name:50} {_line(median)}")
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(work, ignore_errors=True)


#: Run in a checkout before its gateway starts: 10 minutes of samples of `argv[1]` routes (all at zero, so that
#: the gateway's first real sample, never smaller, keeps them), written by that checkout's own status module.
HISTORY = """
import os, sys, time
import django
django.setup()
from gateway_project import status
routes, now = int(sys.argv[1]), time.time()
row = {"n": 0.0, "4xx": 0.0, "429": 0.0, "5xx": 0.0, "own5xx": 0.0, "b": [0.0] * len(status.BUCKETS)}
names = ["bench"] + [f"r{i}" for i in range(routes - 1)]
def take(now):
    return {"t": now, "routes": {name: dict(row) for name in names}, "policies": {}}
for index in range(int(status.KEEP / status.SAMPLE_EVERY)):
    status.samples(os.environ["GATEWAY_RUN_DIR"], now=now - status.KEEP + index * status.SAMPLE_EVERY, take=take)
"""


def _line(result: dict) -> str:
    return (
        f"{result['rps']:8,.0f} req/s  p50 {result['p50'] * 1000:6.2f} ms  p99 {result['p99'] * 1000:7.2f} ms  "
        f"cpu {result['cpu']:5.0f} us/req"
    )


if __name__ == "__main__":
    main()
