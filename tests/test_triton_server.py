"""A real tritonserver (from .cache/triton-venv, see scripts/setup_triton.sh) with one Python-backend model:
readiness, HTTP and gRPC inference, the metrics endpoint, loopback-only binding, crash and restart on the
same ports, and a failing model load reported with the server's log; and a generated repository with a
shadow ensemble beside the primary one, served and scored like the embedded backend."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.triton_server import DEFAULT_VENV, TritonServer, _shm_regions, find_pytriton

pytestmark = pytest.mark.triton

MODEL = "row_mean"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy

CONFIG = f"""
name: "{MODEL}"
backend: "python"
max_batch_size: 16
input [ {{ name: "INPUT" data_type: TYPE_UINT8 dims: [ 4 ] }} ]
output [ {{ name: "MEAN" data_type: TYPE_FP32 dims: [ 1 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 20000 }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""

MODEL_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        # numpy 2 in the stub's environment makes outputs silently empty: fail loudly instead.
        if int(np.__version__.split(".")[0]) >= 2:
            raise RuntimeError(f"numpy {np.__version__} in the stub environment; need numpy<2")

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            y = x.astype(np.float32).mean(axis=1, keepdims=True)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("MEAN", y)]))
        return responses
"""


def _write_model(repo: Path, name: str, config: str, model_py: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(config)
    (repo / name / "1" / "model.py").write_text(textwrap.dedent(model_py))


def _get(url: str) -> tuple[int, str]:
    try:
        with _OPENER.open(url, timeout=10) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _infer(server: TritonServer, rows: list[list[int]]) -> dict[str, Any]:
    body = {
        "inputs": [
            {
                "name": "INPUT",
                "shape": [len(rows), 4],
                "datatype": "UINT8",
                "data": [v for row in rows for v in row],
            }
        ],
        "outputs": [{"name": "MEAN"}],
    }
    req = urllib.request.Request(
        f"{server.http_url}/v2/models/{MODEL}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with _OPENER.open(req, timeout=10) as resp:
        out: dict[str, Any] = json.loads(resp.read())
    return out


def _inference_count(server: TritonServer) -> int:
    status, text = _get(server.metrics_url)
    assert status == 200
    m = re.search(rf'^nv_inference_count\{{[^}}]*model="{MODEL}"[^}}]*\}} (\d+)', text, re.M)
    assert m, f"nv_inference_count for {MODEL} missing from metrics:\n{text[:2000]}"
    return int(m.group(1))


def _settled(read: Callable[[], int], want: int, timeout: float = 5.0) -> int:
    """Poll a counter until it reaches `want`: Triton books statistics after it has sent the response."""
    deadline = time.monotonic() + timeout
    while (value := read()) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def _grpc_client_module() -> Any:
    try:
        import tritonclient.grpc as grpcclient  # optional in the main venv
    except ImportError:
        return None
    return grpcclient


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4/IPv6 addresses in LISTEN state on `port`, from /proc/net (hex as the kernel writes it)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                found.add(addr)
    return found


@pytest.fixture(scope="module")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("triton-repo")
    _write_model(repo, MODEL, CONFIG, MODEL_PY)
    return repo


@pytest.fixture(scope="module")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    find_pytriton(
        DEFAULT_VENV
    )  # a missing server venv fails with the setup hint: the real server is required
    srv = TritonServer(model_repo, log_path=tmp_path_factory.mktemp("triton-log") / "tritonserver.log")
    with srv:
        yield srv


def test_import_is_stdlib_only() -> None:
    code = "import sys, devtools.triton_server; sys.exit(bool({'numpy', 'tritonclient'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_ready_and_bound_to_loopback_only(server: TritonServer) -> None:
    assert server.running() and server.startup_seconds is not None
    assert _get(f"{server.http_url}/v2/health/ready")[0] == 200
    assert _get(f"{server.http_url}/v2/models/{MODEL}/ready")[0] == 200
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1 (gRPC: as ::ffff:127.0.0.1)
    for port in (server.http_port, server.grpc_port, server.metrics_port):
        found = _listening_addresses(port)
        assert found and found <= loopback, (port, found)  # nothing on 0.0.0.0 or ::


def test_http_inference(server: TritonServer) -> None:
    out = _infer(server, [[0, 1, 2, 3], [10, 20, 30, 40]])
    (mean,) = out["outputs"]
    assert mean["name"] == "MEAN" and mean["datatype"] == "FP32"
    assert mean["shape"] == [2, 1]  # an empty tensor here means numpy 2 reached the stub
    assert mean["data"] == pytest.approx([1.5, 25.0])


def test_grpc_inference_batches_concurrent_requests(server: TritonServer) -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    before = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    results: list[Any] = [None] * 8

    def call(i: int) -> None:
        x = np.full((1, 4), i * 10, dtype=np.uint8)
        inp = grpcclient.InferInput("INPUT", [1, 4], "UINT8")
        inp.set_data_from_numpy(x)
        results[i] = client.infer(MODEL, [inp]).as_numpy("MEAN")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, y in enumerate(results):
        assert y is not None and y.shape == (1, 1) and float(y[0, 0]) == i * 10

    def stats(key: str) -> int:
        now = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
        return int(now.get(key, 0)) - int(before.get(key, 0))

    requests = _settled(lambda: stats("inference_count"), 8)
    executions = stats("execution_count")
    assert requests == 8 and 1 <= executions <= 8  # the dynamic batcher may merge them (20 ms window)
    client.close()


def test_metrics_count_inferences(server: TritonServer) -> None:
    before = _inference_count(server)
    _infer(server, [[1, 1, 1, 1]] * 3)
    # One request of 3 rows: the counter counts batch items, not requests.
    assert _settled(lambda: _inference_count(server), before + 3) == before + 3


def test_crash_and_restart_on_same_ports(server: TritonServer) -> None:
    ports = (server.http_port, server.grpc_port, server.metrics_port)
    assert server.pid is not None
    regions = _shm_regions(server.pid)
    assert regions  # one /dev/shm region per Python-backend instance
    grpcclient = _grpc_client_module()
    client = grpcclient.InferenceServerClient(server.grpc_url) if grpcclient else None
    if client is not None:
        assert client.is_server_ready()  # a live channel across the crash
    server.kill()
    assert not server.running()
    assert not any(Path(r).exists() for r in regions)  # SIGKILL leaves them behind; kill() unlinks them
    with pytest.raises(urllib.error.URLError):
        _OPENER.open(f"{server.http_url}/v2/health/ready", timeout=2)
    with socket.socket() as squatter:  # someone else took the port meanwhile: a clear error, not a hang
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the old server's TIME_WAITs
        squatter.bind(("127.0.0.1", server.http_port))
        squatter.listen()
        with pytest.raises(RuntimeError, match="in use"):
            server.start()
    server.start()
    assert (server.http_port, server.grpc_port, server.metrics_port) == ports
    assert _infer(server, [[4, 4, 4, 8]])["outputs"][0]["data"] == pytest.approx([5.0])
    assert _settled(lambda: _inference_count(server), 1) == 1  # a fresh process: counters restart
    if client is not None:
        assert client.is_model_ready(MODEL)  # the same client object reconnects
        client.close()


def test_graceful_stop_and_restart(server: TritonServer) -> None:
    server.stop()
    assert not server.running()
    server.start()
    assert _infer(server, [[0, 0, 0, 4]])["outputs"][0]["data"] == pytest.approx([1.0])


def test_failed_model_load_reports_log(tmp_path: Path) -> None:
    find_pytriton(
        DEFAULT_VENV
    )  # a missing server venv fails with the setup hint: the real server is required
    broken = CONFIG.replace(f'"{MODEL}"', '"broken"')
    model_py = MODEL_PY.replace("def execute", "def unused").replace(
        "        if int(", "        raise RuntimeError('boom-on-purpose')\n        if int("
    )
    _write_model(tmp_path / "repo", "broken", broken, model_py)
    srv = TritonServer(tmp_path / "repo", workdir=tmp_path / "work")
    with pytest.raises(RuntimeError, match="boom-on-purpose"):
        srv.start(timeout=30)
    assert not srv.running()


def test_shadow_ensemble_loads_and_scores_like_the_embedded_backend(tmp_path: Path) -> None:
    """Primary: untrained-mini. Shadow: untrained-mini (shared member) and faceres-sbi (its own, 128 px)."""
    import numpy as np

    from service.errors import InternalError
    from service.inference import OnnxRuntimeBackend
    from service.inference.triton import TritonBackend
    from service.models import DEFAULT_MODEL, UNTRAINED_MANIFEST
    from service.triton.repo import RepoOptions, build_repo

    find_pytriton(DEFAULT_VENV)
    shadow = [UNTRAINED_MANIFEST, DEFAULT_MODEL]
    repo = build_repo(
        [UNTRAINED_MANIFEST],
        tmp_path / "repo",
        "cpu",
        RepoOptions(max_batch_size=8, max_queue_delay_microseconds=0, cpu_threads=1),
        shadow_paths=shadow,
    )
    embedded = OnnxRuntimeBackend(shadow, threads=1, max_batch_size=8)
    rng = np.random.default_rng(3)
    crops = {  # each member's crops at its own size; 11 > one batch of 8
        m.name: rng.integers(0, 256, (11, m.input_size, m.input_size, 3), dtype=np.uint8)
        for m in embedded.models
    }
    want = embedded.predict_many(crops)
    with TritonServer(repo, workdir=tmp_path / "work") as server:
        backends = [
            TritonBackend(shadow, server.grpc_url, timeout_seconds=20, max_batch_size=8, ensemble_model=e)
            for e in ("shadow_ensemble", "ensemble")
        ]
        try:
            shadow_backend, wrong = backends
            assert shadow_backend.ready()
            got = shadow_backend.predict_many(crops)
            assert set(got) == set(want)
            for name in want:
                np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=0)
            # The keyword really picks the model: the primary ensemble has neither the shadow's inputs nor
            # its outputs, so the same call sent there is refused.
            with pytest.raises(InternalError, match="refused"):
                wrong.predict_many(crops)
            stats = _get(f"{server.http_url}/v2/models/shadow_ensemble/stats")
            assert stats[0] == 200 and '"inference_count":11' in stats[1].replace(" ", "")
        finally:
            for b in backends:
                b.close()
