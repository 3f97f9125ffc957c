"""The audio (anti-spoofing) model on Triton: the repository member `dfguard triton build-repo` writes for it
(outside the crop ensembles, its licence files beside the weights), and `TritonBackend.predict_audio` on a
real server (the nvidia-pytriton `tritonserver`, Python-backend member on ONNX Runtime, CPU): parity with the
embedded backend, readiness, and an outage that turns into `BackendUnavailable` and recovers."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from devtools.triton_server import TritonServer
from service.errors import BackendUnavailable
from service.inference import OnnxRuntimeBackend
from service.inference.triton import TritonBackend
from service.models import DEFAULT_AUDIO_MODEL, DEFAULT_ENSEMBLE, UNTRAINED_MANIFEST, resolve_models
from service.triton.repo import RepoOptions, build_repo

ROOT = Path(__file__).resolve().parents[1]
AUDIO = json.loads(DEFAULT_AUDIO_MODEL.read_text())["name"]
LICENCE_FILES = json.loads(DEFAULT_AUDIO_MODEL.read_text())["source"]["licence_files"]
WINDOW = json.loads(DEFAULT_AUDIO_MODEL.read_text())["window_samples"]
MEMBER = "dfguard-untrained-mini"


def _config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())  # fails on any unknown field


def _windows(n: int, seed: int = 0) -> np.ndarray:
    """Speech-like test windows: a few tones under noise, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(WINDOW, dtype=np.float32) / 16000
    tones = np.stack([0.3 * np.sin(2 * np.pi * (120 + 40 * i) * t) for i in range(n)])
    return np.clip(tones + rng.normal(0, 0.05, (n, WINDOW)), -1, 1).astype(np.float32)


# --- the repository member ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["gpu", "cpu"])
def test_audio_member_is_its_own_model_with_its_licence(tmp_path: Path, target: str) -> None:
    repo = build_repo(
        [UNTRAINED_MANIFEST],
        tmp_path,
        target,  # type: ignore[arg-type]
        audio_path=DEFAULT_AUDIO_MODEL,
    )
    member = _config(repo / AUDIO / "config.pbtxt")
    assert member.name == AUDIO and member.max_batch_size == 16
    assert member.dynamic_batching.max_queue_delay_microseconds == 2000
    (i,), (o,) = member.input, member.output
    assert (i.name, i.data_type, list(i.dims)) == ("waveform", model_config_pb2.TYPE_FP32, [WINDOW])
    assert (o.name, o.data_type, list(o.dims)) == ("logits", model_config_pb2.TYPE_FP32, [2])
    if target == "gpu":
        assert member.platform == "tensorrt_plan"
        assert member.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    else:
        assert member.backend == "python" and (repo / AUDIO / "1" / "model.py").is_file()
        assert member.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    version = repo / AUDIO / "1"
    assert filecmp.cmp(version / "model.onnx", DEFAULT_AUDIO_MODEL.parent / "model.onnx", shallow=False)
    assert LICENCE_FILES == ["LICENSE", "NOTICE"]
    for name in LICENCE_FILES:  # the weights' terms travel with every copy
        assert filecmp.cmp(version / name, DEFAULT_AUDIO_MODEL.parent / name, shallow=False), name
    assert json.loads((version / "model.json").read_text()) == json.loads(DEFAULT_AUDIO_MODEL.read_text())
    # Not a step of the crop ensemble: its input is speech.
    ensemble = _config(repo / "ensemble" / "config.pbtxt")
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [MEMBER]
    assert AUDIO not in {o.name for o in ensemble.output}


def test_configs_only_audio_member_has_no_weights_and_follows_max_batch(tmp_path: Path) -> None:
    repo = build_repo(
        [UNTRAINED_MANIFEST],
        tmp_path,
        "gpu",
        RepoOptions(max_batch_size=8),
        copy_models=False,
        audio_path=DEFAULT_AUDIO_MODEL,
    )
    assert sorted(p.name for p in (repo / AUDIO / "1").iterdir()) == ["model.json"]
    assert _config(repo / AUDIO / "config.pbtxt").max_batch_size == 8  # never above the client's batches


