#!/usr/bin/env python
"""The gateway side by side with nginx, django-revproxy, FastAPI + httpx, aiohttp and Django's hello world, on this
machine, in one run.

    .venv/bin/python bench/run.py                 # 3 runs x 10 s per target and concurrency (~26 minutes)
    .venv/bin/python bench/run.py --quick         # 1 run x 3 s, to try the script
    .venv/bin/python bench/run.py --profile       # also py-spy the gateway at 64 connections
    .venv/bin/python bench/run.py --only-balancing  # only the gateway with one target against three

Everything listens on 127.0.0.1 and stops when the script ends. It installs what it needs: nginx and wrk from
Debian's packages (as root), django-revproxy, py-spy and the async peers from PyPI into the project's
virtualenv (bench/requirements.txt). The report (markdown and JSON) goes to bench/results/<date>/ and is
printed; docs/benchmarks.md quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent
BODY = '{"status":"ok","service":"bench","message":"hello from the benchmark upstream","padding":"xxxxxxxx"}'
TICKS = os.sysconf("SC_CLK_TCK")
LEVELS = (1, 8, 64)
#: The open-loop rate, as a share of django-revproxy's req/s at 64 connections in the same run.
OPEN_LOOP_SHARE = 0.7
STOCK_GATEWAY = "gateway, gunicorn's gevent worker"
STOCK_HELLO = "django hello world, gunicorn's gevent worker"
#: The targets whose tail is measured again with wrk at real-time priority (Bench.client_first).
CLIENT_FIRST = ("gateway", "django hello world", "django-revproxy", "aiohttp + uvloop")
#: wrk under SCHED_FIFO: it runs as soon as a reply wakes it instead of waiting for a worker's time slice.
REALTIME = ("chrt", "--fifo", "10")
#: The rate-limit policy every gateway request is checked against: one Redis call, never a 429.
NEVER_HIT = {
    "name": "never-hit",
    "scope": "global",
    "key_by": "ip",
    "limit": 1_000_000_000,
    "window_seconds": 1,
    "algorithm": "gcra",
}
#: The targets whose connections per worker are counted at 64 connections (gevent workers).
SPREAD = {
    "gateway": "gateway",
    "django hello world": "hello",
    STOCK_GATEWAY: "gateway_stock",
    STOCK_HELLO: "hello_stock",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status < 500:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def ensure_tools(skip: bool) -> None:
    missing = [tool for tool in ("nginx", "wrk", "redis-server") if shutil.which(tool) is None]
    if missing and not skip:
        if os.geteuid() != 0:
            sys.exit(f"missing {', '.join(missing)}: install them (Debian: apt-get install {' '.join(missing)})")
        subprocess.run(
            ["apt-get", "install", "-y", "-q", *missing],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            stdout=subprocess.DEVNULL,
        )
    if not skip:
        subprocess.run([str(BIN / "pip"), "install", "-q", "-r", str(BENCH / "requirements.txt")], check=True)


class Process:
    """A started server; stopped with its whole process group."""

    def __init__(
        self, name: str, argv: list[str], *, env: dict | None = None, cwd: Path | None = None, log: Path
    ) -> None:
        self.name = name
        self.log_path = log
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def pids(self) -> list[int]:
        pids, frontier = [self.proc.pid], [self.proc.pid]
        while frontier:
            out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(frontier.pop())], capture_output=True, text=True)
            children = [int(p) for p in out.stdout.split()]
            pids += children
            frontier += children
        return pids

    def workers(self) -> list[int]:
        return self.pids()[1:]

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / TICKS

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def nginx_conf(work: Path, name: str, body: str) -> Path:
    temp = work / f"{name}-temp"
    temp.mkdir(exist_ok=True)
    path = work / f"{name}.conf"
    path.write_text(f"""
