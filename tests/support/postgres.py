"""A private PostgreSQL for the suite: initdb in a temporary directory, on a free loopback port.

`python -m tests.support.postgres COMMAND...` starts one, runs COMMAND with DATABASE_URL pointing at it (and
TESTS_POSTGRES_DIR naming its directory, so tests can freeze it), and stops it afterwards. It never uses a
PostgreSQL that happens to run on the machine: the suite must pass on a fresh one too. Debian's `postgresql`
package provides initdb and pg_ctl (`make test` installs it when missing); as root, the server runs as the
`postgres` user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.servers import free_port

#: pytest's exit code when the selection (`make test PYTEST_ARGS=...` naming slow tests only) holds no test.
NO_TESTS = 5


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"{name} is not installed; `make test` installs it (apt-get install postgresql)")
    return found


class PostgresServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data = workdir / "data"
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/gateway"

    def _run(self, *args: str) -> None:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def start(self) -> PostgresServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
        self._run(
            _binary("initdb"), "-D", str(self.data), "--auth=trust", "--username=postgres", "--no-sync", "-E", "UTF8"
        )
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(
            _binary("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.workdir / "log"), "-w", "start"
        )
        self._run(_binary("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "gateway")
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")


def processes(workdir: str | Path) -> list[int]:
    """The postmaster of the server in `workdir` and every process it started (one per connection)."""
    postmaster = int((Path(workdir) / "data" / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
    return [postmaster, *map(int, children)]


def freeze(workdir: str | Path, frozen: bool) -> None:
    """Stop (or continue) the whole server: connections stay open, nothing answers."""
    for pid in processes(workdir):
        os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="gateway-postgres-") as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103 - the postgres user must reach its directory inside
        server = PostgresServer(Path(tmp) / "pg").start()
        try:
            env = {**os.environ, "DATABASE_URL": server.url, "TESTS_POSTGRES_DIR": str(server.workdir)}
            env.pop("TESTS_TMPDIR", None)
            print(f"PostgreSQL for the tests at 127.0.0.1:{server.port}", flush=True)
            code = subprocess.run(argv, env=env).returncode
            if code == NO_TESTS:
                print("none of the selected tests depends on the database engine", flush=True)
                return 0
            return code
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
