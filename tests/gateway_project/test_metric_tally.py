"""Metric increments tallied in a gevent worker and written once per pass of its event loop
(gateway_project.metrics.tally_per_loop_pass): nothing is lost, a gauge's set() wins over what was added before,
another OS thread writes at once, and a forked child does not inherit its parent's tally."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()
    import json, os, sys
    import gevent
    from gevent import get_hub
    from gevent.monkey import get_original
    from gateway_project import metrics
    from prometheus_client import Counter, Gauge, Histogram
    from prometheus_client.mmap_dict import MmapedDict

    metrics.keep_process_id_in_memory()
    hits_family = Counter("hits", "hits", ["who"], registry=None)
    hits, hits_b = hits_family.labels("a"), hits_family.labels("b")
    took = Histogram("took", "took", ["who"], registry=None, buckets=(0.001, 0.005, 1.0)).labels("a")
    level = Gauge("level", "level", ["who"], registry=None, multiprocess_mode="livesum").labels("a")
    metrics.tally_per_loop_pass(get_hub().loop.run_callback)

    def written(pid=None):
        found = {}
        directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        for name in os.listdir(directory):
            if pid is not None and not name.endswith(f"_{pid}.db"):
                continue
            for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(os.path.join(directory, name)):
                metric, sample, labels, _help = json.loads(key)
                found[sample + "".join(f",{k}={v}" for k, v in sorted(labels.items()))] = value
        return {k: v for k, v in found.items() if v}

    out = {}
    for _ in range(100):
        hits.inc()
    for _ in range(10):
        took.observe(0.003)
    level.inc(5)
    level.set(2)
    out["before the pass"] = written()
    out["get before the pass"] = hits._value.get()
    gevent.sleep(0)  # the hub runs its callbacks: one write per series
    out["after the pass"] = written()

    hits.inc(3)
    child = os.fork()
    if child == 0:
        hits.inc(1)  # the child's own tally is off: written at once, to its own file, without the parent's 3
        os._exit(0)
    get_original("os", "waitpid")(child, 0)  # gevent's own waitpid can miss a child's exit
    out["the child's file"] = written(child)
    # After the fork: a process that forks with gevent's pool threads running can hang in the child.
    def in_a_thread():  # another OS thread: written at once, seen in the file before the thread returns
        hits_b.inc(7)
        return written(os.getpid()).get("hits_total,who=b")

    out["from a thread"] = get_hub().threadpool.apply(in_a_thread)
    def refuse(amount):
        raise OSError("the mmap could not grow")

    hits.inc(1)
    hits_b.inc(2)
    hits._value.write = refuse  # this series' write fails; the other's still goes out
    gevent.sleep(0)
    del hits._value.write
    out["after a failed write"] = written(os.getpid()).get("hits_total,who=b")
    metrics.stop_tallying()
    out["at the end"] = written(os.getpid())["hits_total,who=a"]
    hits.inc(1)
    out["after the end"] = written(os.getpid())["hits_total,who=a"]
    print(json.dumps(out))
    """
)


def test_tallied_increments_are_written_once_per_loop_pass_and_none_is_lost(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, cwd=os.getcwd())
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["before the pass"] == {"level,who=a": 2.0}  # set() writes at once, over the 5 added before
    assert out["get before the pass"] == 100
    assert out["after the pass"] == {
        "hits_total,who=a": 100.0,
        "took_bucket,le=0.005,who=a": 10.0,
        "took_sum,who=a": pytest.approx(0.03),
        "level,who=a": 2.0,
    }
    assert out["from a thread"] == 7.0
    assert out["the child's file"] == {"hits_total,who=a": 1.0}
    assert out["after a failed write"] == 9.0
    assert out["at the end"] == 103.0
    assert out["after the end"] == 104.0
