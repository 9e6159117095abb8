"""A real Prometheus (Debian's package) scraping gateways every second, for the dashboard and status tests."""

from __future__ import annotations

import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.support.servers import free_port, wait_until


@contextmanager
def running_prometheus(workdir: Path, ports: list[int]):
    """Prometheus scraping /metrics of the gateways on `ports` every second; yields its base URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed; `make test` installs Debian's package"
    port = free_port()
    config = workdir / "prometheus.yml"
    targets = ", ".join(f"'127.0.0.1:{p}'" for p in ports)
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: gateway\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: [{targets}]\n"
    )
    log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{base}/-/ready", timeout=1).ok, 30, "prometheus ready")
        yield base
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
