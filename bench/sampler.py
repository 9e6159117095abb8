#!/usr/bin/env python
"""What the status page's background sampler costs a worker, with a full history of N routes.

    .venv/bin/python bench/sampler.py 100     # 100 routes, the 10 minutes of samples kept (KEEP / SAMPLE_EVERY)

A worker's sampler runs between its requests, so what it costs is how long a request arriving meanwhile
waits. Reports the median and the most of 20 steps that take a sample, of 20 that find the last one fresh,
and what opening the page (reading the whole history) takes. Reading the metric files themselves is left out
(`take` builds the sample): docs/operations.md has that cost by number of series.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django

django.setup()

from gateway_project import status  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("routes", type=int, nargs="?", default=100)
    routes = parser.parse_args().routes

    def take(now: float) -> dict:
        row = {"n": now, "4xx": 1.0, "429": 0.0, "5xx": 2.0, "own5xx": 0.0, "b": [now] * len(status.BUCKETS)}
        rows = {f"route-{i}": dict(row) for i in range(routes)}
        return {"t": now, "routes": rows, "policies": {"p": {"allowed": now}}}

    every = status.SAMPLE_EVERY
    with tempfile.TemporaryDirectory() as run_dir:
        count = int(status.KEEP / every)
        for index in range(count):
            status.samples(run_dir, now=1000.0 + index * every, take=take, wait=False)
        base = 1000.0 + count * every
        due, fresh = [], []
        for index in range(20):
            for now, into in ((base + index * every, due), (base + index * every + 1, fresh)):
                started = time.perf_counter()
                status.samples(run_dir, now=now, take=take, wait=False)
                into.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        kept = status.samples(run_dir, now=base + 20 * every + 1, take=take)
        page = (time.perf_counter() - started) * 1000
        size = sum(f.stat().st_size for f in Path(run_dir).iterdir())
    print(
        f"{routes} routes, {len(kept)} samples kept ({size / 1e6:.2f} MB): "
        f"taking a sample {statistics.median(due):.2f} ms (at most {max(due):.2f}), "
        f"finding it fresh {statistics.median(fresh):.3f} ms (at most {max(fresh):.3f}), opening the page {page:.1f} ms"
    )


if __name__ == "__main__":
    main()
