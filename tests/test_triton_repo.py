"""The generated Triton repositories, validated against Triton's own ModelConfig protobuf schema."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from service.cli import main
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


def _model_dirs(repo: Path) -> set[str]:
    return {d.name for d in repo.iterdir() if (d / "config.pbtxt").is_file()}


@pytest.mark.parametrize("target", ["gpu", "cpu"])
def test_shadow_ensemble_has_its_own_inputs_and_shares_members(tmp_path: Path, target: str) -> None:
    """Primary: faceres-sbi (128 px). Shadow: faceres-sbi again plus untrained-mini (224 px)."""
    primary = json.loads(DEFAULT_MODEL.read_text())["name"]
    repo = build_repo(
        [DEFAULT_MODEL],
        tmp_path / "repo",
        target,  # type: ignore[arg-type]
        shadow_paths=[DEFAULT_MODEL, UNTRAINED_MANIFEST],
    )
    # One copy of the shared member: a second one could not even exist under the same name.
    assert _model_dirs(repo) == {primary, "dfguard-untrained-mini", "ensemble", "shadow_ensemble"}
    # The primary ensemble is exactly what it is without a shadow.
    alone = build_repo([DEFAULT_MODEL], tmp_path / "alone", target)  # type: ignore[arg-type]
    assert (repo / "ensemble" / "config.pbtxt").read_text() == (
        alone / "ensemble" / "config.pbtxt"
    ).read_text()
    shadow = _config(repo / "shadow_ensemble" / "config.pbtxt")
    assert shadow.name == "shadow_ensemble" and shadow.platform == "ensemble"
    assert shadow.max_batch_size == _config(repo / primary / "config.pbtxt").max_batch_size
    assert (repo / "shadow_ensemble" / "1").is_dir()  # Triton needs the version folder
    # Inputs grouped as the client groups them (two crop sizes: two inputs), in manifest order.
    assert [(i.name, list(i.dims)) for i in shadow.input] == [
        ("crops_0", [128, 128, 3]),
        ("crops_1", [224, 224, 3]),
    ]
    steps = {
        (s.model_name, s.input_map["input"], s.output_map["output"]) for s in shadow.ensemble_scheduling.step
    }
    assert steps == {
        (primary, "crops_0", f"{primary}__score"),
        ("dfguard-untrained-mini", "crops_1", "dfguard-untrained-mini__score"),
    }
    assert [o.name for o in shadow.output] == [f"{primary}__score", "dfguard-untrained-mini__score"]


def test_a_shadow_member_under_a_taken_name_must_be_the_same_model(tmp_path: Path) -> None:
    """Triton knows models by name: a different candidate under the primary's name would replace it."""
    impostor = tmp_path / "impostor"
    shutil.copytree(UNTRAINED_MANIFEST.parent, impostor)
    manifest = json.loads(UNTRAINED_MANIFEST.read_text())
    manifest["name"] = json.loads(DEFAULT_MODEL.read_text())["name"]
    (impostor / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="differs from the primary model"):
        build_repo([DEFAULT_MODEL], tmp_path / "repo", "gpu", shadow_paths=[impostor / "model.json"])
    with pytest.raises(ValueError, match="no model may be named"):
        renamed = {**manifest, "name": "shadow_ensemble"}
        (impostor / "model.json").write_text(json.dumps(renamed))
        build_repo([DEFAULT_MODEL], tmp_path / "repo", "gpu", shadow_paths=[impostor / "model.json"])


def test_a_build_without_shadow_removes_a_stale_shadow_ensemble_and_its_members(tmp_path: Path) -> None:
    build_repo([UNTRAINED_MANIFEST], tmp_path, "gpu", copy_models=False, shadow_paths=[DEFAULT_MODEL])
    assert (tmp_path / "shadow_ensemble" / "config.pbtxt").is_file()
    shadow_only = json.loads(DEFAULT_MODEL.read_text())["name"]
    primary = json.loads(UNTRAINED_MANIFEST.read_text())["name"]
    assert (tmp_path / shadow_only / "config.pbtxt").is_file()
    mine = tmp_path / "operator-model"  # a folder the generator did not write: never touched
    (mine / "1").mkdir(parents=True)
    (mine / "config.pbtxt").write_text('name: "operator-model"\n')
    build_repo([UNTRAINED_MANIFEST], tmp_path, "gpu", copy_models=False)
    assert not (tmp_path / "shadow_ensemble").exists()
    assert not (tmp_path / shadow_only).exists(), "a member only the old shadow used is gone"
    assert _model_dirs(tmp_path) == {primary, "ensemble", "operator-model"}


def test_cli_builds_the_shadow_from_the_flag_or_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in [k for k in os.environ if k.startswith("DFG_")]:
        monkeypatch.delenv(key)
    base = ["triton", "build-repo", "--target", "gpu", "--configs-only", "--models", str(DEFAULT_MODEL)]
    assert main([*base, "--out", str(tmp_path / "none")]) == 0
    assert not (tmp_path / "none" / "shadow_ensemble").exists()
    assert main([*base, "--out", str(tmp_path / "flag"), "--shadow", str(UNTRAINED_MANIFEST)]) == 0
    assert "shadow ensemble of 1" in capsys.readouterr().out
    monkeypatch.setenv("DFG_SHADOW_MODEL_PATHS", json.dumps([str(UNTRAINED_MANIFEST)]))
    assert main([*base, "--out", str(tmp_path / "settings")]) == 0
    for d in ("flag", "settings"):
        (step,) = _config(tmp_path / d / "shadow_ensemble" / "config.pbtxt").ensemble_scheduling.step
        assert step.model_name == "dfguard-untrained-mini"


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


def test_plan_build_script_builds_a_shared_member_once(tmp_path: Path) -> None:
    repo = build_repo(
        [UNTRAINED_MANIFEST], tmp_path / "repo", "gpu", shadow_paths=[UNTRAINED_MANIFEST, DEFAULT_MODEL]
    )
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
    engines = sorted(a for line in log.read_text().splitlines() for a in line.split() if "--saveEngine" in a)
    name = json.loads(DEFAULT_MODEL.read_text())["name"]
    assert engines == [
        f"--saveEngine={repo}/{name}/1/model.plan",
        f"--saveEngine={repo}/dfguard-untrained-mini/1/model.plan",
    ]


def test_plan_build_script_refuses_a_configs_only_repo(tmp_path: Path) -> None:
    repo = build_repo([UNTRAINED_MANIFEST], tmp_path / "repo", "gpu", copy_models=False)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    (tmp_path / "trtexec").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "trtexec").chmod(0o755)
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_trt_plans.sh"), str(repo)], env=env, capture_output=True
    )
    assert out.returncode == 2 and b"model.onnx missing" in out.stderr
