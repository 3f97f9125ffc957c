"""Generate a Triton model repository from model manifests: one member per classifier plus an `ensemble`.

The ensemble takes one input per group of members whose prepared crops are identical (`input_groups`) and
returns every member's crop scores (`<member>__score`, FP32 [1] per crop) in one call; the video-level
aggregation stays in `service/decision.py`, so Triton and embedded verdicts are computed the same way.

A shadow (candidate) ensemble, when given, is a second ensemble model, `shadow_ensemble`, built the same way
from its own manifests. Members are models of the repository, not of an ensemble: a member the primary also
uses is written once and serves both (one copy of the weights on the GPU, one TensorRT plan), and two
different models may not share a name. The shadow's inputs and outputs are its own, so its client
(`TritonBackend(..., ensemble_model="shadow_ensemble")`) prepares crops exactly as for the primary.

Targets:
- `gpu`: members are TensorRT plans (`platform: "tensorrt_plan"`, built in FP16 from the ONNX files by
  `scripts/build_trt_plans.sh`, run by the Kubernetes init job in NVIDIA's image); `model.plan` files are
  build outputs and are not written here. The committed `model_repository/` is this layout.
- `cpu`: members are Python-backend models that run the same ONNX files with ONNX Runtime (the only backend
  the `nvidia-pytriton` wheel bundles); used by tests and CPU-only deployments.
Members get dynamic batching (`max_queue_delay_microseconds`) and instance groups; inputs and outputs are the
ONNX graph's own, so the client prepares crops exactly as the embedded backend does (`inference/prepare.py`).
"""

from __future__ import annotations

import filecmp
import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from service.inference.prepare import input_groups
from service.models.manifest import ModelManifest, load_manifest

__all__ = ["ENSEMBLE", "SHADOW_ENSEMBLE", "RepoOptions", "build_repo", "score_output"]

ENSEMBLE = "ensemble"
SHADOW_ENSEMBLE = "shadow_ensemble"
Target = Literal["gpu", "cpu"]

_MODEL_PY = Path(__file__).with_name("python_model.py")
_DTYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32"}


@dataclass(frozen=True)
class RepoOptions:
    max_batch_size: int = 64
    max_queue_delay_microseconds: int = 2000
    instances: int = 1
    cpu_threads: int = 2  # ONNX Runtime threads inside each CPU (Python-backend) instance


def score_output(member: str) -> str:
    return f"{member}__score"


def _dims(m: ModelManifest) -> str:
    s = m.input_size
    return f"[ {s}, {s}, 3 ]" if m.input_layout == "NHWC" else f"[ 3, {s}, {s} ]"


def _output_rank(model_path: Path) -> int:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return len(session.get_outputs()[0].shape)


def _member_config(m: ModelManifest, target: Target, rank: int, o: RepoOptions) -> str:
    # Every member answers FP32 [1] per crop: an ONNX output of shape [batch] is reshaped to it.
    reshape = " reshape: { shape: [ ] }" if rank == 1 and target == "gpu" else ""
    head = (
        f'name: "{m.name}"\nplatform: "tensorrt_plan"\n'
        if target == "gpu"
        else f'name: "{m.name}"\nbackend: "python"\n'
    )
    kind = "KIND_GPU" if target == "gpu" else "KIND_CPU"
    text = (
        head
        + f"max_batch_size: {o.max_batch_size}\n"
        + f'input [ {{ name: "{m.input_name}" data_type: {_DTYPES[m.input_dtype]} dims: {_dims(m)} }} ]\n'
        + f'output [ {{ name: "{m.output_name}" data_type: TYPE_FP32 dims: [ 1 ]{reshape} }} ]\n'
        + f"dynamic_batching {{ max_queue_delay_microseconds: {o.max_queue_delay_microseconds} }}\n"
        + f"instance_group [ {{ count: {o.instances} kind: {kind} }} ]\n"
    )
    if target == "cpu":
        text += f'parameters {{ key: "intra_op_threads" value: {{ string_value: "{o.cpu_threads}" }} }}\n'
    return text


def _ensemble_config(name: str, models: list[ModelManifest], o: RepoOptions) -> str:
    inputs, steps = [], []
    for input_name, members in input_groups(models):
        m0 = members[0]
        inputs.append(f'  {{ name: "{input_name}" data_type: {_DTYPES[m0.input_dtype]} dims: {_dims(m0)} }}')
        for m in members:
            steps.append(
                f'    {{ model_name: "{m.name}" model_version: -1\n'
                f'      input_map {{ key: "{m.input_name}" value: "{input_name}" }}\n'
                f'      output_map {{ key: "{m.output_name}" value: "{score_output(m.name)}" }} }}'
            )
    outputs = [f'  {{ name: "{score_output(m.name)}" data_type: TYPE_FP32 dims: [ 1 ] }}' for m in models]
    return (
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {o.max_batch_size}\n'
        + "input [\n"
        + ",\n".join(inputs)
        + "\n]\n"
        + "output [\n"
        + ",\n".join(outputs)
        + "\n]\n"
        + "ensemble_scheduling {\n  step [\n"
        + ",\n".join(steps)
        + "\n  ]\n}\n"
    )


