"""Launch a real `tritonserver` (2.51, bundled in the PyPI wheel nvidia-pytriton 0.7.0) on a CPU-only machine.

Used by integration tests and the local stack; production runs the NGC image on GPUs. The server runs from its
own venv (`scripts/setup_triton.sh`): the Python backend's stub needs numpy<2 while dfguard uses numpy 2.
Stdlib only at module level, so importing this never drags numpy or tritonclient into the caller.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = REPO_ROOT / ".cache" / "triton-venv"
SERVER_CACHE = REPO_ROOT / ".cache" / "triton-server"
HOST = "127.0.0.1"
SHM_PREFIX = "/dev/shm/triton_python_backend_shm_region_"
_ERROR_LINE = re.compile(r"[EF]\d{4} |\[\w+ ERROR")  # glog errors/fatals; "[libprotobuf ERROR ...]"

_LIVE: weakref.WeakSet[TritonServer] = weakref.WeakSet()


def find_pytriton(venv: Path) -> Path:
    """The `pytriton/tritonserver` folder (bin/, backends/, caches/, python_backend_stubs/) inside `venv`."""
    found = sorted(Path(venv).glob("lib/python3.*/site-packages/pytriton/tritonserver"))
    if not found or not (found[-1] / "bin" / "tritonserver").is_file():
        raise FileNotFoundError(f"no pytriton tritonserver in {venv}; run scripts/setup_triton.sh")
    return found[-1]


def free_port() -> int:
    """A port free on 127.0.0.1 now (kernel-picked; a small race with other binders is accepted)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@functools.cache
def _venv_python(venv: Path) -> tuple[str, str]:
    """(major.minor, LIBDIR) of the venv's interpreter: picks the matching stub and its shared libpython."""
    code = "import sys, sysconfig; print(f'{sys.version_info[0]}.{sys.version_info[1]}'); "
    code += "print(sysconfig.get_config_var('LIBDIR'))"
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], check=True, capture_output=True, text=True, timeout=30
    ).stdout.split("\n")
    return out[0], out[1]


def _copy_server_files(src: Path, dest: Path, py_version: str) -> Path:
    """Copy bin/, backends/, caches/ to `dest` once, adding the stub for `py_version` to backends/python.

    The stub must sit next to libtriton_python.so; copying (not editing the venv) keeps the venv pristine.
    Built in a temp folder and renamed into place, so concurrent launchers never see a half-copied tree.
    """
    if (dest / ".complete").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for part in ("bin", "backends", "caches"):
        shutil.copytree(src / part, tmp / part, ignore=shutil.ignore_patterns("__pycache__"))
    stub = src / "python_backend_stubs" / py_version / "triton_python_backend_stub"
    if not stub.is_file():
        raise FileNotFoundError(f"no Python backend stub for Python {py_version} in {src}")
    shutil.copy2(stub, tmp / "backends" / "python" / stub.name)
    (tmp / ".complete").write_text(str(src) + "\n")
    try:
        tmp.rename(dest)
    except OSError:  # another launcher won the race (dest exists); use its copy
        shutil.rmtree(tmp, ignore_errors=True)
        if not (dest / ".complete").is_file():
            raise
    return dest


def _server_dir(src: Path, py_version: str) -> Path:
    """Shared cache folder keyed by the source tree and stub version: reused across runs and instances."""
    binary = (src / "bin" / "tritonserver").stat()
    key = hashlib.sha256(f"{src.resolve()}|{binary.st_size}|{binary.st_mtime_ns}|{py_version}".encode())
    return SERVER_CACHE / f"server-{key.hexdigest()[:12]}"


def _check_port_free(port: int) -> None:
    """Fail fast on a taken port: otherwise a foreign server there could answer the readiness probe."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
        try:
            s.bind((HOST, port))
        except OSError as e:
            raise RuntimeError(f"port {port} on {HOST} is in use: {e}") from e


def _shm_regions(pid: int) -> set[str]:
    """Python-backend shared-memory regions (one per stub) that process `pid` has mapped."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    return {word for line in maps.splitlines() for word in line.split() if word.startswith(SHM_PREFIX)}


def _find_models(model_repository: Path) -> list[str]:
    """Every model folder in the repository (one with a config.pbtxt), for explicit-mode --load-model."""
    return sorted(p.parent.name for p in model_repository.glob("*/config.pbtxt"))


