"""Real servers for tests: redis-server and gunicorn processes on loopback, started and stopped by fixtures."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout} s (last error: {last_error!r})")


class RedisServer:
    """A redis-server of our own, so tests can stop, hang and restart it without touching anything else."""

    def __init__(self, workdir: Path, port: int | None = None, options: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.options = options  # more redis-server arguments
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; `make test` installs it (apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.ping, 10, f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        """Freeze the server: it keeps accepting connections (the kernel does) but never answers."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


#: As docker/redis-cluster.conf has them, but for a node timeout short enough that a test's failover is quick.
CLUSTER_OPTIONS = ("--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no")


class ClusterNode(RedisServer):
    """One node of a Redis Cluster: its config file in its own directory, a short node timeout so a failover
    takes a second or two, and the other shards keep serving while one has no primary."""

    def __init__(self, workdir: Path) -> None:
        options = ("--cluster-enabled", "yes", "--cluster-config-file", str(workdir / "nodes.conf"))
        options += ("--cluster-port", str(free_port()))  # the default, port + 10000, may be past 65535
        super().__init__(workdir, options=(*options, *CLUSTER_OPTIONS))

    def cli(self, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=10
        ).stdout

    def role(self) -> str:
        return self.cli("ROLE").split("\n", 1)[0].strip()


class RedisClusterServers:
    """A Redis Cluster on loopback: three primaries, each with one replica, started with redis-server's cluster
    mode and joined by `redis-cli --cluster create`."""

    def __init__(self, workdir: Path, shards: int = 3) -> None:
        self.nodes = [ClusterNode(workdir / f"node{i}") for i in range(2 * shards)]

    @property
    def url(self) -> str:
        """One node's address: the gateway learns the rest from it."""
        return self.nodes[0].url.removesuffix("/0")

    def start(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until(self.healthy, 30, "the Redis Cluster")
        return self

    def healthy(self) -> bool:
        running = [node for node in self.nodes if node.proc is not None]
        if not all("cluster_state:ok" in node.cli("CLUSTER", "INFO") for node in running):
            return False
        replicas = [node for node in running if node.role() == "slave"]
        return len(replicas) == len(running) - len(self.primaries()) and all(
            "master_link_status:up" in node.cli("INFO", "replication") for node in replicas
        )

    def primaries(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.proc is not None and node.role() == "master"]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelPair:
    """A primary and its replica watched by one Sentinel (quorum 1), on loopback, failing over within seconds."""

    SERVICE = "gateway"

    def __init__(self, workdir: Path) -> None:
        self.primary = RedisServer(workdir / "primary")
        self.replica = RedisServer(workdir / "replica")
        self.workdir = workdir
        self.sentinel_port = free_port()
        self.sentinel: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.SERVICE}"

    def start(self) -> SentinelPair:
        self.primary.start()
        self.replica.options = ("--replicaof", "127.0.0.1", str(self.primary.port))
        self.replica.start()
        config = self.workdir / "sentinel.conf"
        config.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.workdir}\n"
            f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {self.SERVICE} 1000\n"
            f"sentinel failover-timeout {self.SERVICE} 5000\n"
        )
        self.sentinel = subprocess.Popen(
            [shutil.which("redis-server"), str(config), "--sentinel", "--logfile", str(self.workdir / "sentinel.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: self.replica_synced() and self.primary_port() == self.primary.port, 20, "the Sentinel")
        return self

    def primary_port(self) -> int | None:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.sentinel_port), "SENTINEL", "get-master-addr-by-name", self.SERVICE],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split()
        return int(out[1]) if len(out) == 2 else None

    def replica_synced(self) -> bool:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.replica.port), "INFO", "replication"], capture_output=True, text=True
        ).stdout
        return "master_link_status:up" in out

    def stop(self) -> None:
        if self.sentinel is not None and self.sentinel.poll() is None:
            self.sentinel.terminate()
            self.sentinel.wait(5)
        self.primary.stop()
        self.replica.stop()


class Gateway:
    """The gateway under a real gunicorn master with N gevent workers, configured through its environment."""

    def __init__(
        self,
        workdir: Path,
        *,
        redis_url: str,
        database_url: str,
        prefix: str,
        workers: int = 2,
        env: dict[str, str] | None = None,
        expect_workers: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.workers = expect_workers or workers
        self.prefix = prefix
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
            "DEBUG": "0",
            "SECRET_KEY": "test-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
            "ALLOWED_HOSTS": "*",
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "GATEWAY_REDIS_PREFIX": prefix,
            "GATEWAY_LISTEN": f"127.0.0.1:{self.port}",
            "GATEWAY_WORKERS": str(workers),
            "GATEWAY_CONFIG_WATCH": "1",
            "GATEWAY_LOG_LEVEL": "INFO",
            "GATEWAY_VAR_DIR": str(workdir / "var"),
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "gunicorn.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def manage(self, *args: str) -> subprocess.CompletedProcess:
        """Run a management command against this gateway's database and Redis, as an operator would."""
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=120
        )

    def start(self, *, collectstatic: bool = False) -> Gateway:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if collectstatic:
            result = self.manage("collectstatic", "--noinput", "-v", "0")
            if result.returncode:
                raise RuntimeError(f"collectstatic failed: {result.stderr}")
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(gunicorn), "-c", "gunicorn.conf.py", "gateway_project.wsgi"],
            cwd=REPO,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(self._ready, 30, f"gateway on port {self.port}", interval=0.1)
            wait_until(lambda: len(self.worker_pids()) == self.workers, 30, "all gunicorn workers")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"gateway did not start; log:\n{self.log()[-4000:]}") from None
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
        return requests.get(self.url("/healthz"), timeout=1).status_code == 200

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def wait_for_config(self, described: str, timeout: float = 5.0) -> float:
        """Wait until every worker serves the configuration just committed; return how long it took.

        Each worker polls every GATEWAY_CONFIG_POLL_INTERVAL (0.25 s) on its own, and which worker answers a
        connection is up to the kernel. So: wait until one worker serves it, then one poll interval and a
        margin more, by which time every worker has polled since the commit.
        """
        started = time.monotonic()

        def served() -> bool:
            checks = requests.get(self.url("/readyz"), timeout=2, headers={"Connection": "close"}).json()["checks"]
            return checks["config"] == described

        wait_until(served, timeout, f"config {described}", interval=0.02)
        time.sleep(0.35)
        return time.monotonic() - started


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")