def _members(
    primary: list[tuple[ModelManifest, Path, Path]], shadow: list[tuple[ModelManifest, Path, Path]]
) -> list[tuple[ModelManifest, Path, Path]]:
    """The repository's members: the primary's, then the shadow's not already among them.

    A shadow member named like a primary member must be that same model (manifest and weights), because
    Triton knows a model by its name: two different files under one name would silently serve one of them.
    """
    for models, what in ((primary, "an ensemble"), (shadow, "the shadow ensemble")):
        names = [m.name for m, _, _ in models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique in {what}")
        if {ENSEMBLE, SHADOW_ENSEMBLE} & set(names):
            raise ValueError(f"no model may be named {ENSEMBLE!r} or {SHADOW_ENSEMBLE!r}")
    by_name = {m.name: (m, model_path) for m, model_path, _ in primary}
    members = list(primary)
    for m, model_path, manifest_path in shadow:
        if m.name not in by_name:
            members.append((m, model_path, manifest_path))
            continue
        same, same_path = by_name[m.name]
        if same != m or not filecmp.cmp(same_path, model_path, shallow=False):
            raise ValueError(
                f"shadow model {m.name!r} ({manifest_path}) differs from the primary model of that name: "
                "give the candidate a name of its own"
            )
    return members


def _write_ensemble(out: Path, name: str, models: list[ModelManifest], o: RepoOptions) -> None:
    e = out / name
    if e.exists():
        shutil.rmtree(e)
    (e / "1").mkdir(parents=True)
    (e / "1" / ".gitkeep").write_text("")  # Triton needs the version folder; git keeps no empty folder
    (e / "config.pbtxt").write_text(_ensemble_config(name, models, o))


def build_repo(
    manifest_paths: list[Path],
    out: Path,
    target: Target,
    options: RepoOptions | None = None,
    *,
    copy_models: bool = True,
    shadow_paths: Sequence[Path] = (),
) -> Path:
    """Write the repository for `target` into `out` (replacing members it owns); return `out`.

    `copy_models=False` writes configs and manifests only (the committed GPU layout): the ONNX files are then
    copied at deploy time, and `scripts/build_trt_plans.sh` turns each `1/model.onnx` into `1/model.plan`.
    `shadow_paths` (member manifests) adds `shadow_ensemble`; without them a `shadow_ensemble` left by an
    earlier build is removed, since Triton would otherwise still load (and fail on) its stale members. Member
    folders an earlier build wrote for either ensemble that neither ensemble uses now (a dropped shadow
    candidate) are removed too: Triton loads every folder, so they would hold memory for nothing. Only folders
    named by a previous build's ensemble configs and holding its `1/model.json` are touched, never others.
    """
    if target == "cpu" and not copy_models:
        raise ValueError("the cpu target serves the ONNX files themselves: copy_models must be true")
    o = options or RepoOptions()
    primary = [(*load_manifest(p), Path(p)) for p in manifest_paths]
    shadow = [(*load_manifest(p), Path(p)) for p in shadow_paths]
    members = _members(primary, shadow)
    previous = _previous_members(out)
    out.mkdir(parents=True, exist_ok=True)
    for m, model_path, manifest_path in members:
        d = out / m.name
        if d.exists():
            shutil.rmtree(d)
        (d / "1").mkdir(parents=True)
        (d / "config.pbtxt").write_text(_member_config(m, target, _output_rank(model_path), o))
        (d / "1" / "model.json").write_text(
            json.dumps(json.loads(manifest_path.read_text()), indent=2) + "\n"
        )
        for name in m.source.licence_files if m.source else ():  # licence terms travel with every copy
            shutil.copyfile(manifest_path.parent / name, d / "1" / name)
        if copy_models:
            shutil.copyfile(model_path, d / "1" / "model.onnx")  # gpu: the source of model.plan
        if target == "cpu":
            shutil.copyfile(_MODEL_PY, d / "1" / "model.py")
    _write_ensemble(out, ENSEMBLE, [m for m, _, _ in primary], o)
    if shadow:
        _write_ensemble(out, SHADOW_ENSEMBLE, [m for m, _, _ in shadow], o)
    elif (out / SHADOW_ENSEMBLE).exists():
        shutil.rmtree(out / SHADOW_ENSEMBLE)
    current = {m.name for m, _, _ in members}
    for name in sorted(previous - current):
        d = out / name
        if (d / "config.pbtxt").is_file() and (d / "1" / "model.json").is_file():
            shutil.rmtree(d)
    return out


_STEP_MODEL = re.compile(r'model_name: "([^"/\\]+)"')


def _previous_members(out: Path) -> set[str]:
    """The member names the ensembles of an earlier build in `out` referenced (what that build wrote)."""
    names: set[str] = set()
    for ensemble in (ENSEMBLE, SHADOW_ENSEMBLE):
        config = out / ensemble / "config.pbtxt"
        if config.is_file():
            names.update(_STEP_MODEL.findall(config.read_text()))
    return names - {ENSEMBLE, SHADOW_ENSEMBLE, ".", ".."}