def test_committed_repository_has_the_current_audio_member(tmp_path: Path) -> None:
    """What `dfguard triton build-repo --target gpu --configs-only` writes for the served configuration."""
    build_repo(
        resolve_models([DEFAULT_ENSEMBLE]).member_paths,
        tmp_path,
        "gpu",
        copy_models=False,
        audio_path=DEFAULT_AUDIO_MODEL,
    )
    committed = ROOT / "model_repository" / AUDIO
    for rel in ("config.pbtxt", "1/model.json"):
        assert filecmp.cmp(committed / rel, tmp_path / AUDIO / rel, shallow=False), (
            f"regenerate model_repository: {AUDIO}/{rel}"
        )
    assert sorted(p.name for p in (committed / "1").iterdir()) == ["model.json"]  # weights never committed


def test_cli_build_repo_adds_the_audio_member_unless_audio_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.cli import main

    for name in [k for k in os.environ if k.startswith("DFG_")]:
        monkeypatch.delenv(name)
    base = ["triton", "build-repo", "--target", "gpu", "--configs-only"]
    assert main([*base, "--out", str(tmp_path / "on")]) == 0
    assert (tmp_path / "on" / "dfguard-aasist-l" / "config.pbtxt").is_file()
    assert main([*base, "--no-audio", "--out", str(tmp_path / "flag")]) == 0
    assert not (tmp_path / "flag" / "dfguard-aasist-l").exists()
    monkeypatch.setenv("DFG_AUDIO_ENABLED", "false")
    assert main([*base, "--out", str(tmp_path / "off")]) == 0
    assert not (tmp_path / "off" / "dfguard-aasist-l").exists()


def test_a_build_without_audio_removes_the_old_audio_member_only(tmp_path: Path) -> None:
    build_repo([UNTRAINED_MANIFEST], tmp_path, "gpu", copy_models=False, audio_path=DEFAULT_AUDIO_MODEL)
    mine = tmp_path / "operator-model"  # a folder the generator did not write: never touched
    (mine / "1").mkdir(parents=True)
    (mine / "config.pbtxt").write_text('name: "operator-model"\n')
    (mine / "1" / "model.json").write_text('{"name": "operator-model"}\n')
    build_repo([UNTRAINED_MANIFEST], tmp_path, "gpu", copy_models=False)
    assert not (tmp_path / AUDIO).exists()
    assert {d.name for d in tmp_path.iterdir()} == {MEMBER, "ensemble", "operator-model"}


def test_the_audio_model_needs_a_name_of_its_own(tmp_path: Path) -> None:
    taken = tmp_path / "audio"
    taken.mkdir()
    for name in ("model.onnx", *LICENCE_FILES):
        (taken / name).symlink_to(DEFAULT_AUDIO_MODEL.parent / name)
    (taken / "model.json").write_text(
        json.dumps({**json.loads(DEFAULT_AUDIO_MODEL.read_text()), "name": MEMBER})
    )
    with pytest.raises(ValueError, match="is taken"):
        build_repo([UNTRAINED_MANIFEST], tmp_path / "repo", "gpu", audio_path=taken / "model.json")


def test_plan_build_script_builds_the_audio_member_from_its_config(tmp_path: Path) -> None:
    """trtexec needs a GPU: a stand-in on PATH records the shapes the script derives from the config."""
    repo = build_repo([UNTRAINED_MANIFEST], tmp_path / "repo", "gpu", audio_path=DEFAULT_AUDIO_MODEL)
    fake = tmp_path / "bin" / "trtexec"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$@" >> "$TRTEXEC_LOG"\n')
    fake.chmod(0o755)
    log = tmp_path / "trtexec.log"
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "TRTEXEC_LOG": str(log)}
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_trt_plans.sh"), str(repo)], env=env, capture_output=True
    )
    assert out.returncode == 0, out.stderr
    (line,) = [ln for ln in log.read_text().splitlines() if f"/{AUDIO}/" in ln]
    assert f"--onnx={repo}/{AUDIO}/1/model.onnx" in line
    assert f"--saveEngine={repo}/{AUDIO}/1/model.plan" in line
    assert f"--minShapes=waveform:1x{WINDOW}" in line


