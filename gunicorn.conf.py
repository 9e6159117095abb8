"""gunicorn configuration for the gateway; every value comes from the gateway's settings (gateway_project/conf.py),
read from the environment once, as the workers' Django settings read them.

Worker model: gevent. Each worker is one process running many greenlets, so a worker keeps
GATEWAY_WORKER_CONNECTIONS (default 1000) requests in flight while they wait on slow upstreams; gthread
would hold only workers x threads. docs/operations.md has the measurements behind the choice.
"""

import importlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from gunicorn import glogging

from gateway_project import conf, redis_url
from gateway_project.logging import build_logging_config

try:
    _env = conf.read()
    # Decide once, in the master, which Redis the gateway uses, and hand the answer to the workers.
    _redis_url = redis_url.resolve_redis_url(_env["REDIS_URL"])
    os.environ["REDIS_URL"] = _redis_url
except ImproperlyConfigured as exc:
    conf.exit_on_error(exc)
_embedded = redis_url.is_embedded(_redis_url)

# Metrics of all workers add up through files in one directory (prometheus_client's multiprocess mode). It
# must be set before any worker imports prometheus_client; it is emptied at start and removed at exit.
_own_metrics_dir = not _env["GATEWAY_METRICS_DIR"]
_metrics_dir = _env["GATEWAY_METRICS_DIR"] or tempfile.mkdtemp(prefix="gateway-metrics-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir

# Files the workers of this instance share (proxy/health.py: the active health checks' leader lock and results,
# each worker's view of its targets): a fresh directory unless the operator names one.
_own_run_dir = not _env["GATEWAY_RUN_DIR"]
_run_dir = _env["GATEWAY_RUN_DIR"] or tempfile.mkdtemp(prefix="gateway-run-")
os.environ["GATEWAY_RUN_DIR"] = _run_dir

try:
    # Every check the workers' settings make, made once here: a bad setting stops the master with one line
    # instead of every worker failing to boot with a traceback. After the directories above are in the
    # environment: the workers inherit this module as imported here, GATEWAY_RUN_DIR included.
    importlib.import_module("gateway_project.settings")
except ImproperlyConfigured as exc:
    conf.exit_on_error(exc)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


bind = [_address(*_env["GATEWAY_LISTEN"])]
if _env["GATEWAY_ADMIN_LISTEN"] is not None:
    # The admin's own listener: proxy.middleware serves the admin only here, and no route.
    bind.append(_address(*_env["GATEWAY_ADMIN_LISTEN"]))

# gunicorn's gevent worker, made fair across connections and workers (gateway_project/workers.py says how).
worker_class = "gateway_project.workers.GatewayWorker"
_requested_workers = _env["GATEWAY_WORKERS"]
# The embedded store lives inside one process: more workers would each have their own limits and breakers.
workers = 1 if _embedded else _requested_workers
worker_connections = _env["GATEWAY_WORKER_CONNECTIONS"]
keepalive = _env["GATEWAY_KEEPALIVE"]
timeout = _env["GATEWAY_WORKER_TIMEOUT"]
graceful_timeout = _env["GATEWAY_GRACEFUL_TIMEOUT"]
preload_app = False

# The gateway decides which peers are trusted proxies (GATEWAY_TRUSTED_PROXIES). gunicorn's own default trusts
# 127.0.0.1 to set the scheme, SCRIPT_NAME and PATH_INFO through headers: switch all of that off.
forwarded_allow_ips = ""
secure_scheme_headers = {}
forwarder_headers = ""
proxy_protocol = False
header_map = "drop"
# No gunicornc control socket: several gateways on one machine would fight over its default path.
control_socket_disable = True

# One format for every line (gateway_project/logging.py); the gateway writes its own access log.


class GatewayLogger(glogging.Logger):
    """gunicorn's logger without its access log: with a logging config set, gunicorn would build the access
    line's fields for every request (about 3 % of a worker's time here) only for our config to drop it."""

    def access(self, resp, req, environ, request_time):
        return


logger_class = GatewayLogger
accesslog = None
errorlog = "-"
logconfig_dict = build_logging_config(fmt=_env["GATEWAY_LOG_FORMAT"], level=_env["GATEWAY_LOG_LEVEL"])


def on_starting(server):
    Path(_metrics_dir).mkdir(parents=True, exist_ok=True)
    for stale in Path(_metrics_dir).glob("*.db"):
        stale.unlink()
    log = logging.getLogger("gunicorn.error")
    if _embedded:
        log.warning(
            "REDIS_URL is not set and no Redis answers on 127.0.0.1:6379: using the embedded in-process store "
            "and a single worker (GATEWAY_WORKERS=%s ignored). Set REDIS_URL to run several workers or instances.",
            _requested_workers,
        )
    else:
        log.info("using Redis at %s", redis_url.redacted(_redis_url))


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
    if _own_run_dir:
        shutil.rmtree(_run_dir, ignore_errors=True)
