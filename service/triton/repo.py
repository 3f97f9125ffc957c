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

The audio (anti-spoofing) model, when given (`audio_path`, an audio manifest), is one more member named
after its manifest, outside both ensembles (its input is speech, not crops): FP32 `[window_samples]`
windows in, FP32 `[2]` logits [synthetic, bona fide] out, at most `AUDIO_MAX_BATCH_SIZE` windows per run
(a track sends a few), dynamic batching like the others; the client (`TritonBackend.predict_audio`) turns
the logits into LLRs as the embedded backend does. A later build without it (or with another) removes the
audio member an earlier build wrote (a folder whose `1/model.json` is an audio manifest). Licence files a
manifest lists are copied into the version folder with the weights: they travel with every copy.
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
from service.models.manifest import AudioModelManifest, ModelManifest, load_audio_manifest, load_manifest

__all__ = [
    "AUDIO_MAX_BATCH_SIZE",
    "ENSEMBLE",
    "SHADOW_ENSEMBLE",
    "RepoOptions",
    "audio_batch_size",
    "build_repo",
    "score_output",
]

ENSEMBLE = "ensemble"
SHADOW_ENSEMBLE = "shadow_ensemble"
# Windows per run of the audio member: a track sends `DFG_AUDIO_WINDOWS` (at most 16) windows of ~4 s.
AUDIO_MAX_BATCH_SIZE = 16
Target = Literal["gpu", "cpu"]

_MODEL_PY = Path(__file__).with_name("python_model.py")
_DTYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32"}


@dataclass(frozen=True)
class RepoOptions:
    max_batch_size: int = 64
    max_queue_delay_microseconds: int = 2000
    instances: int = 1
    cpu_threads: int = 2  # ONNX Runtime threads inside each CPU (Python-backend) instance


def audio_batch_size(max_batch_size: int) -> int:
    """The audio member's max_batch_size for a repository (and its client) built with `max_batch_size`."""
    return max(1, min(max_batch_size, AUDIO_MAX_BATCH_SIZE))


def score_output(member: str) -> str:
    return f"{member}__score"


def _dims(m: ModelManifest) -> str:
    s = m.input_size
    return f"[ {s}, {s}, 3 ]" if m.input_layout == "NHWC" else f"[ 3, {s}, {s} ]"


def _output_rank(model_path: Path) -> int:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return len(session.get_outputs()[0].shape)


def _config(
    name: str,
    target: Target,
    max_batch_size: int,
    tensor_in: str,
    tensor_out: str,
    o: RepoOptions,
    comment: str = "",
) -> str:
    """A member's config.pbtxt: one input and one output (`name`, type, dims: one line each)."""
    head = f'name: "{name}"\n' + ('platform: "tensorrt_plan"\n' if target == "gpu" else 'backend: "python"\n')
    kind = "KIND_GPU" if target == "gpu" else "KIND_CPU"
    text = (
        comment
        + head
        + f"max_batch_size: {max_batch_size}\n"
        + f"input [ {{ {tensor_in} }} ]\n"
        + f"output [ {{ {tensor_out} }} ]\n"
        + f"dynamic_batching {{ max_queue_delay_microseconds: {o.max_queue_delay_microseconds} }}\n"
        + f"instance_group [ {{ count: {o.instances} kind: {kind} }} ]\n"
    )
    if target == "cpu":
        text += f'parameters {{ key: "intra_op_threads" value: {{ string_value: "{o.cpu_threads}" }} }}\n'
    return text


def _member_config(m: ModelManifest, target: Target, rank: int, o: RepoOptions) -> str:
    # Every member answers FP32 [1] per crop: an ONNX output of shape [batch] is reshaped to it.
    reshape = " reshape: { shape: [ ] }" if rank == 1 and target == "gpu" else ""
    return _config(
        m.name,
        target,
        o.max_batch_size,
        f'name: "{m.input_name}" data_type: {_DTYPES[m.input_dtype]} dims: {_dims(m)}',
        f'name: "{m.output_name}" data_type: TYPE_FP32 dims: [ 1 ]{reshape}',
        o,
    )


def _audio_config(m: AudioModelManifest, target: Target, o: RepoOptions) -> str:
    comment = (
        "# Audio anti-spoofing model: FP32 windows of 16 kHz speech in, [synthetic, bona fide] logits out.\n"
        "# precision: fp32 (no --fp16 for this plan: its LLRs are compared with thresholds fitted in FP32)\n"
        if target == "gpu"
        else ""
    )
    return _config(
        m.name,
        target,
        audio_batch_size(o.max_batch_size),
        f'name: "{m.input_name}" data_type: TYPE_FP32 dims: [ {m.window_samples} ]',
        f'name: "{m.output_name}" data_type: TYPE_FP32 dims: [ 2 ]',
        o,
        comment,
    )


