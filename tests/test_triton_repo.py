"""The generated Triton repositories, validated against Triton's own ModelConfig protobuf schema."""

from __future__ import annotations

import filecmp
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from service.models import DEFAULT_MODEL, UNTRAINED_MANIFEST
from service.triton.repo import build_repo

ROOT = Path(__file__).resolve().parents[1]


def _config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())  # fails on any unknown field


@pytest.mark.parametrize("target", ["gpu", "cpu"])
def test_configs_parse_and_wire_the_ensemble(tmp_path: Path, target: str) -> None:
    repo = build_repo([UNTRAINED_MANIFEST], tmp_path, target)  # type: ignore[arg-type]
    member = _config(repo / "dfguard-untrained-mini" / "config.pbtxt")
    ensemble = _config(repo / "ensemble" / "config.pbtxt")
    if target == "gpu":
        assert member.platform == "tensorrt_plan"
        assert member.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    else:
        assert member.backend == "python"
        assert (repo / "dfguard-untrained-mini" / "1" / "model.py").is_file()
    assert (repo / "dfguard-untrained-mini" / "1" / "model.onnx").is_file()
    assert member.max_batch_size == 64 and member.dynamic_batching.max_queue_delay_microseconds == 2000
    assert (
        list(member.input[0].dims) == [224, 224, 3]
        and member.input[0].data_type == model_config_pb2.TYPE_UINT8
    )
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == member.max_batch_size
    (step,) = ensemble.ensemble_scheduling.step
    assert step.model_name == "dfguard-untrained-mini"
    assert dict(step.input_map) == {"input": "crops_0"}
    assert dict(step.output_map) == {"output": "dfguard-untrained-mini__score"}
    assert [o.name for o in ensemble.output] == ["dfguard-untrained-mini__score"]


def test_committed_repository_is_up_to_date(tmp_path: Path) -> None:
    build_repo([DEFAULT_MODEL], tmp_path, "gpu", copy_models=False)
    committed = ROOT / "model_repository"
    name = json.loads(DEFAULT_MODEL.read_text())["name"]
    for rel in (f"{name}/config.pbtxt", f"{name}/1/model.json", "ensemble/config.pbtxt"):
        assert filecmp.cmp(committed / rel, tmp_path / rel, shallow=False), (
            f"regenerate model_repository: {rel}"
        )


def test_plan_build_script_calls_trtexec_per_member(tmp_path: Path) -> None:
    """trtexec needs a GPU and NVIDIA's image: a stand-in on PATH records what the script asks of it."""
    repo = build_repo([UNTRAINED_MANIFEST], tmp_path / "repo", "gpu")
    fake = tmp_path / "bin" / "trtexec"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$@" >> "$TRTEXEC_LOG"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "trtexec.log"
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "TRTEXEC_LOG": str(log)}
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_trt_plans.sh"), str(repo)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    (line,) = log.read_text().splitlines()  # one member; the ensemble has no plan
    assert f"--onnx={repo}/dfguard-untrained-mini/1/model.onnx" in line
    assert f"--saveEngine={repo}/dfguard-untrained-mini/1/model.plan" in line
    assert "--fp16" in line
    assert "--minShapes=input:1x224x224x3" in line and "--maxShapes=input:64x224x224x3" in line


def test_plan_build_script_refuses_a_configs_only_repo(tmp_path: Path) -> None:
    repo = build_repo([UNTRAINED_MANIFEST], tmp_path / "repo", "gpu", copy_models=False)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    (tmp_path / "trtexec").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "trtexec").chmod(0o755)
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_trt_plans.sh"), str(repo)], env=env, capture_output=True
    )
    assert out.returncode == 2 and b"model.onnx missing" in out.stderr
