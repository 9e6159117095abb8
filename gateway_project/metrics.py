"""The gateway's Prometheus metrics, and the listeners that feed them from the apps.

Under gunicorn every worker writes its samples to PROMETHEUS_MULTIPROC_DIR (set by gunicorn.conf.py, cleaned
at start, dead workers marked), and /metrics adds them up, so the counters match the requests served by
all workers together.

Labels are bounded: route and upstream names come from the configuration, the method from an allowlist (else
OTHER), the status is a status code. Requests that matched no route count under route "(none)", the
gateway's own endpoints under "(gateway)". Never a raw path, address or key.
"""

from __future__ import annotations

import glob
import json
import logging
import os

from gevent.monkey import get_original
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict


def keep_process_id_in_memory() -> None:
    """Called by the settings, before any metric value exists: prometheus_client's multiprocess values then take
    the process ID from memory, renewed in every forked child, instead of asking the kernel (getpid(2)) on every
    increment to notice a fork. A proxied request makes eight increments.

    Values made by two value classes in one process would each lay out the same file. So this must run before
    the process, or the process it was forked from, has made any metric value: in a gunicorn master (which
    makes none) or a process of its own. As a guard it changes nothing when this process has a value file
    already (its name ends in the process ID); values inherited through a fork have none yet, and are the
    caller's to rule out. It takes effect once per process tree.
    """
    global _process_id
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if _process_id or not directory or glob.glob(os.path.join(directory, f"*_{os.getpid()}.db")):
        return
    from prometheus_client import values

    _process_id = [os.getpid()]

    def renew() -> None:
        _process_id[0] = os.getpid()

    os.register_at_fork(after_in_child=renew)
    values.ValueClass = _tallied(values.MultiProcessValue(lambda: _process_id[0]))


#: The process ID the metric values read (keep_process_id_in_memory), or None.
_process_id: list[int] | None = None


def _tallied(base: type) -> type:
    """`base` (prometheus_client's multiprocess value) with its increments tallied in memory while
    `tally_per_loop_pass` is on in this thread, and written to the worker's file once per pass of the event loop.

    A proxied request makes eight increments. Each takes the module's lock (gevent's, a Python-level one under
    monkey patching) and writes the value into the mmap: 1.4 us for a counter, 2.9 us for a histogram's
    observation here, about 12 us of a request's 290. Tallied, an increment is a dictionary update, and the
    requests of one loop pass share one write per series."""

    class TalliedValue(base):
        def inc(self, amount):
            pending = _pending
            if pending is None or _get_ident() != _tally_thread:
                base.inc(self, amount)
                return
            if not pending:
                _schedule(flush)
            pending[self] = pending.get(self, 0) + amount

        def set(self, value, timestamp=None):
            if _pending:
                _pending.pop(self, None)  # what was added before is overwritten
            base.set(self, value, timestamp)

        def get(self):
            return base.get(self) + (_pending.get(self, 0) if _pending else 0)

        def write(self, amount) -> None:
            base.inc(self, amount)

    return TalliedValue


#: The increments not yet written, by value, while tallying is on; None when it is off (increments are written at
#: once). Only the thread that turned it on (the gevent hub's) tallies; any other writes at once.
_pending: dict | None = None
_tally_thread: int | None = None
_schedule = None
#: The OS thread's identity, whatever gevent's monkey patching made of `threading.get_ident`.
_get_ident = get_original("_thread", "get_ident")


def tally_per_loop_pass(run_callback) -> None:
    """Tally metric increments in this thread and write them with `run_callback(flush)`: in a gevent worker, the
    hub loop's `run_callback`, which runs it once the greenlets ready now have run. Another worker's /metrics sees
    a request's counts one loop pass after the request's end; the worker's own /metrics flushes first. A worker
    killed outright loses at most one pass of counts. No-op unless this process's values are the tallied ones."""
    global _pending, _tally_thread, _schedule
    from prometheus_client import values

    if _process_id is None or not hasattr(values.ValueClass, "write"):
        return
    _tally_thread, _schedule, _pending = _get_ident(), run_callback, {}


def flush() -> None:
    """Write the tallied increments to this process's file (only in the tallying thread; elsewhere a no-op)."""
    global _pending
    if not _pending or _get_ident() != _tally_thread:
        return
    pending, _pending = _pending, {}
    for value, amount in pending.items():
        try:
            value.write(amount)
        except Exception:  # an mmap that could not grow: this series' counts are lost, no other's, no request
            logging.getLogger(__name__).exception("could not write a metric value")


def stop_tallying() -> None:
    """Write what is tallied and write every later increment at once (a worker's end)."""
    global _pending
    flush()
    _pending = None


def _forget_tally() -> None:
    """A forked child starts without its parent's tally, and writes at once until it turns tallying on."""
    global _pending, _tally_thread
    _pending = _tally_thread = None


os.register_at_fork(after_in_child=_forget_tally)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