worker_processes {{workers}};
pid {work}/{name}.pid;
error_log {work}/{name}-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy; fastcgi_temp_path {temp}/fcgi;
  uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
  {body}
}}
""")
    return path


def start_nginx(work: Path, name: str, body: str, workers: int) -> Process:
    conf = nginx_conf(work, name, body)
    conf.write_text(conf.read_text().replace("{workers}", str(workers)))
    return Process(name, ["nginx", "-c", str(conf), "-p", str(work), "-g", "daemon off;"], log=work / f"{name}.log")


def parse_wrk(text: str) -> dict:
    def seconds(value: str) -> float:
        number, unit = re.match(r"([\d.]+)(us|ms|s|m)", value).groups()
        return float(number) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]

    latencies = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", text, re.MULTILINE))
    requests_done = int(re.search(r"(\d+) requests in", text).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: (.*)", text)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "p50": seconds(latencies["50"]),
        "p99": seconds(latencies["99"]),
        "requests": requests_done,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def realtime_allowed() -> bool:
    """Whether this process may start wrk at real-time priority (root, or CAP_SYS_NICE)."""
    if shutil.which(REALTIME[0]) is None:
        return False
    return subprocess.run([*REALTIME, "true"], capture_output=True).returncode == 0


def wrk(url: str, connections: int, duration: float, threads: int | None = None, realtime: bool = False) -> dict:
    threads = threads or (1 if connections == 1 else 2)
    out = subprocess.run(
        [
            *(REALTIME if realtime else ()),
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{int(duration)}s",
            "--latency",
            "--timeout",
            "10s",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_wrk(out)


def nginx_accepts(status_url: str) -> int:
    with urllib.request.urlopen(status_url, timeout=5) as response:
        return int(response.read().decode().splitlines()[2].split()[0])


def redis_calls(port: int) -> dict[str, int]:
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"], capture_output=True, text=True)
    calls = {}
    for name, count in re.findall(r"cmdstat_(\w+):calls=(\d+)", out.stdout):
        calls[name] = int(count)
    return calls


def metric_total(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
        self.processes: list[Process] = []
        self.ports = {
            name: free_port()
            for name in (
                *("upstream", "upstream2", "upstream3", "nginx", "hello", "revproxy", "gateway", "redis", "slow"),
                *("fastapi", "fastapi_redis", "aiohttp", "gateway_stock", "hello_stock"),
            )
        }

    def start(self, process: Process) -> Process:
        self.processes.append(process)
        return process

    def setup(self) -> None:
        work, ports = self.work, self.ports
        work.chmod(0o755)  # nginx workers run as an unprivileged user and must read the bodies
        (work / "big.bin").write_bytes(os.urandom(64 * 1024))
        with open(work / "huge.bin", "wb") as fh:
            fh.truncate(1024**3)
        self.upstream = self.start(
            start_nginx(
                work,
                "upstream",
                f"""
  server {{
    listen 127.0.0.1:{ports["upstream"]} backlog=4096;
    listen 127.0.0.1:{ports["upstream2"]} backlog=4096;
    listen 127.0.0.1:{ports["upstream3"]} backlog=4096;
    location = /small {{ default_type application/json; return 200 '{BODY}'; }}
    location = /big {{ alias {work}/big.bin; }}
    location = /huge {{ alias {work}/huge.bin; }}
    location = /nginx_status {{ stub_status; }}
  }}""",
                workers=1,
            )
        )
        self.nginx = self.start(
            start_nginx(
                work,
                "proxy",
                f"""
  upstream backend {{ server 127.0.0.1:{ports["upstream"]}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{ports["nginx"]} backlog=4096;
    location /np/ {{ proxy_pass http://backend/; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}""",
                workers=2,
            )
        )
        self.redis = self.start(
            Process(
                "redis",
                [
                    "redis-server",
                    "--port",
                    str(ports["redis"]),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                log=work / "redis.log",
            )
        )
        self.slow = self.start(
            Process(
                "slow",
                [sys.executable, str(BENCH / "slow_upstream.py"), str(ports["slow"]), "1.0"],
                log=work / "slow.log",
            )
        )
        common = {"PYTHONPATH": f"{BENCH}:{ROOT}", "BENCH_UPSTREAM": f"http://127.0.0.1:{ports['upstream']}/"}
        self.revproxy = self.start(
            Process(
                "revproxy",
                [
                    str(BIN / "gunicorn"),
                    "-w",
                    "2",
                    "-k",
                    "sync",
                    "-b",
                    f"127.0.0.1:{ports['revproxy']}",
                    "--no-control-socket",
                    "peers.wsgi:application",
                ],
                env=common,
                # gunicorn reads ./gunicorn.conf.py when no -c is given: not the gateway's from the project root.
                cwd=BENCH,
                log=work / "revproxy.log",
            )
        )
        self.gateway_env = {
            "DEBUG": "0",
            "SECRET_KEY": "benchmark-secret-key-0123456789abcdefghijklmnop",
            "ALLOWED_HOSTS": "*",
            "DATABASE_URL": f"sqlite:///{work / 'gateway.sqlite3'}",
            "REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
            "GATEWAY_LISTEN": f"127.0.0.1:{ports['gateway']}",
            "GATEWAY_WORKERS": "2",
            "GATEWAY_LOG_LEVEL": "INFO",
            "GATEWAY_VAR_DIR": str(work / "var"),
            "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
        }
        # Django's hello world under the gateway's own gunicorn configuration, which reads the gateway's settings.
        self.hello_env = {
            **self.gateway_env,
            **common,
            "GATEWAY_LISTEN": f"127.0.0.1:{ports['hello']}",
            "REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/1",
            "DJANGO_SETTINGS_MODULE": "peers.settings",
            "GATEWAY_LOG_LEVEL": "WARNING",
        }
        self.hello = self.start(
            Process(
                "hello",
                [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), "peers.wsgi:application"],
                env=self.hello_env,
                cwd=BENCH,
                log=work / "hello.log",
            )
        )
        uvicorn = [
            str(BIN / "uvicorn"),
            "peers.fastapi_app:app",
            *("--workers", "2", "--loop", "uvloop", "--http", "httptools", "--host", "127.0.0.1"),
            *("--backlog", "4096", "--no-access-log", "--log-level", "warning"),
        ]
        self.fastapi = self.start(
            Process(
                "fastapi",
                [*uvicorn, "--port", str(ports["fastapi"])],
                env=common,
                cwd=BENCH,
                log=work / "fastapi.log",
            )
        )
        self.fastapi_redis = self.start(
            Process(
                "fastapi_redis",
                [*uvicorn, "--port", str(ports["fastapi_redis"])],
                env={**common, "BENCH_REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/2"},
                cwd=BENCH,
                log=work / "fastapi_redis.log",
            )
        )
        self.aiohttp = self.start(
            Process(
                "aiohttp",
                [
                    sys.executable,
                    str(BENCH / "peers" / "aiohttp_proxy.py"),
                    str(ports["aiohttp"]),
                    f"http://127.0.0.1:{ports['upstream']}",
                    "2",
                ],
                cwd=BENCH,
                log=work / "aiohttp.log",
            )
        )
        config = work / "gateway.yaml"
        config.write_text(
            json.dumps(
                {
                    "version": 1,
                    "upstreams": [
                        {
                            "name": "bench",
                            "base_url": f"http://127.0.0.1:{ports['upstream']}",
                            "read_timeout": 60,
                            "deadline": 120,
                        },
                        {"name": "slow", "base_url": f"http://127.0.0.1:{ports['slow']}", "read_timeout": 10},
                        # The same nginx on three ports: three targets, so only the balancing differs.
                        *(
                            {
                                "name": f"bench3-{balancing}",
                                "base_url": "http://bench.internal",
                                "read_timeout": 60,
                                "deadline": 120,
                                "balancing": balancing,
                                "targets": [
                                    {"address": f"127.0.0.1:{ports[name]}"}
                                    for name in ("upstream", "upstream2", "upstream3")
                                ],
                            }
                            for balancing in ("round_robin", "least_requests")
                        ),
                    ],
                    "routes": [
                        {"name": "bench", "path_prefix": "/gw", "upstream": "bench"},
                        {"name": "bench3-rr", "path_prefix": "/gw3rr", "upstream": "bench3-round_robin"},
                        {"name": "bench3-lr", "path_prefix": "/gw3lr", "upstream": "bench3-least_requests"},
                        {"name": "slow", "path_prefix": "/slow", "upstream": "slow"},
                    ],
                    "rate_limits": [NEVER_HIT],
                }
            )
        )
        for command in (["migrate", "--noinput", "-v", "0"], ["gateway_import", str(config)]):
            subprocess.run(
                [sys.executable, "manage.py", *command],
                cwd=ROOT,
                env={**os.environ, **self.gateway_env},
                check=True,
                stdout=subprocess.DEVNULL,
            )
        self.gateway = self.start(
            Process(
                "gateway",
                [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "gateway_project.wsgi"],
                cwd=ROOT,
                env=self.gateway_env,
                log=work / "gateway.log",
            )
        )
        # Before/after for the worker (gateway_project/workers.py): the same configuration with gunicorn's own gevent
        # worker (a command-line -k wins over the configuration file).
        self.gateway_stock = self.start(
            Process(
                "gateway_stock",
                [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "-k", "gevent", "gateway_project.wsgi"],
                cwd=ROOT,
                env={**self.gateway_env, "GATEWAY_LISTEN": f"127.0.0.1:{ports['gateway_stock']}"},
                log=work / "gateway_stock.log",
            )
        )
        self.hello_stock = self.start(
            Process(
                "hello_stock",
                [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), "-k", "gevent", "peers.wsgi:application"],
                env={**self.hello_env, "GATEWAY_LISTEN": f"127.0.0.1:{ports['hello_stock']}"},
                cwd=BENCH,
                log=work / "hello_stock.log",
            )
        )
        waited = (
            ("upstream", "gateway")
            if self.args.only_balancing
            else (
                *("upstream", "nginx", "revproxy", "hello", "gateway", "fastapi", "fastapi_redis", "aiohttp"),
                *("gateway_stock", "hello_stock"),
            )
        )
        for name in waited:
            path = {
                "upstream": "/small",
                "nginx": "/np/small",
                "revproxy": "/proxy/small",
                "hello": "/hello",
                "gateway": "/gw/small",
                "fastapi": "/small",
                "fastapi_redis": "/small",
                "aiohttp": "/small",
                "gateway_stock": "/gw/small",
                "hello_stock": "/hello",
            }[name]
            try:
                wait_http(f"http://127.0.0.1:{ports[name]}{path}")
            except RuntimeError as exc:
                log = next(p.log_path for p in self.processes if p.name in (name, "proxy" if name == "nginx" else name))
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{exc}; the end of its log:\n{tail}") from None

    def targets(self, size: str) -> dict[str, tuple[str, Process]]:
        p = self.ports
        targets = {
            "upstream direct": (f"http://127.0.0.1:{p['upstream']}/{size}", self.upstream),
            "nginx proxy": (f"http://127.0.0.1:{p['nginx']}/np/{size}", self.nginx),
            "django-revproxy": (f"http://127.0.0.1:{p['revproxy']}/proxy/{size}", self.revproxy),
            "gateway": (f"http://127.0.0.1:{p['gateway']}/gw/{size}", self.gateway),
            "fastapi + httpx": (f"http://127.0.0.1:{p['fastapi']}/{size}", self.fastapi),
            "fastapi + httpx + redis": (f"http://127.0.0.1:{p['fastapi_redis']}/{size}", self.fastapi_redis),
            "aiohttp + uvloop": (f"http://127.0.0.1:{p['aiohttp']}/{size}", self.aiohttp),
        }
        if size == "small":
            targets["django hello world"] = (f"http://127.0.0.1:{p['hello']}/hello", self.hello)
            targets[STOCK_GATEWAY] = (f"http://127.0.0.1:{p['gateway_stock']}/gw/small", self.gateway_stock)
            targets[STOCK_HELLO] = (f"http://127.0.0.1:{p['hello_stock']}/hello", self.hello_stock)
        return targets

    def spread(self, process: Process, port: int) -> list[int]:
        """Open client connections on `port` per worker of `process`, fewest first."""
        out = subprocess.run(
            ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True
        ).stdout
        counts = collections.Counter(int(pid) for pid in re.findall(r"pid=(\d+)", out))
        return sorted(counts.get(pid, 0) for pid in process.workers())

    def measure(self, size: str, levels) -> dict:
        results: dict = collections.defaultdict(lambda: collections.defaultdict(list))
        status = f"http://127.0.0.1:{self.ports['upstream']}/nginx_status"
        for url, _ in self.targets(size).values():
            wrk(url, 8, 2)  # warm-up: pools, caches, scripts
        for run in range(self.args.runs):
            for connections in levels:
                for name, (url, process) in self.targets(size).items():
                    cpu, accepts = process.cpu_seconds(), nginx_accepts(status)
                    redis_before = redis_calls(self.ports["redis"]) if name == "gateway" else {}
                    spread: list = []
                    sampler = None
                    if connections == 64 and name in SPREAD:
                        port = self.ports[SPREAD[name]]

                        def sample(process=process, port=port, spread=spread):
                            time.sleep(self.args.duration / 2)
                            spread.extend(self.spread(process, port))

                        sampler = threading.Thread(target=sample)
                        sampler.start()
                    result = wrk(url, connections, self.args.duration)
                    if sampler is not None:
                        sampler.join()
                        result["connections_per_worker"] = spread
                    if result["non_2xx"] or result["socket_errors"]:
                        raise RuntimeError(f"{name} at {connections} connections: {result}")
                    result["cpu_us_per_request"] = (process.cpu_seconds() - cpu) * 1e6 / max(result["requests"], 1)
                    result["new_upstream_connections"] = nginx_accepts(status) - accepts
                    if name == "gateway":
                        after = redis_calls(self.ports["redis"])
                        result["redis_calls"] = {k: after.get(k, 0) - redis_before.get(k, 0) for k in after}
                    results[connections][name].append(result)
                    print(
                        f"  {size:5} run {run + 1} c={connections:<3} {name:44} {result['rps']:>8.0f} req/s  "
                        f"p50 {result['p50'] * 1000:6.2f} ms  p99 {result['p99'] * 1000:6.2f} ms  "
                        f"cpu {result['cpu_us_per_request']:6.0f} us/req {spread or ''}",
                        flush=True,
                    )
        return results

    def client_first(self) -> dict:
        """The tail at 8 and 64 connections again, with wrk at real-time priority. On two cores the load generator
        shares them with the workers, and a wrk thread woken by a reply can wait a worker's time slice for a core:
        its latency then counts its own wait. Under SCHED_FIFO it runs at once, as a client on its own machine
        would. Same targets, same wrk threads, same duration as the main cells."""
        targets = self.targets("small")
        results: dict = collections.defaultdict(lambda: collections.defaultdict(list))
        for _ in range(self.args.runs):
            for connections in (8, 64):
                for name in CLIENT_FIRST:
                    url, _ = targets[name]
                    result = wrk(url, connections, self.args.duration, realtime=True)
                    if result["non_2xx"] or result["socket_errors"]:
                        raise RuntimeError(f"{name} at {connections} connections, wrk at real-time priority: {result}")
                    results[connections][name].append(result)
                    print(
                        f"  wrk first c={connections:<3} {name:30} {result['rps']:>8.0f} req/s  "
                        f"p50 {result['p50'] * 1000:6.2f} ms  p99 {result['p99'] * 1000:6.2f} ms",
                        flush=True,
                    )
        return results

    def balancing(self) -> dict:
        """The gateway's req/s at 64 connections with one target, and with three (round robin, least requests),
        alternating within each run so that the machine's drift hits all three alike."""
        gw = f"http://127.0.0.1:{self.ports['gateway']}"
        cells = {
            "1 target": f"{gw}/gw/small",
            "3 targets, round robin": f"{gw}/gw3rr/small",
            "3 targets, least requests": f"{gw}/gw3lr/small",
        }
        for url in cells.values():
            wrk(url, 8, 2)
        results: dict = collections.defaultdict(list)
        for run in range(self.args.runs):
            for name, url in cells.items():
                cpu = self.gateway.cpu_seconds()
                result = wrk(url, 64, self.args.duration)
                if result["non_2xx"] or result["socket_errors"]:
                    raise RuntimeError(f"{name}: {result}")
                result["cpu_us_per_request"] = (self.gateway.cpu_seconds() - cpu) * 1e6 / max(result["requests"], 1)
                results[name].append(result)
                print(f"  balancing run {run + 1} {name:26} {result['rps']:>8.0f} req/s", flush=True)
        return results

    def streaming(self) -> dict:
        out = {}
        for name, url in (
            ("nginx proxy", f"http://127.0.0.1:{self.ports['nginx']}/np/huge"),
            ("gateway", f"http://127.0.0.1:{self.ports['gateway']}/gw/huge"),
        ):
            rss = {"before": self._rss(), "peak": 0}
            stop = threading.Event()

            def sample(rss=rss, stop=stop):
                while not stop.wait(0.02):
                    rss["peak"] = max(rss["peak"], max(self._rss().values(), default=0))

            sampler = threading.Thread(target=sample)
            sampler.start()
            speed = subprocess.run(
                ["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download} %{size_download} %{http_code}", url],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            if speed[2] != "200" or int(speed[1]) != 1024**3:
                raise RuntimeError(f"1 GiB download through {name} failed: HTTP {speed[2]}, {speed[1]} bytes")
            stop.set()
            sampler.join()
            out[name] = {"mb_per_s": float(speed[0]) / 1e6, "bytes": int(speed[1])}
            if name == "gateway":
                out[name]["worker_rss_growth_mib"] = (rss["peak"] - max(rss["before"].values())) / 2**20
        return out

    def _rss(self) -> dict[int, int]:
        sizes = {}
        for pid in self.gateway.workers():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        sizes[pid] = int(line.split()[1]) * 1024
            except FileNotFoundError:
                pass
        return sizes

    def in_flight(self, count: int = 1000, warm: bool = True) -> dict:
        async def one(port: int) -> int:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /slow/x HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            await reader.read()
            writer.close()
            return status

        async def burst() -> list[int]:
            return await asyncio.gather(*(one(self.ports["gateway"]) for _ in range(count)))

        if warm:
            asyncio.run(burst())  # warm the pools
        started = time.monotonic()
        statuses = asyncio.run(burst())
        return {"requests": count, "wall_seconds": time.monotonic() - started, "ok": statuses.count(200)}

    def open_loop(self, rate: float) -> dict:
        """p50/p99 at a fixed offered rate (bench/openloop.py), each target in turn, runs alternating."""
        p = self.ports
        cells = {
            "django-revproxy": f"http://127.0.0.1:{p['revproxy']}/proxy/small",
            "gateway": f"http://127.0.0.1:{p['gateway']}/gw/small",
            STOCK_GATEWAY: f"http://127.0.0.1:{p['gateway_stock']}/gw/small",
            "fastapi + httpx + redis": f"http://127.0.0.1:{p['fastapi_redis']}/small",
            "aiohttp + uvloop": f"http://127.0.0.1:{p['aiohttp']}/small",
            "django hello world": f"http://127.0.0.1:{p['hello']}/hello",
            STOCK_HELLO: f"http://127.0.0.1:{p['hello_stock']}/hello",
        }
        results: dict = collections.defaultdict(list)
        for run in range(self.args.runs):
            for name, url in cells.items():
                out = subprocess.run(
                    [
                        sys.executable,
                        str(BENCH / "openloop.py"),
                        url,
                        "--rate",
                        f"{rate:.0f}",
                        "--duration",
                        f"{self.args.duration:g}",
                        "--connections",
                        "64",
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result = json.loads(out.stdout)
                results[name].append(result)
                print(
                    f"  open loop run {run + 1} {rate:.0f} req/s {name:44} p50 {result['p50'] * 1000:7.2f} ms  "
                    f"p99 {result['p99'] * 1000:7.2f} ms  achieved {result['achieved_rps']:.0f}/s {result['errors']}",
                    flush=True,
                )
        return {"rate": rate, "results": results}

    def memory(self, count: int = 1000) -> dict:
        """Gateway workers' RSS idle and at the peak of `count` concurrent requests to the 1 s upstream."""
        idle = self._rss()
        peak: dict[int, int] = {}
        stop = threading.Event()

        def sample():
            while not stop.wait(0.02):
                for pid, size in self._rss().items():
                    peak[pid] = max(peak.get(pid, 0), size)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            burst = self.in_flight(count, warm=False)
        finally:
            stop.set()
            sampler.join()
        return {
            "requests": count,
            "ok": burst["ok"],
            "idle_rss_mib": [round(v / 2**20, 1) for v in idle.values()],
            "peak_rss_mib": [round(peak.get(pid, 0) / 2**20, 1) for pid in idle],
            "kib_per_request": (sum(peak.get(pid, 0) for pid in idle) - sum(idle.values())) / 1024 / count,
        }

    def redis_idle(self, seconds: float = 5.0) -> dict:
        """Commands the gateway sends Redis with no traffic at all: its background work, per second."""
        before = redis_calls(self.ports["redis"])
        time.sleep(seconds)
        after = redis_calls(self.ports["redis"])
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        return {k: round(v / seconds, 1) for k, v in delta.items() if v and k != "info"}

    def sql_per_request(self) -> dict:
        metrics = f"http://127.0.0.1:{self.ports['gateway']}/metrics"
        before = metric_total(metrics, "django_db_execute_total")
        result = wrk(f"http://127.0.0.1:{self.ports['gateway']}/gw/small", 64, self.args.duration)
        after = metric_total(metrics, "django_db_execute_total")
        return {"requests": result["requests"], "queries": after - before, "seconds": self.args.duration}

    def profile(self) -> dict:
        worker = self.gateway.workers()[0]
        raw = self.work / "profile.txt"
        load = threading.Thread(
            target=wrk, args=(f"http://127.0.0.1:{self.ports['gateway']}/gw/small", 64, self.args.duration + 2)
        )
        load.start()
        time.sleep(1)
        subprocess.run(
            [
                str(BIN / "py-spy"),
                "record",
                "--pid",
                str(worker),
                "--duration",
                str(int(self.args.duration)),
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(raw),
                "--nonblocking",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        load.join()
        return summarize_profile(raw.read_text())

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        shutil.rmtree(self.work, ignore_errors=True)


GROUPS = (
    ("gunicorn: parse the request, write the response", (" (gunicorn/",)),
    ("Django: WSGI handler, request and response objects, signals", (" (django/",)),
    (
        "gateway: pipeline, rate limit, breaker, proxy view",
        (" (proxy/", " (limits/", " (breakers/", " (gateway_project/"),
    ),
    (
        "  of which the upstream call: urllib3, http.client and the direct path",
        (" (urllib3/", "http/client.py", " (email/", "_direct (proxy/forwarding.py", " (proxy/upstream_response.py"),
    ),
    (
        "  of which the rate-limit call: the worker's Redis pipe and its script",
        (" (redis/", " (gateway_project/redis_pipe.py", " (gateway_project/store.py"),
    ),
    ("  of which logging: the access line", (" (structlog/", " (logging/", "_LineWriter")),
    ("  of which prometheus_client: metrics", (" (prometheus_client/",)),
)


def summarize_profile(raw: str) -> dict:
    """Self time by function and inclusive time by component from py-spy's collapsed stacks."""
    self_time: collections.Counter = collections.Counter()
    groups: collections.Counter = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        self_time[frames[-1]] += samples
        hit = set()
        for frame in frames:
            if "gateway_project/workers.py" in frame:
                continue  # the gunicorn worker class: everything runs inside it, it is no gateway work
            for label, needles in GROUPS:
                if label not in hit and any(n in frame for n in needles):
                    hit.add(label)
        for label in hit:
            groups[label] += samples
    return {
        "samples": total,
        "top_self": [(frame, round(100 * n / total, 1)) for frame, n in self_time.most_common(25)],
        "components": {label: round(100 * groups[label] / total, 1) for label, _ in GROUPS},
    }


def targets_report(small: dict, extras: dict) -> list[str]:
    """The issue's targets as ratios within this run, the connections per worker, the open-loop latency and the
    memory per request in flight."""

    def med(connections: int, name: str, key: str) -> float:
        return statistics.median(r[key] for r in small[connections][name])

    lines = ["", "Connections per gevent worker at 64 connections (sampled mid-run, each run):", ""]
    for name in SPREAD:
        runs = [r.get("connections_per_worker") for r in small[64].get(name, [])]
        lines.append(f"- {name}: {' '.join(str(x) for x in runs)}")
    gw, rev = "gateway", "django-revproxy"
    rps = {name: med(64, name, "rps") for name in small[64]}
    cpu = {name: med(64, name, "cpu_us_per_request") for name in small[64]}
    lines += [
        "",
        "### Ratios at 64 connections",
        "",
        "| gateway against | req/s | CPU per request |",
        "|---|---:|---:|",
    ]
    for name in (rev, "fastapi + httpx + redis", "fastapi + httpx", "aiohttp + uvloop", STOCK_GATEWAY):
        if name in rps:
            lines.append(f"| {name} | {rps[gw] / rps[name]:.2f}x | {cpu[gw] / cpu[name]:.2f}x |")
    hello = "django hello world"
    lines.append(f"| {hello} (same server) | {rps[gw] / rps[hello]:.2f}x | {cpu[gw] / cpu[hello]:.2f}x |")
    p99 = {(c, n): med(c, n, "p99") for c in (8, 64) for n in small[c]}
    p50 = {(c, n): med(c, n, "p50") for c in (8, 64) for n in small[c]}
    added = (med(1, gw, "p50") - med(1, "upstream direct", "p50")) * 1000

    def mark(ok: bool) -> str:
        return "met" if ok else "**not met**"

    rows = [
        (
            "p99 at 64 connections no worse than django-revproxy's",
            f"{p99[64, gw] * 1000:.1f} ms against {p99[64, rev] * 1000:.1f} ms",
            p99[64, gw] <= p99[64, rev],
        ),
    ]
    for c in (8, 64):
        for name in (gw, hello):
            rows.append(
                (
                    f"{name}: p99 within 3x p50 at {c} connections",
                    f"{p99[c, name] / p50[c, name]:.1f}x ({p50[c, name] * 1000:.2f} / {p99[c, name] * 1000:.1f} ms)",
                    p99[c, name] <= 3 * p50[c, name],
                )
            )
    first = {
        connections: {
            name: {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99")}
            for name, runs in by_name.items()
        }
        for connections, by_name in extras.get("client_first", {}).items()
    }
    for c, by_name in first.items():
        for name in (gw, hello):
            if name in by_name:
                m = by_name[name]
                rows.append(
                    (
                        f"{name}: p99 within 3x p50 at {c} connections, wrk at real-time priority",
                        f"{m['p99'] / m['p50']:.1f}x ({m['p50'] * 1000:.2f} / {m['p99'] * 1000:.1f} ms)",
                        m["p99"] <= 3 * m["p50"],
                    )
                )
    if STOCK_GATEWAY in rps:
        rows.append(
            (
                "throughput kept with the fair worker (gateway against itself on gunicorn's gevent worker)",
                f"{rps[gw] / rps[STOCK_GATEWAY]:.2f}x ({rps[gw]:,.0f} against {rps[STOCK_GATEWAY]:,.0f} req/s)",
                rps[gw] >= 0.95 * rps[STOCK_GATEWAY],
            )
        )
    rows += [
        (
            "CPU per request at most 2x Django's hello world under the same server",
            f"{cpu[gw] / cpu[hello]:.2f}x ({cpu[gw]:.0f} against {cpu[hello]:.0f} us)",
            cpu[gw] <= 2 * cpu[hello],
        ),
        ("≥ 1.5x django-revproxy's req/s", f"{rps[gw] / rps[rev]:.2f}x", rps[gw] >= 1.5 * rps[rev]),
    ]
    if "fastapi + httpx + redis" in rps:
        seed = rps["fastapi + httpx + redis"]
        rows.append(("≥ 2.5x FastAPI + httpx + one Redis call", f"{rps[gw] / seed:.2f}x", rps[gw] >= 2.5 * seed))
    rows.append(("≤ 0.8 ms added at p50, 1 connection", f"{added:.2f} ms", added <= 0.8))
    lines += ["", "### Targets (issue 14), within this run", "", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {what} | {value} | {mark(ok)} |" for what, value, ok in rows]
    if "aiohttp + uvloop" in rps:
        lines.append(
            f"| ratio to aiohttp + uvloop's bare proxy (reported) | {rps[gw] / rps['aiohttp + uvloop']:.2f}x req/s, "
            f"{cpu[gw] / cpu['aiohttp + uvloop']:.1f}x CPU per request | reported |"
        )
    if "open_loop" in extras:
        o = extras["open_loop"]
        lines += [
            "",
            f"### Open loop: {o['rate']:,.0f} req/s offered ({OPEN_LOOP_SHARE:.0%} of django-revproxy's req/s at 64 "
            "connections), 64 connections, latency from when each request was due",
            "",
            "| target | achieved req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, runs in o["results"].items():
            m = {k: statistics.median(r[k] for r in runs) for k in ("achieved_rps", "p50", "p90", "p99", "p999")}
            errors = sum(sum(r["errors"].values()) for r in runs)
            lines.append(
                f"| {name} | {m['achieved_rps']:,.0f} | {m['p50'] * 1000:.2f} | {m['p90'] * 1000:.2f} | "
                f"{m['p99'] * 1000:.2f} | {m['p999'] * 1000:.2f} | {errors} |"
            )
    if first:
        lines += [
            "",
            "### The tail with wrk at real-time priority (`chrt --fifo 10`), so a reply is read when it arrives",
            "",
            "| target | connections | req/s | p50 ms | p99 ms | p99/p50 |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for c, by_name in first.items():
            for name, m in by_name.items():
                lines.append(
                    f"| {name} | {c} | {m['rps']:,.0f} | {m['p50'] * 1000:.2f} | {m['p99'] * 1000:.2f} | "
                    f"{m['p99'] / m['p50']:.1f} |"
                )
    if "memory" in extras:
        m = extras["memory"]
        lines += [
            "",
            f"- Memory: gateway workers' RSS idle {m['idle_rss_mib']} MiB, at the peak of {m['requests']} concurrent "
            f"requests to a 1 s upstream {m['peak_rss_mib']} MiB ({m['ok']} answered 200): "
            f"{m['kib_per_request']:.1f} KiB per request in flight.",
        ]
    return lines


def report(measured: dict, extras: dict, args) -> str:
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} cores, "
        f"{platform.platform()}), `{' '.join(['bench/run.py', *sys.argv[1:]])}`: wrk on loopback, "
        f"{args.runs} run(s) of {args.duration:g} s per cell, medians. Load average (1, 5, 15 min) before the "
        f"run: {' '.join(extras.get('load_before', []))}; after: {' '.join(extras.get('load_after', []))}.",
        "",
    ]
    for size, label in (("small", "100-byte JSON body"), ("big", "64 KiB body")):
        if size not in measured:
            continue
        lines += [
            f"### {label}",
            "",
            "| target | conns | req/s | p50 ms | p99 ms | p99/p50 | CPU us/req | vs nginx | vs revproxy |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for connections, by_target in sorted(measured[size].items()):
            med = {
                name: {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99", "cpu_us_per_request")}
                for name, runs in by_target.items()
            }
            for name, m in med.items():
                ratio_nginx = m["rps"] / med["nginx proxy"]["rps"]
                ratio_rev = m["rps"] / med["django-revproxy"]["rps"]
                lines.append(
                    f"| {name} | {connections} | {m['rps']:,.0f} | {m['p50'] * 1000:.2f} | "
                    f"{m['p99'] * 1000:.2f} | {m['p99'] / m['p50']:.1f} | {m['cpu_us_per_request']:.0f} | "
                    f"{ratio_nginx:.2f} | "
                    f"{ratio_rev:.2f} |"
                )
        lines.append("")
    small = measured.get("small", {})
    if small:
        gw1, up1 = (statistics.median(r["p50"] for r in small[1][n]) for n in ("gateway", "upstream direct"))
        lines += [
            f"- Added latency at 1 connection, p50: {(gw1 - up1) * 1000:.2f} ms (gateway {gw1 * 1000:.2f} ms, "
            f"upstream direct {up1 * 1000:.2f} ms)."
        ]
        runs64 = small[64]["gateway"]
        calls = collections.Counter()
        for r in runs64:
            calls.update(r.get("redis_calls", {}))
        requests_done = sum(r["requests"] for r in runs64)
        idle = extras.get("redis_idle", {})
        lines += [
            f"- Redis round trips per proxied request at 64 connections: {calls['evalsha'] / requests_done:.3f} "
            f"EVALSHA ({calls['evalsha']:,} over {requests_done:,} requests). With no traffic the gateway sends "
            f"{sum(idle.values()):.1f} commands/s in the background ({idle}); Redis also counts the commands "
            "the scripts run inside each EVALSHA, which cost no round trip."
        ]
        new = max(r["new_upstream_connections"] for r in runs64)
        lines += [
            f"- New upstream connections during one {args.duration:g} s gateway run at 64 connections: {new} "
            f"(pool size bound: 2 workers x 1000)."
        ]
        errors = sorted(
            {
                (size, n, c)
                for size, cells in measured.items()
                for c, t in cells.items()
                for n, runs in t.items()
                for r in runs
                if r["non_2xx"] or r["socket_errors"]
            }
        )
        lines += [f"- Cells with non-2xx answers or socket errors: {errors or 'none'}."]
    if small:
        lines += targets_report(small, extras)
    if "sql" in extras:
        s = extras["sql"]
        lines += [
            f"- SQL queries per proxied request: {s['queries'] / max(s['requests'], 1):.5f} ({s['queries']:.0f} "
            f"queries over {s['requests']:,} requests in {s['seconds']:g} s, all from the configuration watcher)."
        ]
    if "in_flight" in extras:
        f = extras["in_flight"]
        lines += [
            f"- {f['requests']} concurrent requests to an upstream that takes 1 s: all done in "
            f"{f['wall_seconds']:.2f} s of wall time ({f['ok']} answered 200)."
        ]
    if "streaming" in extras:
        s = extras["streaming"]
        lines += [
            f"- 1 GiB response: gateway {s['gateway']['mb_per_s']:.0f} MB/s, nginx proxy "
            f"{s['nginx proxy']['mb_per_s']:.0f} MB/s; gateway worker RSS grew "
            f"{s['gateway']['worker_rss_growth_mib']:.1f} MiB."
        ]
    if "balancing" in extras:
        lines += [
            "",
            "### Balancing: one target against three (64 connections)",
            "",
            "| upstream | req/s | p50 ms | p99 ms | CPU us/req |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, runs in extras["balancing"].items():
            med = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99", "cpu_us_per_request")}
            lines.append(
                f"| {name} | {med['rps']:,.0f} | {med['p50'] * 1000:.2f} | {med['p99'] * 1000:.2f} | "
                f"{med['cpu_us_per_request']:.0f} |"
            )
    if "profile" in extras:
        p = extras["profile"]
        lines += [
            "",
            f"### Where a gateway worker's time goes (py-spy, {p['samples']} samples at 64 connections)",
            "",
            "| component (inclusive) | share |",
            "|---|---:|",
        ]
        lines += [f"| {label} | {share}% |" for label, share in p["components"].items()]
        lines += ["", "| function (self time) | share |", "|---|---:|"]
        lines += [f"| `{frame}` | {share}% |" for frame, share in p["top_self"][:20]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="one 3 s run per cell")
    parser.add_argument("--profile", action="store_true", help="py-spy a gateway worker at 64 connections")
    parser.add_argument("--skip-install", action="store_true")
    parser.add_argument("--sizes", default="small,big")
    parser.add_argument(
        "--only-balancing", action="store_true", help="only the gateway with one target against three targets"
    )
    parser.add_argument("--skip-balancing", action="store_true", help="leave out one target against three")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.duration = 1, 3.0
    ensure_tools(args.skip_install)
    bench = Bench(args)
    measured, extras = {}, {"load_before": Path("/proc/loadavg").read_text().split()[:3]}
    try:
        bench.setup()
        if not args.only_balancing:
            for size in filter(None, args.sizes.split(",")):
                measured[size] = bench.measure(size, LEVELS if size == "small" else (64,))
            if "small" in measured:
                revproxy = statistics.median(r["rps"] for r in measured["small"][64]["django-revproxy"])
                extras["open_loop"] = bench.open_loop(round(OPEN_LOOP_SHARE * revproxy, -1))
                if realtime_allowed():
                    extras["client_first"] = bench.client_first()
                else:
                    print("wrk cannot run at real-time priority here (needs root or CAP_SYS_NICE): skipped", flush=True)
            extras["redis_idle"] = bench.redis_idle()
            extras["sql"] = bench.sql_per_request()
            extras["memory"] = bench.memory()
            extras["in_flight"] = bench.in_flight()
            extras["streaming"] = bench.streaming()
        if not args.skip_balancing:
            extras["balancing"] = bench.balancing()
        if args.profile:
            extras["profile"] = bench.profile()
    finally:
        bench.stop()
    extras["load_after"] = Path("/proc/loadavg").read_text().split()[:3]
    text = report(measured, extras, args)
    out = BENCH / "results" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"measured": measured, "extras": extras}, indent=2, default=str))
    print("\n" + text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