class TritonServer:
    """One `tritonserver` process on 127.0.0.1; restartable on the same ports so clients can reconnect."""

    def __init__(
        self,
        model_repository: Path,
        *,
        venv: Path = DEFAULT_VENV,
        models: list[str] | None = None,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        workdir: Path | None = None,
        log_path: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.venv = Path(venv).resolve()
        self.models = list(models) if models is not None else _find_models(self.model_repository)
        # Ports are fixed for the instance's lifetime: a restart comes back where clients expect it.
        ports: set[int] = set()
        self.http_port = http_port or self._unique_port(ports)
        self.grpc_port = grpc_port or self._unique_port(ports)
        self.metrics_port = metrics_port or self._unique_port(ports)
        self.workdir = Path(workdir).resolve() if workdir is not None else None
        if log_path is None:
            log_dir = self.workdir if self.workdir is not None else SERVER_CACHE / "logs"
            log_path = log_dir / f"tritonserver-{self.http_port}.log"
        self.log_path = Path(log_path)
        self.extra_args = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._server_dir: Path | None = None
        self._log_offset = 0
        self._starts = 0
        self._shm: set[str] = set()
        self.startup_seconds: float | None = None  # of the last successful start()

    @staticmethod
    def _unique_port(taken: set[int]) -> int:
        while (port := free_port()) in taken:
            pass
        taken.add(port)
        return port

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _prepare(self) -> tuple[Path, dict[str, str]]:
        """Server files and environment; done once per instance (the copy once per machine)."""
        src = find_pytriton(self.venv)
        py_version, libdir = _venv_python(self.venv)
        if self._server_dir is None:
            dest = self.workdir / "server" if self.workdir is not None else _server_dir(src, py_version)
            self._server_dir = _copy_server_files(src, dest, py_version)
        env = dict(os.environ)
        # Nothing from the caller's (numpy 2) environment may leak into the stub's embedded interpreter.
        for var in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH"):
            env.pop(var, None)
        env["VIRTUAL_ENV"] = str(self.venv)
        env["PYTHONNOUSERSITE"] = "1"
        # The stub's interpreter locates its site-packages through `python3` on PATH.
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        # The copies lose their $ORIGIN rpath; the stub also needs the venv Python's shared libpython.
        libs = [str(src.parent.parent / "nvidia_pytriton.libs"), libdir]
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
        return self._server_dir, env

    def command(self) -> list[str]:
        """The full tritonserver command line (after `_prepare`)."""
        assert self._server_dir is not None
        d = self._server_dir
        return [
            str(d / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={d / 'backends'}",
            f"--cache-directory={d / 'caches'}",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in self.models),
            "--disable-auto-complete-config",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--min-supported-compute-capability=0",
            "--pinned-memory-pool-byte-size=0",
            "--cuda-memory-pool-byte-size=0:0",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=true",
            "--backend-config=python,shm-default-byte-size=16777216",
            f"--http-address={HOST}",
            f"--http-port={self.http_port}",
            f"--grpc-address={HOST}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={HOST}",
            f"--metrics-port={self.metrics_port}",
            *self.extra_args,
        ]

    def start(self, timeout: float = 60) -> None:
        """Launch and block until /v2/health/ready answers 200 (all requested models loaded).

        Raises RuntimeError with the log tail if the process exits or is not ready in time.
        """
        if self.running():
            raise RuntimeError(f"tritonserver already running (pid {self.pid})")
        server_dir, env = self._prepare()
        for port in (self.http_port, self.grpc_port, self.metrics_port):
            _check_port_free(port)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        # The first start truncates the log; restarts append, so a crash's history stays next to the restart.
        with open(self.log_path, "ab" if self._starts else "wb") as log:
            self._log_offset = log.tell()
            log.write(f"=== dfguard: start #{self._starts + 1}: {' '.join(self.command())}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.command(),
                cwd=server_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: kill() also takes the Python backend stubs
            )
        self._starts += 1
        _LIVE.add(self)
        deadline = t0 + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self.kill()  # reaps any stub left in the group
                raise RuntimeError(f"tritonserver exited with code {code} before ready:\n{self.log_tail()}")
            if self._ready():
                self._shm = _shm_regions(self._proc.pid)
                self.startup_seconds = time.monotonic() - t0
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"tritonserver not ready after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def _ready(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
        try:
            with opener.open(f"{self.http_url}/v2/health/ready", timeout=2) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 15) -> None:
        """Graceful shutdown (SIGTERM lets Triton unload models and stop its stubs); SIGKILL if it hangs."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group (server and stubs): what a crash looks like to clients.

        Then unlinks the /dev/shm regions the server had mapped: only a graceful stop frees them itself, and
        each leaked region holds up to shm-default-byte-size (16 MiB) of a container's small /dev/shm.
        """
        proc = self._proc
        if proc is None:
            return
        regions = self._shm | _shm_regions(proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for region in regions:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(region)
        self._proc = None
        self._shm = set()
        _LIVE.discard(self)

    def log_tail(self, lines: int = 25) -> str:
        """This start's error lines, then its last `lines` lines without status tables.

        A plain byte tail is not enough: Triton prints wide tables after the cause of a failed start.
        """
        try:
            with open(self.log_path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(self._log_offset, size - 1_000_000))
                text = f.read().decode(errors="replace").splitlines()
        except OSError as e:
            return f"(no log at {self.log_path}: {e})"
        errors = [ln for ln in text if _ERROR_LINE.match(ln) and "CudaDriverHelper" not in ln]
        tail = [ln for ln in text if not ln.startswith(("+", "|"))][-lines:]
        head = ["errors:", *errors, "last lines:"] if errors else []
        return "\n".join([*head, *tail]) + f"\n(full log: {self.log_path})"

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@atexit.register
def _kill_leftovers() -> None:
    """Never leave an orphaned server holding ports and /dev/shm after the interpreter exits."""
    for server in list(_LIVE):
        server.kill()