requests_total = Counter(
    "gateway_requests", "Requests answered, by route, method and status.", ["route", "method", "status"]
)
request_duration = Histogram(
    "gateway_request_duration_seconds",
    "Time from request to response headers, by route.",
    ["route"],
    buckets=_LATENCY,
)
upstream_duration = Histogram(
    "gateway_upstream_duration_seconds",
    "Time until the upstream's response headers, all attempts of a request together, by upstream.",
    ["upstream"],
    buckets=_LATENCY,
)
upstream_retries = Counter(
    "gateway_upstream_retries",
    "Retries of upstream requests, by upstream and what was retried.",
    ["upstream", "reason"],
)
upstream_attempts = Counter(
    "gateway_upstream_attempts",
    "Attempts to reach an upstream's targets, by upstream, target (its configured address) and outcome (the "
    "status code, or connect, connect_timeout, read_timeout, protocol, other).",
    ["upstream", "target", "outcome"],
)
target_ejections = Counter(
    "gateway_target_ejections",
    "Targets taken out of the rotation by passive health (one worker's decision each), by upstream and target.",
    ["upstream", "target"],
)
retry_budget_exhausted_total = Counter(
    "gateway_retry_budget_exhausted",
    "Retries not made because the upstream's retry budget was spent, by upstream.",
    ["upstream"],
)
upgraded_open = Gauge(
    "gateway_upgraded_connections",
    "Upgraded connections (WebSocket, ...) open now, by route.",
    ["route"],
    multiprocess_mode="livesum",
)
upgraded_duration = Histogram(
    "gateway_upgraded_connection_duration_seconds",
    "How long upgraded connections stayed open, by route.",
    ["route"],
    buckets=(0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0),
)
upgrades_refused = Counter(
    "gateway_upgrades_refused",
    "Upgrade requests refused because the worker holds its most upgraded connections, by route.",
    ["route"],
)
bytes_in = Counter("gateway_request_body_bytes", "Request body bytes forwarded upstream, by route.", ["route"])
bytes_out = Counter("gateway_response_body_bytes", "Response body bytes sent to clients, by route.", ["route"])
redis_errors = Counter("gateway_redis_errors", "Redis calls that failed or timed out, by operation.", ["operation"])
own_errors = Counter(
    "gateway_errors",
    "Error responses the gateway made itself (never an upstream's answer relayed), by route, status and error code "
    "(the `error` field of the JSON body).",
    ["route", "status", "error"],
)

_children: dict[tuple, object] = {}


def child(metric, *labels):
    """metric.labels(*labels), cached: labels() takes a lock and builds a key on every call."""
    key = (metric, labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def bounded_method(method: str) -> str:
    """The method as a label: one of METHODS, else OTHER (a client can send any token as a method)."""
    return method if method in METHODS else "OTHER"


def observe_request(*, route: str, method: str, status: int, seconds: float, body_in: int, body_out: int) -> None:
    method = bounded_method(method)
    child(requests_total, route, method, str(status)).inc()
    child(request_duration, route).observe(seconds)
    if body_in:
        child(bytes_in, route).inc(body_in)
    if body_out:
        child(bytes_out, route).inc(body_out)


def own_error(*, route: str, status: int, error: str) -> None:
    child(own_errors, route, str(status), error).inc()


def observe_upstream(*, upstream: str, seconds: float, retry_reasons: list[str]) -> None:
    child(upstream_duration, upstream).observe(seconds)
    for reason in retry_reasons:
        child(upstream_retries, upstream, reason).inc()


def observe_attempt(*, upstream: str, target: str, outcome: str) -> None:
    child(upstream_attempts, upstream, target, outcome).inc()


def target_ejected(*, upstream: str, target: str) -> None:
    child(target_ejections, upstream, target).inc()


def retry_budget_exhausted(*, upstream: str) -> None:
    child(retry_budget_exhausted_total, upstream).inc()


def redis_error(operation: str) -> None:
    """Count a failed or timed-out Redis call of one part of the gateway (ratelimit, breaker, config)."""
    child(redis_errors, operation).inc()


def instance_registry() -> CollectorRegistry:
    """Every worker's metrics added up (or this process's, outside gunicorn): what /metrics and the admin's
    status page read."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return DEFAULT_REGISTRY


def families(names: frozenset[str]) -> list:
    """The named metric families, every worker's added up: what `instance_registry().collect()` gives for them.

    The status page's sampler reads 4 of the instance's families every few seconds in a worker, between its
    requests. Reading every series of every worker file, as `collect()` does, took 131 ms for 100 routes (4,710
    series); this decodes only the keys of the named families. Outside gunicorn: this process's registry.
    """
    flush()
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return [family for family in DEFAULT_REGISTRY.collect() if family.name in names]
    # A key is json.dumps([metric name, sample name, labels, help]) (prometheus_client.mmap_dict.mmap_key).
    prefixes = tuple(json.dumps([name])[:-1] + ", " for name in names)
    found: dict[str, Metric] = {}
    for file in glob.glob(os.path.join(path, "*.db")):
        kind = os.path.basename(file).split("_", 1)[0]
        if kind not in ("counter", "histogram"):
            continue  # the families read here are counters and histograms
        try:
            values = MmapedDict.read_all_values_from_file(file)
        except FileNotFoundError:
            continue
        for key, value, _timestamp, _position in values:
            if not key.startswith(prefixes):
                continue
            parsed = _keys.get(key)
            if parsed is None:
                if len(_keys) >= 100_000:  # series come and go with the configuration: keep this bounded
                    _keys.clear()
                metric_name, name, labels, help_text = json.loads(key)
                parsed = _keys[key] = (metric_name, name, tuple(sorted(labels.items())), help_text)
            metric = found.get(parsed[0])
            if metric is None:
                metric = found[parsed[0]] = Metric(parsed[0], parsed[3], kind)
            metric.add_sample(parsed[1], parsed[2], value)
    return list(multiprocess.MultiProcessCollector._accumulate_metrics(found, True))


#: A worker file's key -> its parts, decoded once: the keys of a series never change.
_keys: dict[str, tuple] = {}


def render() -> bytes:
    """The exposition of every worker's metrics (or this process's, outside gunicorn)."""
    flush()
    return generate_latest(instance_registry())
