"""The process ID prometheus_client's multiprocess values name their files after, kept in memory
(gateway_project.metrics.keep_process_id_in_memory): each process still writes its own file, a forked child
included, and a process that already made values keeps the class it made them with."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import os, sys
    from gateway_project import metrics
    from prometheus_client import Counter, values
    from prometheus_client.mmap_dict import MmapedDict

    if sys.argv[1] == "made-one-before":
        early = Counter("early", "made before", registry=None)
        early.inc()
    default = values.ValueClass
    metrics.keep_process_id_in_memory()
    print("replaced" if values.ValueClass is not default else "kept", flush=True)
    counter = Counter("hits", "hits", ["who"], registry=None)
    counter.labels("parent").inc()
    child = os.fork()
    if child == 0:
        counter.labels("child").inc(5)
        os._exit(0)
    os.waitpid(child, 0)
    counter.labels("parent").inc()
    for name in sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])):
        path = os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], name)
        pid = name.rsplit("_", 1)[1].split(".")[0]
        who = "parent" if int(pid) == os.getpid() else "child"
        for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(path):
            if '"hits"' in key and value:
                print(who, key.split('"who": "')[1].split('"')[0], value, flush=True)
    """
)


def run(tmp_path, mode: str) -> list[str]:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True, check=True, cwd=os.getcwd()
    )
    return out.stdout.split("\n")[:-1]


def test_each_process_writes_its_own_file_with_the_id_in_memory(tmp_path):
    lines = run(tmp_path, "fresh")
    assert lines[0] == "replaced"
    # The child's increment went to a file named after the child, not into the parent's.
    assert sorted(lines[1:]) == ["child child 5.0", "parent parent 2.0"]


def test_a_process_with_values_already_keeps_its_value_class(tmp_path):
    lines = run(tmp_path, "made-one-before")
    assert lines[0] == "kept"
    assert sorted(lines[1:]) == ["child child 5.0", "parent parent 2.0"]
