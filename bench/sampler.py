#!/usr/bin/env python
"""What the status page's background sampler costs a gevent worker's requests, with N routes.

    .venv/bin/python bench/sampler.py 100     # 100 routes

The sampler runs in every gunicorn worker that has no GATEWAY_PROMETHEUS_URL, every 4 s; what it costs is how
long the worker's requests wait meanwhile. Reported, medians of 20 unless said:

- the history (the 10 minutes of samples kept): taking a sample, finding the last one fresh, opening the page;
- reading the instance's metrics for a sample: the four families it needs (what it does) against the whole
  collection, from the files of two workers that served every route;
- how late a greenlet that sleeps 1 ms wakes while samples are taken on the worker's loop and in gevent's
  thread pool (where the worker's sampler takes them).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVE = """
import sys
import django; django.setup()
from gateway_project import metrics
from limits import metrics as limit_metrics
for r in range(int(sys.argv[1])):
    for method, status in (("GET", 200), ("GET", 404), ("POST", 200), ("GET", 503)):
        metrics.observe_request(route=f"r{r}", method=method, status=status, seconds=0.003, body_in=1, body_out=9)
    metrics.own_error(route=f"r{r}", status=503, error="circuit_open")
    metrics.observe_upstream(upstream=f"up{r}", seconds=0.002, retry_reasons=["connect"])
    metrics.observe_attempt(upstream=f"up{r}", target="10.0.0.1:80", outcome="200")
    limit_metrics.ratelimit_decisions.labels(f"policy{r % 10}", "allowed").inc()
"""


def median_ms(call, times: int = 20) -> tuple[float, float]:
    took = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took), max(took)


def history(status, routes: int) -> str:
    def take(now: float) -> dict:
        row = {"n": now, "4xx": 1.0, "429": 0.0, "5xx": 2.0, "own5xx": 0.0, "b": [now] * len(status.BUCKETS)}
        rows = {f"route-{i}": dict(row) for i in range(routes)}
        return {"t": now, "routes": rows, "policies": {"p": {"allowed": now}}}

    every = status.SAMPLE_EVERY
    with tempfile.TemporaryDirectory() as run_dir:
        count = int(status.KEEP / every)
        for index in range(count):
            status.samples(run_dir, now=1000.0 + index * every, take=take, wait=False)
        clock = iter(range(1, 1000))
        base = 1000.0 + count * every
        due = median_ms(lambda: status.samples(run_dir, now=base + next(clock) * every, take=take, wait=False))
        fresh = median_ms(lambda: status.samples(run_dir, now=base + 0.5, take=take, wait=False))
        page = median_ms(lambda: status.samples(run_dir, now=base + 0.5, take=take), 3)
        size = sum(f.stat().st_size for f in Path(run_dir).iterdir())
    return (
        f"history of {count} samples ({size / 1e6:.2f} MB): taking a sample {due[0]:.2f} ms (at most {due[1]:.2f}), "
        f"finding it fresh {fresh[0]:.3f} ms (at most {fresh[1]:.3f}), opening the page {page[0]:.1f} ms"
    )


def reading(status, metrics, multiprocess, routes: int) -> str:
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(2):  # two workers
        subprocess.run([sys.executable, "-c", SERVE, str(routes)], env=env, check=True)
    series = sum(len(f.samples) for f in multiprocess.MultiProcessCollector(None, directory).collect())
    whole = median_ms(lambda: list(multiprocess.MultiProcessCollector(None, directory).collect()), 10)
    needed = median_ms(lambda: metrics.families(status.SAMPLED), 10)
    return (
        f"metrics of 2 workers, {series:,} series: the four families a sample reads {needed[0]:.1f} ms "
        f"(at most {needed[1]:.1f}), the whole collection {whole[0]:.1f} ms (at most {whole[1]:.1f})"
    )


def lateness(status, gevent) -> str:
    found = []
    for where in ("on the loop", "in the thread pool"):
        late: list[float] = []
        done = []

        def ticker(late=late, done=done):
            while not done:
                started = time.perf_counter()
                gevent.sleep(0.001)
                late.append((time.perf_counter() - started - 0.001) * 1000)

        with tempfile.TemporaryDirectory() as run_dir:
            step = status.samples
            if where != "on the loop":
                gevent.get_hub().threadpool.apply(time.sleep, (0,))  # the pool's thread started beforehand

                def step(*args, **kwargs):
                    return gevent.get_hub().threadpool.apply(status.samples, args, kwargs)

            runner = gevent.spawn(ticker)
            gevent.sleep(0.05)
            for index in range(10):
                step(run_dir, now=1000.0 + index * status.SAMPLE_EVERY, wait=False)
                gevent.sleep(0.02)
            done.append(True)
            runner.join()
        found.append(f"{where} at most {max(late):.1f} ms (median {statistics.median(late):.2f})")
    return "a 1 ms sleep woke late during 10 samples: " + "; ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("routes", type=int, nargs="?", default=100)
    routes = parser.parse_args().routes
    with tempfile.TemporaryDirectory() as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
        sys.path.insert(0, str(ROOT))
        from gevent import monkey

        monkey.patch_all()
        import django
        import gevent
        from prometheus_client import multiprocess

        django.setup()
        from gateway_project import metrics, status

        print(f"{routes} routes")
        print(history(status, routes))
        print(reading(status, metrics, multiprocess, routes))
        status.take_sample()  # the keys decoded once, as in a worker that has sampled before
        gc.freeze()  # as the gateway's worker does once the application is loaded
        print(lateness(status, gevent))


if __name__ == "__main__":
    main()
