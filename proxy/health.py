"""Target health shared within one gateway instance: active checks by one leader, and each worker's view.

Passive health (proxy.balancing) is decided by each worker alone, from its own requests: no shared state on
the request path. Active checks must not run once per worker (N workers would probe every target N times per
interval), and their verdict must reach every worker. So, per instance, through files in GATEWAY_RUN_DIR
(which gunicorn.conf.py creates for each instance):

- every worker runs a background thread; the one that holds an exclusive `flock` on `health.lock` is the
  leader and probes the targets of every upstream that has a check path, off the request path, each at its
  interval, and writes the verdicts to `active.json` (replaced atomically). When the leader dies the kernel
  releases its lock and another worker's thread takes it within a tick;
- every worker's thread reads `active.json` when it changes and applies the verdicts to its targets;
- every worker writes its passive view of its targets to `worker-<pid>.json` once a second, so the admin
  (proxy.services.target_health) can show every worker's ejections, not only those of the worker it runs in.

A target starts healthy; `unhealthy_threshold` failed checks in a row take it out, `healthy_threshold` passed
ones in a row bring it back. Probes send `User-Agent: gateway-health-check (pid N)`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError

from gateway_project import runtime

logger = logging.getLogger(__name__)

LOCK, ACTIVE = "health.lock", "active.json"
WORKER_PREFIX = "worker-"
TICK = 0.25
PUBLISH_EVERY = 1.0
MAX_PARALLEL_PROBES = 16


def write_json(path: Path, data: Any) -> None:
    """Replace a file's content atomically: a reader sees the old or the new document, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def compiled_upstreams() -> list:
    """The upstreams the current configuration routes to, compiled (each once)."""
    found = {}
    for route in runtime.get("routes").routes:
        found.setdefault(route.upstream.id, route.upstream)
    return list(found.values())


class Verdict:
    """The leader's running count of one target's checks."""

    __slots__ = ("checked_at", "error", "failures", "healthy", "passes", "status")

    def __init__(self) -> None:
        self.healthy = True
        self.passes = 0
        self.failures = 0
        self.status: int | None = None
        self.error: str | None = None
        self.checked_at = 0.0

    def record(self, ok: bool, status: int | None, error: str | None, *, healthy_after: int, unhealthy_after: int):
        self.status, self.error, self.checked_at = status, error, time.time()
        if ok:
            self.passes, self.failures = self.passes + 1, 0
            if not self.healthy and self.passes >= healthy_after:
                self.healthy = True
        else:
            self.passes, self.failures = 0, self.failures + 1
            if self.healthy and self.failures >= unhealthy_after:
                self.healthy = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "status": self.status,
            "error": self.error,
            "checked_at": self.checked_at,
            "passes": self.passes,
            "failures": self.failures,
        }


class Prober:
    """The leader's work: probe each checked upstream's targets when due; keep the verdicts."""

    def __init__(self, *, clock=time.monotonic) -> None:
        self.clock = clock
        self.due: dict[int, float] = {}
        self.verdicts: dict[int, dict[str, Verdict]] = {}
        self.manager = urllib3.PoolManager(num_pools=100, maxsize=2, retries=False)
        self.executor = ThreadPoolExecutor(MAX_PARALLEL_PROBES, thread_name_prefix="gateway-health-probe")
        self.user_agent = f"gateway-health-check (pid {os.getpid()})"

    def run_due(self, upstreams: list) -> bool:
        """Probe the upstreams whose interval has come; True if any verdict changed."""
        now = self.clock()
        checked = {u.id for u in upstreams if u.check is not None}
        for gone in set(self.verdicts) - checked:
            del self.verdicts[gone]
            self.due.pop(gone, None)
        jobs = []
        for upstream in upstreams:
            if upstream.check is None or self.due.get(upstream.id, 0.0) > now:
                continue
            self.due[upstream.id] = now + upstream.check.interval
            verdicts = self.verdicts.setdefault(upstream.id, {})
            addresses = {t.address for t in upstream.targets}
            for address in set(verdicts) - addresses:
                del verdicts[address]
            for target in upstream.targets:
                verdict = verdicts.setdefault(target.address, Verdict())
                jobs.append((upstream, verdict, self.executor.submit(self.probe, upstream, target)))
        changed = False
        for upstream, verdict, job in jobs:
            before = verdict.healthy
            verdict.record(
                *job.result(),
                healthy_after=upstream.check.healthy_threshold,
                unhealthy_after=upstream.check.unhealthy_threshold,
            )
            changed = changed or verdict.healthy != before
        return changed or bool(jobs)

    def probe(self, upstream, target) -> tuple[bool, int | None, str | None]:
        check = upstream.check
        pool = self.manager.connection_from_host(
            target.host, target.port, upstream.scheme, pool_kwargs=target.pool_kwargs
        )
        try:
            response = pool.urlopen(
                "GET",
                upstream.base_path + check.path,
                headers={"Host": upstream.host_header, "User-Agent": self.user_agent},
                timeout=urllib3.Timeout(connect=check.timeout, read=check.timeout),
                retries=False,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
            )
        except HTTPError as exc:
            return False, None, type(exc).__name__
        try:
            response.read(64 * 1024)
        except HTTPError:
            response.close()
        response.release_conn()
        return response.status in check.statuses, response.status, None

    def document(self) -> dict[str, Any]:
        return {
            str(upstream_id): {address: v.as_dict() for address, v in verdicts.items()}
            for upstream_id, verdicts in self.verdicts.items()
        }


