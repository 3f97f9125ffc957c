"""The classifier ensemble on a real Triton server (the `tritonserver` binary of the nvidia-pytriton wheel,
Python-backend members on ONNX Runtime, CPU): parity with the embedded backend, dynamic batching, metrics,
and outages that turn into clean errors and recover."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from devtools.servers import gateway
from devtools.triton_server import TritonServer
from service.compose import build_detector, build_pipeline
from service.config import Settings
from service.errors import BackendUnavailable
from service.inference import OnnxRuntimeBackend
from service.inference.triton import TritonBackend
from service.models import DEFAULT_AUDIO_MODEL, DEFAULT_MODEL, UNTRAINED_MANIFEST
from service.pipeline import Pipeline
from service.triton.repo import RepoOptions, build_repo

pytestmark = pytest.mark.triton

MEMBER = "dfguard-untrained-mini"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repo = build_repo(
        [UNTRAINED_MANIFEST],
        tmp_path_factory.mktemp("repo"),
        "cpu",
        RepoOptions(max_batch_size=64, max_queue_delay_microseconds=20_000, cpu_threads=1),
        audio_path=DEFAULT_AUDIO_MODEL,  # the gateway serves audio by default: its backend needs the member
    )
    with TritonServer(repo) as s:
        yield s


@pytest.fixture(scope="module")
def embedded() -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend([UNTRAINED_MANIFEST], threads=1)


def _backend(server: TritonServer, **kw: float) -> TritonBackend:
    return TritonBackend([UNTRAINED_MANIFEST], server.grpc_url, timeout_seconds=5, **kw)  # type: ignore[arg-type]


def _stats(server: TritonServer, model: str) -> tuple[int, int]:
    with urllib.request.urlopen(f"{server.http_url}/v2/models/{model}/stats", timeout=5) as r:
        s = json.load(r)["model_stats"][0]
    return int(s["inference_count"]), int(s["execution_count"])


def _requests(server: TritonServer, model: str) -> tuple[int, int]:
    """(successful requests, crops inferred) of one model since the server started."""
    with urllib.request.urlopen(f"{server.http_url}/v2/models/{model}/stats", timeout=5) as r:
        s = json.load(r)["model_stats"][0]
    return int(s["inference_stats"]["success"]["count"]), int(s["inference_count"])


@pytest.fixture(scope="module")
def pair_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A two-member ensemble (224 px and 128 px inputs), so a split call would show as per-member requests."""
    repo = build_repo(
        [UNTRAINED_MANIFEST, DEFAULT_MODEL],
        tmp_path_factory.mktemp("pair"),
        "cpu",
        RepoOptions(max_batch_size=64, max_queue_delay_microseconds=0, cpu_threads=1),
    )
    with TritonServer(repo) as s:
        yield s