# --- on a real Triton server -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repo = build_repo(
        [UNTRAINED_MANIFEST],
        tmp_path_factory.mktemp("repo"),
        "cpu",
        RepoOptions(max_queue_delay_microseconds=0, cpu_threads=1),
        audio_path=DEFAULT_AUDIO_MODEL,
    )
    with TritonServer(repo) as s:
        yield s


@pytest.fixture(scope="module")
def embedded() -> Iterator[OnnxRuntimeBackend]:
    backend = OnnxRuntimeBackend([UNTRAINED_MANIFEST], threads=1, audio=DEFAULT_AUDIO_MODEL)
    yield backend
    backend.close()


def _backend(server: TritonServer, **kw: object) -> TritonBackend:
    return TritonBackend(
        [UNTRAINED_MANIFEST],
        server.grpc_url,
        timeout_seconds=20,
        audio=DEFAULT_AUDIO_MODEL,
        **kw,  # type: ignore[arg-type]
    )


def _inferences(server: TritonServer, model: str) -> tuple[int, int]:
    """(windows inferred, model executions) so far: Triton's statistics of `model`."""
    with urllib.request.urlopen(f"{server.http_url}/v2/models/{model}/stats", timeout=5) as r:
        stats = json.load(r)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


@pytest.mark.triton
def test_predict_audio_equals_embedded(server: TritonServer, embedded: OnnxRuntimeBackend) -> None:
    """In batches of 2 (the client's max_batch_size): 5 windows are 3 requests to the audio member. The
    shared-memory regions hold 2 crops, less than 2 windows: audio must go by plain gRPC beside them."""
    backend = _backend(server, max_batch_size=2, shared_memory=True)
    try:
        assert backend.audio_model is not None and backend.audio_model.name == AUDIO
        assert backend.ready()
        x = _windows(5)
        before = _inferences(server, AUDIO)
        got = backend.predict_audio(x)
        want = embedded.predict_audio(x)
        assert got.shape == (5,) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
        after = _inferences(server, AUDIO)
        assert (after[0] - before[0], after[1] - before[1]) == (5, 3)  # 5 windows in 3 requests of <= 2
        crops = np.zeros((2, 224, 224, 3), np.uint8)  # crops still go through shared memory
        np.testing.assert_allclose(
            backend.predict_many({MEMBER: crops})[MEMBER], embedded.predict(MEMBER, crops), atol=1e-5
        )
        assert len(backend.predict_audio(np.empty((0, WINDOW), np.float32))) == 0
        with pytest.raises(ValueError, match="shape"):
            backend.predict_audio(np.zeros((1, WINDOW - 1), np.float32))
    finally:
        backend.close()


@pytest.mark.triton
def test_readiness_covers_the_audio_model(server: TritonServer, tmp_path: Path) -> None:
    without = TritonBackend([UNTRAINED_MANIFEST], server.grpc_url, timeout_seconds=5)
    other = tmp_path / "model.json"  # an audio model this server does not serve (only its manifest is read)
    other.write_text(json.dumps({**json.loads(DEFAULT_AUDIO_MODEL.read_text()), "name": "dfguard-unserved"}))
    unserved = TritonBackend([UNTRAINED_MANIFEST], server.grpc_url, timeout_seconds=5, audio=other)
    try:
        assert without.ready() and without.audio_model is None
        with pytest.raises(RuntimeError, match="no audio model"):
            without.predict_audio(_windows(1))
        assert not unserved.ready()
    finally:
        without.close()
        unserved.close()


@pytest.mark.triton
def test_outage_during_predict_audio_is_backend_unavailable_then_recovers(server: TritonServer) -> None:
    backend = _backend(server, retries=1, breaker_failures=2, breaker_reset_seconds=1.0)
    x = _windows(2, seed=1)
    try:
        assert len(backend.predict_audio(x)) == 2
        server.kill()
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            backend.predict_audio(x)
        assert time.monotonic() - started < 15
        assert not backend.ready()
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="circuit open"):  # the crops' breaker: one per backend
            backend.predict_audio(x)
        assert time.monotonic() - started < 0.5
        server.start()
        time.sleep(1.1)  # the circuit lets a probe through after breaker_reset_seconds
        assert len(backend.predict_audio(x)) == 2
        assert backend.ready()
    finally:
        backend.close()
        if not server.running():
            server.start()