def apply_active(document: dict[str, Any] | None, upstreams: list) -> None:
    """Give each checked target of this worker the leader's verdict (healthy until one says otherwise)."""
    document = document or {}
    for upstream in upstreams:
        if upstream.check is None:
            continue
        verdicts = document.get(str(upstream.id), {})
        for target in upstream.targets:
            target.state.active_healthy = verdicts.get(target.address, {}).get("healthy", True)


def passive_document(upstreams: list, now: float) -> dict[str, Any]:
    return {
        str(upstream.id): {t.address: t.state.as_dict(now) for t in upstream.targets}
        for upstream in upstreams
        if len(upstream.targets) > 1 or upstream.check is not None
    }


class HealthThread(threading.Thread):
    """Each worker's: lead the checks if it can, apply the verdicts, publish its passive view."""

    def __init__(self, run_dir: Path, tick: float = TICK) -> None:
        super().__init__(name="gateway-target-health", daemon=True)
        self.run_dir = run_dir
        self.tick = tick
        self.lock_fd: int | None = None
        self.leader = False
        self.prober: Prober | None = None
        self.seen_active: int | None = None
        self.published = 0.0
        self.last_passive: dict | None = None
        self.worker_file = run_dir / f"{WORKER_PREFIX}{os.getpid()}.json"

    def run(self) -> None:
        while True:
            time.sleep(self.tick)
            try:
                self.round()
            except Exception:
                logger.exception("target health round failed")

    def try_lead(self) -> bool:
        if self.lock_fd is None:
            self.lock_fd = os.open(self.run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        logger.info("leading the active health checks of this instance", extra={"pid": os.getpid()})
        self.leader = True
        self.prober = Prober()
        return True

    def apply_verdicts(self, upstreams: list) -> None:
        """Apply the instance's verdicts to this worker's targets when they changed since the last time."""
        with contextlib.suppress(FileNotFoundError):
            stamp = (self.run_dir / ACTIVE).stat().st_mtime_ns
            if stamp != self.seen_active:
                self.seen_active = stamp
                apply_active(read_json(self.run_dir / ACTIVE), upstreams)

    def round(self) -> None:
        upstreams = compiled_upstreams()
        if (self.leader or self.try_lead()) and self.prober.run_due(upstreams):
            write_json(self.run_dir / ACTIVE, self.prober.document())
        self.apply_verdicts(upstreams)
        now = time.monotonic()
        if now - self.published >= PUBLISH_EVERY:
            passive = passive_document(upstreams, now)
            if passive != self.last_passive or now - self.published >= 10 * PUBLISH_EVERY:
                write_json(self.worker_file, {"pid": os.getpid(), "at": time.time(), "upstreams": passive})
                self.last_passive = passive
            self.published = now


_started_pid: int | None = None


def start(run_dir: str) -> None:
    """Start the worker's health thread once per process (gunicorn workers; never commands or tests in-process)."""
    global _started_pid
    if not run_dir or _started_pid == os.getpid():
        return
    _started_pid = os.getpid()
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    thread = HealthThread(Path(run_dir))
    # Before this worker serves (a worker started in place of another one, say): the verdicts the instance
    # already has, so that no request goes to a target known to fail its checks while the first round waits.
    try:
        thread.apply_verdicts(compiled_upstreams())
    except Exception:  # never keep a worker from starting: the thread's first round applies them
        logger.exception("applying the instance's target health verdicts at start failed")
    thread.start()
