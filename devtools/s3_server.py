"""A real S3-compatible server on 127.0.0.1 for tests and local use: Versity Gateway (`versitygw`, Apache-2.0)
with its POSIX backend in a temp folder, internal IAM (users in the same folder) and known root credentials.

The binary is built once by `scripts/setup_s3.sh` (`go install`, cached in ~/.cache/dfguard/bin). `stop()` and
`start()` keep the data, the users and the port, so a test can take the endpoint away under a running worker
and bring it back.

    python -m devtools.s3_server --port 7070     # a local store until Ctrl-C; prints its credentials
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import httpx
from botocore.config import Config

from devtools.servers import free_port

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

VERSITYGW_BIN = Path(os.environ.get("DFG_VERSITYGW_BIN", Path.home() / ".cache/dfguard/bin")) / "versitygw"
REPO = Path(__file__).resolve().parent.parent
_HEALTH = "/dfguard-health"


def versitygw() -> Path:
    """The pinned binary, built by the setup script when missing (or of another version)."""
    subprocess.run(["bash", str(REPO / "scripts/setup_s3.sh")], check=True, stdout=subprocess.DEVNULL)
    return VERSITYGW_BIN


class S3Server:
    """One versitygw process; `endpoint` is `http://127.0.0.1:<port>`, `access`/`secret` the root user's."""

    def __init__(self, port: int | None = None, *, workdir: Path | None = None) -> None:
        self.bin = versitygw()
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.access = "dfguard-root"
        self.secret = secrets.token_hex(16)
        self._own_dir = workdir is None
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="dfguard-s3-"))
        for sub in ("data", "meta", "iam"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "versitygw.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def _env(self) -> dict[str, str]:
        """Credentials go by environment, never on the command line (visible in `ps`)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ROOT_", "ADMIN_", "VGW_"))}
        env.update(ROOT_ACCESS_KEY_ID=self.access, ROOT_SECRET_ACCESS_KEY=self.secret)
        return env

    def start(self, timeout: float = 30.0) -> S3Server:
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [
                str(self.bin),
                "--port",
                f"127.0.0.1:{self.port}",
                "--iam-dir",
                str(self.dir / "iam"),
                "--health",
                _HEALTH,
                "--quiet",
                "posix",
                # metadata in sidecar files: the temp dir's filesystem may lack user xattrs (tmpfs, overlay)
                "--sidecar",
                str(self.dir / "meta"),
                str(self.dir / "data"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._env(),
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"versitygw exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.endpoint + _HEALTH, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"versitygw did not answer within {timeout} s: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it lingers; the port is free when this returns."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- administration (tests set up buckets, objects and users with these) ------------------------------

    def client(self, access: str | None = None, secret: str | None = None) -> S3Client:
        """A boto3 client of this server as `access` (default: root), path-style, no retries."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=access or self.access,
            aws_secret_access_key=secret or self.secret,
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )

    def create_user(self, access: str, secret: str, role: str = "user") -> None:
        """A gateway user (`user`: reaches only the buckets it owns or is granted), through the admin API."""
        self._admin("create-user", "--access", access, "--secret", secret, "--role", role)

    def change_bucket_owner(self, bucket: str, owner: str) -> None:
        self._admin("change-bucket-owner", "--bucket", bucket, "--owner", owner)

    def _admin(self, *args: str) -> None:
        env = {**self._env(), "ADMIN_ACCESS_KEY_ID": self.access, "ADMIN_SECRET_ACCESS_KEY": self.secret}
        cmd = [str(self.bin), "admin", "--endpoint-url", self.endpoint, *args]
        done = subprocess.run(cmd, env=env, capture_output=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"versitygw admin {args[0]} failed: {(done.stdout + done.stderr)[-2000:]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a local S3-compatible store (versitygw) on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=7070)
    args = parser.parse_args()
    with S3Server(args.port) as server:
        print(
            f"versitygw on {server.endpoint} (data in {server.dir})\n"
            f"AWS_ACCESS_KEY_ID={server.access} AWS_SECRET_ACCESS_KEY={server.secret}\n"
            f"DFG_S3_ENABLED=true DFG_S3_ENDPOINT_URL={server.endpoint} DFG_S3_ADDRESSING_STYLE=path\n"
            "Ctrl-C stops it",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