def test_micro_batched_ensemble_calls_are_one_triton_request(pair_server: TritonServer) -> None:
    """The pipeline the gateway and the worker build: concurrent videos' ensemble calls become one request."""
    settings = Settings(
        model_paths=[UNTRAINED_MANIFEST, DEFAULT_MODEL],
        backend="triton",
        triton_url=pair_server.grpc_url,
        triton_timeout_seconds=30,
        max_batch_size=12,  # full at 4 x 3 crops: the batch runs then, however slowly the threads arrive
        batch_max_wait_ms=10_000,
    )
    pipeline = build_pipeline(settings)
    rng = np.random.default_rng(3)
    calls = [
        {
            m.name: rng.integers(0, 256, (3, m.input_size, m.input_size, 3), dtype=np.uint8)
            for m in pipeline.models
        }
        for _ in range(4)
    ]
    names = ["ensemble", *(m.name for m in pipeline.models)]
    before = {n: _requests(pair_server, n) for n in names}
    barrier = threading.Barrier(len(calls))
    results: list[dict[str, np.ndarray]] = []

    def call(crops: dict[str, np.ndarray]) -> None:
        barrier.wait()
        results.append(pipeline.backend.predict_many(crops))

    threads = [threading.Thread(target=call, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    deadline = time.monotonic() + 10  # Triton updates an ensemble's statistics just after it answers
    while True:
        after = {n: _requests(pair_server, n) for n in names}
        delta = {n: (after[n][0] - before[n][0], after[n][1] - before[n][1]) for n in names}
        if delta["ensemble"][1] >= 12 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    # One request to the ensemble with all 12 crops; each member ran once, inside it (no direct member calls).
    assert delta == {n: (1, 12) for n in names}, delta
    assert len(results) == 4 and all(len(r[m.name]) == 3 for r in results for m in pipeline.models)
    pipeline.close()


def test_ensemble_and_member_equal_embedded(server: TritonServer, embedded: OnnxRuntimeBackend) -> None:
    backend = _backend(server)
    assert backend.ready()
    crops = np.random.default_rng(0).integers(0, 256, (70, 224, 224, 3), dtype=np.uint8)  # > one batch of 64
    want = embedded.predict(MEMBER, crops)
    got_ensemble = backend.predict_many({MEMBER: crops})[MEMBER]
    got_member = backend.predict(MEMBER, crops)
    np.testing.assert_allclose(got_ensemble, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got_member, want, atol=1e-5, rtol=0)
    backend.close()


def test_pipeline_verdicts_identical_through_triton(server: TritonServer, face_clip: Path) -> None:
    settings = Settings(model_paths=[UNTRAINED_MANIFEST])  # the model the test's Triton serves
    embedded = build_pipeline(settings, batching=False)
    backend = _backend(server)
    remote = Pipeline(settings, build_detector(settings), backend)
    a, b = embedded.score_file(face_clip), remote.score_file(face_clip)
    assert a.faces_detected == b.faces_detected == 32
    assert a.score is not None and b.score == pytest.approx(a.score, abs=1e-5)
    assert a.decision == b.decision and a.reasons == b.reasons
    for fa, fb in zip(a.frames, b.frames, strict=True):
        for x, y in zip(fa.faces, fb.faces, strict=True):
            assert y.score == pytest.approx(x.score, abs=1e-5)
    backend.close()


def test_dynamic_batching_merges_concurrent_requests(server: TritonServer) -> None:
    backend = _backend(server)
    crop = np.random.default_rng(1).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    backend.predict_many({MEMBER: crop})  # warm
    count0, exec0 = _stats(server, MEMBER)
    barrier = threading.Barrier(16)

    def one() -> None:
        barrier.wait()
        backend.predict_many({MEMBER: crop})

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    count, execs = _stats(server, MEMBER)
    assert count - count0 >= 16  # more only if a call timed out on a loaded machine and was retried
    assert (count - count0) / (execs - exec0) >= 2, (count - count0, execs - exec0)  # merged into fewer runs
    backend.close()


def test_triton_metrics_are_exported(server: TritonServer) -> None:
    text = httpx.get(server.metrics_url, timeout=5).text
    for name in ("nv_inference_count", "nv_inference_exec_count", "nv_inference_queue_duration_us"):
        assert f'{name}{{model="{MEMBER}"' in text, name


def test_killed_triton_gives_clean_errors_then_recovers(server: TritonServer) -> None:
    backend = _backend(server, retries=1, breaker_failures=2, breaker_reset_seconds=1.0)
    crops = np.zeros((2, 224, 224, 3), np.uint8)
    assert len(backend.predict_many({MEMBER: crops})[MEMBER]) == 2
    server.kill()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        backend.predict_many({MEMBER: crops})
    assert time.monotonic() - started < 15
    assert not backend.ready()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="circuit open"):  # fails fast while the circuit is open
        backend.predict_many({MEMBER: crops})
    assert time.monotonic() - started < 0.5
    server.start()
    time.sleep(1.1)  # the circuit lets a probe through after breaker_reset_seconds
    assert len(backend.predict_many({MEMBER: crops})[MEMBER]) == 2
    assert backend.ready()
    backend.close()


def test_a_ready_probe_closes_the_circuit_so_resumed_calls_do_not_fail_fast(server: TritonServer) -> None:
    """A worker's hold ends when the readiness probe passes; the calls it releases must not then meet a
    breaker still waiting out its reset period (before, every retry of the worker met the open circuit)."""
    backend = _backend(server, retries=0, breaker_failures=1, breaker_reset_seconds=600.0)
    crops = np.zeros((2, 224, 224, 3), np.uint8)
    try:
        server.kill()
        with pytest.raises(BackendUnavailable):
            backend.predict_many({MEMBER: crops})
        assert backend.breaker.is_open and not backend.ready()
        server.start()
        with pytest.raises(BackendUnavailable, match="circuit open"):  # open for another 10 minutes
            backend.predict_many({MEMBER: crops})
        deadline = time.monotonic() + 30  # the channel reconnects within its (capped) backoff
        while not backend.ready():
            assert time.monotonic() < deadline, "the probe asks the server even while the circuit is open"
            time.sleep(0.2)
        assert not backend.breaker.is_open, "a ready answer closes the circuit (600 s before its reset)"
        assert len(backend.predict_many({MEMBER: crops})[MEMBER]) == 2
    finally:
        backend.close()
        if not server.running():
            server.start()


def test_gateway_turns_a_triton_outage_into_503_and_recovers(server: TritonServer, face_clip: Path) -> None:
    settings = Settings(
        model_paths=[UNTRAINED_MANIFEST],
        backend="triton",
        triton_url=server.grpc_url,
        triton_timeout_seconds=5,
        triton_retries=0,
        triton_breaker_failures=1,
        triton_breaker_reset_seconds=1.0,
    )
    with gateway(settings) as (url, _):

        def upload() -> httpx.Response:
            with open(face_clip, "rb") as fh:
                return httpx.post(f"{url}/v1/score", files={"file": ("f.mp4", fh)}, timeout=60)

        assert upload().status_code == 200
        server.kill()
        resp = upload()
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "backend_unavailable"
        assert httpx.get(f"{url}/readyz").status_code == 503
        assert httpx.get(f"{url}/healthz").status_code == 200
        server.start()
        time.sleep(1.1)
        assert upload().status_code == 200
        assert httpx.get(f"{url}/readyz").status_code == 200


def test_shared_memory_parity_and_restart(server: TritonServer, embedded: OnnxRuntimeBackend) -> None:
    backend = TritonBackend([UNTRAINED_MANIFEST], server.grpc_url, timeout_seconds=5, shared_memory=True)
    crops = np.random.default_rng(2).integers(0, 256, (20, 224, 224, 3), dtype=np.uint8)
    want = embedded.predict(MEMBER, crops)
    np.testing.assert_allclose(backend.predict_many({MEMBER: crops})[MEMBER], want, atol=1e-5, rtol=0)
    inputs = [
        np.random.default_rng(10 + i).integers(0, 256, (8, 224, 224, 3), dtype=np.uint8) for i in range(4)
    ]
    results: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(4)

    def call(i: int) -> None:
        barrier.wait()
        for _ in range(3):
            results[i] = backend.predict_many({MEMBER: inputs[i]})[MEMBER]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for i in range(4):  # each thread writes its own region: no call sees another's crops
        np.testing.assert_allclose(results[i], embedded.predict(MEMBER, inputs[i]), atol=1e-5, rtol=0)
    server.stop()
    server.start()  # a restarted server has forgotten every registered region
    np.testing.assert_allclose(backend.predict_many({MEMBER: crops})[MEMBER], want, atol=1e-5, rtol=0)
    backend.close()
