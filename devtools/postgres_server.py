"""A throwaway PostgreSQL cluster on 127.0.0.1 (Debian's server binaries), for tests and benchmarks.

`initdb` refuses to run as root, which CI is: then the cluster belongs to the `postgres` system user and every
server command runs through `runuser`. The data directory lives in a temp folder and is removed on `close()`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from devtools.servers import free_port

REPO = Path(__file__).resolve().parent.parent


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        subprocess.run(["bash", str(REPO / "scripts/setup_postgres.sh")], check=True)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent


class PostgresServer:
    """initdb + pg_ctl start on a free port; `url` is a SQLAlchemy URL (psycopg 3) for database `dfguard`."""

    def __init__(self) -> None:
        self.bin = _bindir()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="dfguard-pg-"))
        self.data = self.dir / "data"
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.dir, self.user)
        self.url = f"postgresql+psycopg://dfguard@127.0.0.1:{self.port}/dfguard"

    def _run(self, *cmd: str) -> None:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "dfguard", "-A", "trust", "-E", "UTF8"
        )
        self.resume()
        self._run(
            str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "dfguard", "dfguard"
        )
        return self

    def resume(self) -> None:
        """Start the server on its existing cluster (after `stop`): same port, same data."""
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            opts,
            "-l",
            str(self.dir / "pg.log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected), keeping the cluster for `resume`."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    with PostgresServer() as pg:
        print(pg.url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