def _check_audio_graph(m: AudioModelManifest, model_path: Path) -> None:
    """The ONNX graph must take what the manifest says (FP32 [batch, window_samples]) and give [batch, 2]."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    i, out = inputs[0], next((o for o in outputs if o.name == m.output_name), outputs[0])
    shape_in, shape_out = list(i.shape), list(out.shape)
    if (
        len(inputs) != 1
        or i.name != m.input_name
        or i.type != "tensor(float)"
        or len(shape_in) != 2
        or shape_in[1] != m.window_samples
        or out.name != m.output_name
        or len(shape_out) != 2
        or shape_out[1] != 2
    ):
        raise ValueError(
            f"{model_path}: expected {m.input_name} float [batch, {m.window_samples}] -> {m.output_name} "
            f"[batch, 2]; the graph has {i.name} {i.type} {shape_in} -> {out.name} {shape_out}"
        )


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
    audio_path: Path | None = None,
) -> Path:
    """Write the repository for `target` into `out` (replacing members it owns); return `out`.

    `copy_models=False` writes configs and manifests only (the committed GPU layout): the ONNX files are then
    copied at deploy time, and `scripts/build_trt_plans.sh` turns each `1/model.onnx` into `1/model.plan`.
    `shadow_paths` (member manifests) adds `shadow_ensemble`; without them a `shadow_ensemble` left by an
    earlier build is removed, since Triton would otherwise still load (and fail on) its stale members. Member
    folders an earlier build wrote for either ensemble that neither ensemble uses now (a dropped shadow
    candidate) are removed too: Triton loads every folder, so they would hold memory for nothing. Only folders
    named by a previous build's ensemble configs and holding its `1/model.json` are touched, never others.
    `audio_path` (an audio model manifest) adds the audio member, outside the ensembles; an audio member an
    earlier build wrote (its `1/model.json` an audio manifest) that this build does not is removed.
    """
    if target == "cpu" and not copy_models:
        raise ValueError("the cpu target serves the ONNX files themselves: copy_models must be true")
    o = options or RepoOptions()
    primary = [(*load_manifest(p), Path(p)) for p in manifest_paths]
    shadow = [(*load_manifest(p), Path(p)) for p in shadow_paths]
    members = _members(primary, shadow)
    audio = (*load_audio_manifest(audio_path), Path(audio_path)) if audio_path is not None else None
    if audio is not None and audio[0].name in {ENSEMBLE, SHADOW_ENSEMBLE} | {m.name for m, _, _ in members}:
        raise ValueError(f"the audio model's name {audio[0].name!r} is taken by a model or an ensemble")
    previous = _previous_members(out) | _previous_audio_members(out)
    out.mkdir(parents=True, exist_ok=True)
    for m, model_path, manifest_path in members:
        config = _member_config(m, target, _output_rank(model_path), o)
        _write_member(out / m.name, config, model_path, manifest_path, target, copy_models=copy_models)
        for name in m.source.licence_files if m.source else ():  # licence terms travel with every copy
            shutil.copyfile(manifest_path.parent / name, out / m.name / "1" / name)
    if audio is not None:
        am, model_path, manifest_path = audio
        _check_audio_graph(am, model_path)
        d = out / am.name
        config = _audio_config(am, target, o)
        _write_member(d, config, model_path, manifest_path, target, copy_models=copy_models)
        if copy_models:  # its licence terms travel with every copy of the weights
            for name in am.source.licence_files if am.source else ():
                shutil.copyfile(manifest_path.parent / name, d / "1" / name)
    _write_ensemble(out, ENSEMBLE, [m for m, _, _ in primary], o)
    if shadow:
        _write_ensemble(out, SHADOW_ENSEMBLE, [m for m, _, _ in shadow], o)
    elif (out / SHADOW_ENSEMBLE).exists():
        shutil.rmtree(out / SHADOW_ENSEMBLE)
    current = {m.name for m, _, _ in members} | ({audio[0].name} if audio is not None else set())
    for name in sorted(previous - current):
        d = out / name
        if (d / "config.pbtxt").is_file() and (d / "1" / "model.json").is_file():
            shutil.rmtree(d)
    return out


def _write_member(
    d: Path, config: str, model_path: Path, manifest_path: Path, target: Target, *, copy_models: bool
) -> None:
    """A member's folder: its config, `1/model.json` (the manifest), the ONNX file, and the CPU runner."""
    if d.exists():
        shutil.rmtree(d)
    (d / "1").mkdir(parents=True)
    (d / "config.pbtxt").write_text(config)
    (d / "1" / "model.json").write_text(json.dumps(json.loads(manifest_path.read_text()), indent=2) + "\n")
    if copy_models:
        shutil.copyfile(model_path, d / "1" / "model.onnx")  # gpu: the source of model.plan
    if target == "cpu":
        shutil.copyfile(_MODEL_PY, d / "1" / "model.py")


_STEP_MODEL = re.compile(r'model_name: "([^"/\\]+)"')


def _previous_members(out: Path) -> set[str]:
    """The member names the ensembles of an earlier build in `out` referenced (what that build wrote)."""
    names: set[str] = set()
    for ensemble in (ENSEMBLE, SHADOW_ENSEMBLE):
        config = out / ensemble / "config.pbtxt"
        if config.is_file():
            names.update(_STEP_MODEL.findall(config.read_text()))
    return names - {ENSEMBLE, SHADOW_ENSEMBLE, ".", ".."}


def _previous_audio_members(out: Path) -> set[str]:
    """Audio members an earlier build wrote in `out`: folders whose `1/model.json` is an audio manifest."""
    names: set[str] = set()
    if not out.is_dir():
        return names
    for manifest in out.glob("*/1/model.json"):
        d = manifest.parent.parent
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("kind") == "audio" and data.get("name") == d.name:
            names.add(d.name)
    return names
