"""The figures of the admin's status page: per route, per rate-limit policy, over the last minute and the last
minutes, from this instance's own metrics or, when GATEWAY_PROMETHEUS_URL is set, from Prometheus (the fleet).

This instance: every worker's metrics added up (the multiprocess files /metrics reads too), sampled every
SAMPLE_EVERY seconds by a background thread in each gunicorn worker (whichever comes first takes the sample;
the others find it fresh) and when the page asks. The samples are kept in one file in GATEWAY_RUN_DIR, a line
each, that every worker of the instance shares (in memory outside gunicorn), so the charts show the last minutes as
soon as the page opens and do not depend on which worker answers a refresh. Nothing of this runs on the
proxied request path: a request only increments its counters, as it always did.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path

import gevent.monkey
import urllib3
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from gateway_project import metrics
from gateway_project.context import OWN

logger = logging.getLogger(__name__)

SAMPLE_EVERY = 4.0  # seconds between two samples, at least (the page refreshes every 5)
KEEP = 600.0  # seconds of samples kept: the charts' span
WINDOW = 60.0  # the figures are rates over this last stretch
BUCKETS = (*metrics._LATENCY, math.inf)

_memory: list[dict] = []
_memory_lock = threading.Lock()


def _route(sample_routes: dict, name: str) -> dict:
    found = sample_routes.get(name)
    if found is None:
        found = sample_routes[name] = {"n": 0.0, "4xx": 0.0, "429": 0.0, "5xx": 0.0, "own5xx": 0.0}
        found["b"] = [0.0] * len(BUCKETS)
    return found


#: The metric families a sample reads.
SAMPLED = frozenset(
    {"gateway_requests", "gateway_errors", "gateway_request_duration_seconds", "gateway_ratelimit_decisions"}
)


def take_sample(registry=None, now: float | None = None) -> dict:
    """One reading of the counters that matter here, from a prometheus_client registry (the instance's)."""
    collected = registry.collect() if registry is not None else metrics.families(SAMPLED)
    routes: dict[str, dict] = {}
    policies: dict[str, dict[str, float]] = {}
    for family in collected:
        name = family.name
        if name == "gateway_requests":
            for s in family.samples:
                if s.name != "gateway_requests_total" or s.labels["route"] == OWN:
                    continue
                row = _route(routes, s.labels["route"])
                status = int(s.labels["status"])
                row["n"] += s.value
                if 400 <= status < 500:
                    row["4xx"] += s.value
                    if status == 429:
                        row["429"] += s.value
                elif status >= 500:
                    row["5xx"] += s.value
        elif name == "gateway_errors":
            for s in family.samples:
                if s.name == "gateway_errors_total" and s.labels["route"] != OWN and int(s.labels["status"]) >= 500:
                    _route(routes, s.labels["route"])["own5xx"] += s.value
        elif name == "gateway_request_duration_seconds":
            for s in family.samples:
                if s.name != "gateway_request_duration_seconds_bucket" or s.labels["route"] == OWN:
                    continue
                bound = float(s.labels["le"])
                if bound in BUCKETS:
                    _route(routes, s.labels["route"])["b"][BUCKETS.index(bound)] += s.value
        elif name == "gateway_ratelimit_decisions":
            for s in family.samples:
                if s.name == "gateway_ratelimit_decisions_total":
                    counts = policies.setdefault(s.labels["policy"], {})
                    counts[s.labels["decision"]] = counts.get(s.labels["decision"], 0.0) + s.value
    return {"t": time.time() if now is None else now, "routes": routes, "policies": policies}


def _total(sample: dict) -> float:
    return sum(r["n"] for r in sample["routes"].values())


def _keep(samples: list[dict], sample: dict) -> list[dict]:
    if samples and _total(sample) < _total(samples[-1]):
        samples = []  # the counters started again (the instance restarted): older samples no longer compare
    samples = [s for s in samples if s["t"] >= sample["t"] - KEEP]
    samples.append(sample)
    return samples


def samples(run_dir: str | None, *, now: float | None = None, take=take_sample, wait: bool = True) -> list[dict]:
    """The instance's samples, with a new one when the last is SAMPLE_EVERY old (shared through `run_dir`).

    `wait=False` (the background sampler's): take a sample when one is due and return [] without reading the
    history; when another worker holds the file, return at once rather than block this worker (a gevent
    worker's flock blocks every greenlet of it)."""
    now = time.time() if now is None else now
    if not run_dir:
        global _memory
        with _memory_lock:
            if not _memory or now - _memory[-1]["t"] >= SAMPLE_EVERY:
                _memory = _keep(_memory, take(now=now))
            return list(_memory)
    with open(Path(run_dir) / "status-samples.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []
        with open(Path(run_dir) / SAMPLES_FILE, "a+b") as file:
            _record(file, now, take)
            if not wait:
                return []
            file.seek(0)
            kept = []
            for line in file.read().splitlines():
                try:
                    kept.append(json.loads(line))
                except ValueError:
                    continue  # a line cut short (a worker killed while writing it)
    return [s for s in kept if s["t"] >= kept[-1]["t"] - KEEP] if kept else []


#: One sample per line, appended: a worker that takes a sample reads the last line and, every KEEP / 2, the
#: first, never the whole history. Rewriting the whole file of samples on every sample (as a JSON list)
#: stalled each worker for 144-251 ms every SAMPLE_EVERY with 100 routes.
SAMPLES_FILE = "status-samples.jsonl"
_TIME = re.compile(rb'\{"t":([-+0-9.eE]+)[,}]')


def _last_line(file) -> bytes:
    end = file.seek(0, os.SEEK_END)
    position, tail = end, b""
    while position > 0:
        position = max(0, position - 65536)
        file.seek(position)
        tail = file.read(end - position)
        cut = tail.rstrip(b"\n").rfind(b"\n")
        if cut >= 0:
            return tail[cut + 1 :]
    return tail


def _time_of(line: bytes) -> float | None:
    found = _TIME.match(line)
    return float(found.group(1)) if found else None


def _record(file, now: float, take) -> None:
    """Append a sample to the open file of samples when the last is SAMPLE_EVERY old."""
    line = _last_line(file)
    at = _time_of(line)
    if at is not None and now - at < SAMPLE_EVERY:
        return
    try:
        last = json.loads(line) if at is not None else None
    except ValueError:
        last = None  # a line cut short (a worker killed while writing it)
    sample = take(now=now)
    if last is not None and _total(sample) < _total(last):
        file.truncate(0)  # the counters started again (the instance restarted): older samples no longer compare
    elif line and not line.endswith(b"\n"):
        file.write(b"\n")  # end the line cut short, so that this sample gets one of its own
    # One write, a whole line or none; "t" first, where _time_of finds it.
    file.write(json.dumps({"t": sample["t"], **sample}, separators=(",", ":")).encode() + b"\n")
    file.flush()
    file.seek(0)
    first = _time_of(file.readline())
    if first is not None and first < sample["t"] - KEEP * 1.5:
        file.seek(0)
        kept = [line for line in file.read().splitlines(keepends=True) if (_time_of(line) or 0) >= sample["t"] - KEEP]
        file.truncate(0)
        file.write(b"".join(kept))
        file.flush()


class Sampler(threading.Thread):
    """A gunicorn worker's: keep the instance's samples going while nobody has the page open."""

    def __init__(self, run_dir: str, every: float = SAMPLE_EVERY) -> None:
        super().__init__(name="gateway-status-sampler", daemon=True)
        self.run_dir = run_dir
        self.every = every

    def run(self) -> None:
        while True:
            time.sleep(self.every)
            try:
                off_loop(partial(samples, self.run_dir, wait=False))
            except Exception:
                logger.exception("status sample failed")


_sampler_pid: int | None = None


def start(run_dir: str) -> None:
    """Start the worker's sampler once per process (gunicorn workers; never commands or tests in-process)."""
    global _sampler_pid
    if not run_dir or _sampler_pid == os.getpid():
        return
    _sampler_pid = os.getpid()
    Sampler(run_dir).start()


def quantile(q: float, counts: list[float]) -> float | None:
    """Prometheus's histogram_quantile over cumulative bucket counts (BUCKETS' upper bounds), in seconds."""
    total = counts[-1] if counts else 0
    if total <= 0:
        return None
    rank = q * total
    for index, count in enumerate(counts):
        if count >= rank:
            upper = BUCKETS[index]
            if math.isinf(upper):
                return BUCKETS[index - 1] if index else None
            lower = BUCKETS[index - 1] if index else 0.0
            below = counts[index - 1] if index else 0.0
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
    return None


@dataclass
class RouteFigures:
    route: str
    rps: float | None
    requests: float  # in the window
    share_4xx: float | None
    share_upstream_5xx: float | None
    share_own_5xx: float | None
    rejected_429: float
    p50_ms: float | None
    p95_ms: float | None
    series: list[float] = field(default_factory=list)  # requests per second, one value per sample interval
    error_series: list[float] = field(default_factory=list)  # 5xx per second

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # not the charts the page adds


@dataclass
class Figures:
    source: str  # "instance" or "prometheus"
    source_detail: str
    window: float
    routes: list[RouteFigures]
    policies: list[dict]  # {"policy", "rejected", "allowed", "shadow_rejected", "fallback"} in the window
    span: float  # seconds the series cover
    total_series: list[float] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "source_detail": self.source_detail,
            "window_seconds": self.window,
            "span_seconds": self.span,
            "routes": [r.as_dict() for r in self.routes],
            "policies": self.policies,
            "total_series": self.total_series,
            "error": self.error,
        }


def _delta(new: dict, old: dict | None, key: str) -> float:
    return new.get(key, 0.0) - (old or {}).get(key, 0.0)


def summarize(kept: list[dict], *, window: float = WINDOW) -> Figures:
    """Rates over the last `window` seconds of samples, and per-interval series for the charts."""
    latest = kept[-1]
    base = next((s for s in kept[:-1] if s["t"] >= latest["t"] - window - SAMPLE_EVERY / 2), None)
    elapsed = latest["t"] - base["t"] if base is not None else 0.0
    routes = []
    for name in sorted(latest["routes"]):
        now_row = latest["routes"][name]
        old_row = base["routes"].get(name) if base is not None else None
        if base is None or elapsed <= 0:
            routes.append(RouteFigures(name, None, 0, None, None, None, 0, None, None))
            continue
        n = _delta(now_row, old_row, "n")
        own = _delta(now_row, old_row, "own5xx")
        fives = _delta(now_row, old_row, "5xx")
        buckets = [a - b for a, b in zip(now_row["b"], (old_row or {}).get("b", [0.0] * len(BUCKETS)), strict=True)]
        p50, p95 = quantile(0.5, buckets), quantile(0.95, buckets)
        routes.append(
            RouteFigures(
                name,
                n / elapsed,
                n,
                _delta(now_row, old_row, "4xx") / n if n else None,
                max(0.0, fives - own) / n if n else None,
                own / n if n else None,
                _delta(now_row, old_row, "429"),
                None if p50 is None else p50 * 1000,
                None if p95 is None else p95 * 1000,
            )
        )
    by_name = {r.route: r for r in routes}
    total_series = []
    for older, newer in itertools.pairwise(kept):
        dt = newer["t"] - older["t"]
        if dt <= 0:
            continue
        total_series.append(
            sum(_delta(row, older["routes"].get(name), "n") for name, row in newer["routes"].items()) / dt
        )
        for name, row in by_name.items():
            newer_row = newer["routes"].get(name)
            if newer_row is None:
                row.series.append(0.0)
                row.error_series.append(0.0)
                continue
            older_row = older["routes"].get(name)
            row.series.append(_delta(newer_row, older_row, "n") / dt)
            row.error_series.append(_delta(newer_row, older_row, "5xx") / dt)
    policies = []
    for name in sorted(latest["policies"]):
        counts, old = latest["policies"][name], (base or {"policies": {}})["policies"].get(name, {})
        policies.append(
            {
                "policy": name,
                **{d: counts.get(d, 0.0) - old.get(d, 0.0) for d in ("allowed", "rejected", "shadow_rejected")},
                "fallback": counts.get("fallback", 0.0) - old.get("fallback", 0.0),
                "rejected_total": counts.get("rejected", 0.0),
            }
        )
    return Figures(
        source="instance",
        source_detail=f"this gateway instance: every worker's metrics added up, sampled every {SAMPLE_EVERY:g} s",
        window=elapsed,
        routes=routes,
        policies=policies,
        span=latest["t"] - kept[0]["t"],
        total_series=total_series,
    )


def off_loop(function, *args):
    """`function(*args)`, in gevent's pool of real threads when this is a gevent worker.

    There a "thread" is a greenlet, and reading the metrics or the history on it would hold every request of the
    worker until it is done (with 100 routes: 30-90 ms for a sample, 160 ms for the page's whole history). In a
    real thread it gives the interpreter back to the worker's requests every switch interval (5 ms)."""
    if gevent.monkey.is_module_patched("threading"):
        return gevent.get_hub().threadpool.apply(function, args)
    return function(*args)


def instance_figures(run_dir: str | None) -> Figures:
    return off_loop(lambda: summarize(samples(run_dir)))


def policy_rejections(run_dir: str | None, policy: str) -> dict | None:
    """One policy's decisions in the last minute and since start (this instance), for the policy's page."""
    figures = instance_figures(run_dir)
    return next((p for p in figures.policies if p["policy"] == policy), None)


class Prometheus:
    """Figures of the whole fleet from a Prometheus server that scrapes every gateway instance."""

    STEP = 15  # seconds between the points of the charts

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self.http = urllib3.PoolManager(timeout=urllib3.Timeout(total=timeout), retries=False)

    def _get(self, path: str, **fields) -> list[dict]:
        response = self.http.request("GET", f"{self.url}{path}", fields=fields)
        body = json.loads(response.data or b"{}")
        if response.status != 200 or body.get("status") != "success":
            raise RuntimeError(body.get("error") or f"HTTP {response.status}")
        return body["data"]["result"]

    def query(self, promql: str, at: float) -> dict[str, float]:
        found = {}
        for row in self._get("/api/v1/query", query=promql, time=f"{at:.3f}"):
            key = next(iter(row["metric"].values()), "") if row["metric"] else ""
            value = float(row["value"][1])
            found[key] = value if math.isfinite(value) else None
        return found

    def query_range(self, promql: str, span: float, end: float) -> dict[str, list[float]]:
        rows = self._get(
            "/api/v1/query_range", query=promql, start=f"{end - span:.3f}", end=f"{end:.3f}", step=str(self.STEP)
        )
        return {next(iter(r["metric"].values()), ""): [float(v) for _, v in r["values"]] for r in rows}

    def figures(self) -> Figures:
        # Every query is evaluated at the same instant. Evaluated one after the other at "now", two rates of young
        # series were extrapolated over different stretches, and a route whose 5xx were all the gateway's own showed
        # 84 % of them as its own, with Prometheus slow to answer.
        at = time.time()
        keep = f'route!="{OWN}"'
        window = f"{int(WINDOW)}s"
        rate = f"sum by (route) (rate(gateway_requests_total{{{keep}}}[{window}]))"
        rps = self.query(rate, at)
        four = self.query(f'sum by (route) (rate(gateway_requests_total{{{keep},status=~"4.."}}[{window}]))', at)
        too_many = self.query(f'sum by (route) (increase(gateway_requests_total{{{keep},status="429"}}[{window}]))', at)
        five_rate = f'sum by (route) (rate(gateway_requests_total{{{keep},status=~"5.."}}[{window}]))'
        five = self.query(five_rate, at)
        own = self.query(f'sum by (route) (rate(gateway_errors_total{{{keep},status=~"5.."}}[{window}]))', at)
        buckets = f"sum by (route, le) (rate(gateway_request_duration_seconds_bucket{{{keep}}}[{window}]))"
        p50 = self.query(f"histogram_quantile(0.5, {buckets})", at)
        p95 = self.query(f"histogram_quantile(0.95, {buckets})", at)
        series = self.query_range(rate, KEEP, at)
        errors = self.query_range(five_rate, KEEP, at)
        total = self.query_range(f"sum(rate(gateway_requests_total{{{keep}}}[{window}]))", KEEP, at)
        routes = []
        for name in sorted(rps):
            r = rps[name] or 0.0

            def share(values: dict, name: str = name, r: float = r) -> float | None:
                return (values.get(name) or 0.0) / r if r else None

            upstream_5xx = max(0.0, (five.get(name) or 0.0) - (own.get(name) or 0.0))
            routes.append(
                RouteFigures(
                    name,
                    r,
                    r * WINDOW,
                    share(four),
                    upstream_5xx / r if r else None,
                    share(own),
                    too_many.get(name) or 0.0,
                    None if p50.get(name) is None else p50[name] * 1000,
                    None if p95.get(name) is None else p95[name] * 1000,
                    series.get(name, []),
                    errors.get(name, []),
                )
            )
        decisions = f"sum by (policy, decision) (increase(gateway_ratelimit_decisions_total[{window}]))"
        policies: dict[str, dict] = {}
        for row in self._get("/api/v1/query", query=decisions, time=f"{at:.3f}"):
            labels = row["metric"]
            entry = policies.setdefault(
                labels.get("policy", ""),
                {"policy": labels.get("policy", ""), "allowed": 0.0, "rejected": 0.0, "shadow_rejected": 0.0},
            )
            entry.setdefault("fallback", 0.0)
            entry[labels.get("decision", "")] = float(row["value"][1])
        for entry in policies.values():
            entry["rejected_total"] = None
        return Figures(
            source="prometheus",
            source_detail=f"the fleet: every instance Prometheus scrapes ({self.url})",
            window=WINDOW,
            routes=routes,
            policies=[policies[k] for k in sorted(policies)],
            span=KEEP,
            total_series=next(iter(total.values()), []),
        )


_prometheus: Prometheus | None = None


def figures(*, prometheus_url: str, run_dir: str | None) -> Figures:
    """The page's figures: Prometheus's when one is configured (this instance's, with the error, when it does not
    answer), this instance's otherwise."""
    global _prometheus
    if prometheus_url:
        if _prometheus is None or _prometheus.url != prometheus_url.rstrip("/"):
            _prometheus = Prometheus(prometheus_url)
        try:
            return _prometheus.figures()
        except (urllib3.exceptions.HTTPError, OSError, ValueError, RuntimeError, KeyError) as exc:
            found = instance_figures(run_dir)
            found.error = f"Prometheus at {prometheus_url} did not answer ({exc}); showing this instance's figures."
            return found
    return instance_figures(run_dir)


def sparkline(values: list[float], *, width: int = 160, height: int = 28, css: str = "spark") -> SafeString:
    """A small SVG line chart of `values` (oldest first), drawn on the server."""
    if len(values) < 2:
        return format_html(
            '<svg class="{}" width="{}" height="{}" role="img" aria-label="no data yet"></svg>', css, width, height
        )
    top = max(values) or 1.0
    step = width / (len(values) - 1)
    points = " ".join(f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(values))
    label = f"last {len(values)} points, peak {top:.2f}/s"
    return mark_safe(  # noqa: S308 - only numbers and fixed words are interpolated
        f'<svg class="{css}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{label}"><polyline fill="none" stroke="currentColor" stroke-width="1.5" '
        f'points="{points}"/></svg>'
    )
