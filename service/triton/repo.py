"""Generate a Triton model repository from model manifests: one member per classifier plus an `ensemble`.

The ensemble takes one input per group of members whose prepared crops are identical (`input_groups`) and
returns every member's crop scores (`<member>__score`, FP32 [1] per crop) in one call; the video-level
aggregation stays in `service/decision.py`, so Triton and embedded verdicts are computed the same way.

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

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from service.inference.prepare import input_groups
from service.models.manifest import ModelManifest, load_manifest

__all__ = ["ENSEMBLE", "RepoOptions", "build_repo", "score_output"]

ENSEMBLE = "ensemble"
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


def _ensemble_config(models: list[ModelManifest], o: RepoOptions) -> str:
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
        f'name: "{ENSEMBLE}"\nplatform: "ensemble"\nmax_batch_size: {o.max_batch_size}\n'
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


def build_repo(
    manifest_paths: list[Path],
    out: Path,
    target: Target,
    options: RepoOptions | None = None,
    *,
    copy_models: bool = True,
) -> Path:
    """Write the repository for `target` into `out` (replacing members it owns); return `out`.

    `copy_models=False` writes configs and manifests only (the committed GPU layout): the ONNX files are then
    copied at deploy time, and `scripts/build_trt_plans.sh` turns each `1/model.onnx` into `1/model.plan`.
    """
    if target == "cpu" and not copy_models:
        raise ValueError("the cpu target serves the ONNX files themselves: copy_models must be true")
    o = options or RepoOptions()
    loaded = [load_manifest(p) for p in manifest_paths]
    models = [m for m, _ in loaded]
    if len({m.name for m in models}) != len(models):
        raise ValueError("model names must be unique in an ensemble")
    if ENSEMBLE in {m.name for m in models}:
        raise ValueError(f"no model may be named {ENSEMBLE!r}")
    out.mkdir(parents=True, exist_ok=True)
    for (m, model_path), manifest_path in zip(loaded, manifest_paths, strict=True):
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
    e = out / ENSEMBLE
    if e.exists():
        shutil.rmtree(e)
    (e / "1").mkdir(parents=True)
    (e / "1" / ".gitkeep").write_text("")  # Triton needs the version folder; git keeps no empty folder
    (e / "config.pbtxt").write_text(_ensemble_config(models, o))
    return out
