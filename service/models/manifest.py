"""Model manifests: everything needed to feed a classifier exactly as it was trained, and ensembles.

A manifest (`model.json`) sits beside its ONNX file. Cropping (margin, size, resize recipe) and normalisation
come from it and nowhere else, so a served model can never silently see different pixels than in training.
An ensemble manifest (`"kind": "ensemble"`) names its member manifests with the aggregation and the
thresholds fitted for exactly that combination: thresholds belong to what produces the score, so they are not
averaged from members calibrated alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.config import Aggregation

__all__ = [
    "AudioModelManifest",
    "AudioThresholds",
    "CalibratedThresholds",
    "EnsembleManifest",
    "EnsembleThresholds",
    "ModelManifest",
    "ModelSet",
    "ModelSource",
    "find_manifest",
    "load_audio_manifest",
    "load_manifest",
    "resolve_models",
]


class CalibratedThresholds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    review: float = Field(ge=0.0, le=1.0)
    flag: float = Field(ge=0.0, le=1.0)


class ModelSource(BaseModel):
    """Where imported weights came from, so that a converted copy can be traced and its terms honoured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repository: str = Field(description="Public repository of the reference implementation and weights.")
    commit: str
    file: str = Field(description="Name of the source weight file.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Of the source weight file.")
    licence_files: tuple[str, ...] = Field(
        (), description="Licence and notice files beside the manifest; they travel with every copy."
    )


class ModelManifest(BaseModel):
    """Describes one classifier file and the exact preprocessing it expects."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    schema_version: Literal[1] = 1
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: str
    trained: bool = Field(description="False for a placeholder network with random weights.")
    file: str = Field(description="ONNX file, relative to the manifest.")
    sha256: str | None = Field(None, description="Checked at load time when present.")
    input_name: str = "input"
    output_name: str = "output"
    input_size: int = Field(ge=16, le=1024, description="Square input side in pixels.")
    input_dtype: Literal["uint8", "float32"] = Field(
        description="uint8: raw RGB pixels, normalisation inside the graph; float32: normalised outside."
    )
    input_layout: Literal["NHWC", "NCHW"]
    mean: tuple[float, float, float] = Field(description="RGB mean of pixels scaled to [0, 1].")
    std: tuple[float, float, float] = Field(description="RGB std of pixels scaled to [0, 1].")
    normalization_in_graph: bool
    crop_margin: float = Field(ge=0.0, le=1.0, description="Fraction of the face box added on each side.")
    resize: Literal["linear", "area_cubic", "stretch", "aligned"] = Field(
        "linear",
        description="Crop recipe (service.faces.crop): dfguard's, the DFDC winner's, SBI's, or `aligned` "
        "(MesoNet's: a square on the 5 detector landmarks, centred on the nose tip, side 2.86 x the larger "
        "of the eye distance and the eyes-to-mouth distance, rotated so the eyes-to-mouth axis is vertical, "
        "reflect-padded outside the frame; `crop_margin` does not apply).",
    )
    output: Literal["probability", "logit"] = Field(description="What the single output value per crop is.")
    output_meaning: str = "probability that the face is manipulated (fake)"
    thresholds: CalibratedThresholds | None = Field(None, description="Calibrated review/flag thresholds.")
    description: str = ""
    licence: str = ""
    source: ModelSource | None = Field(None, description="Origin of imported weights.")

    @model_validator(mode="after")
    def _consistent(self) -> ModelManifest:
        if self.input_dtype == "uint8" and not self.normalization_in_graph:
            raise ValueError("uint8 input requires normalization_in_graph")
        if self.thresholds and self.thresholds.review > self.thresholds.flag:
            raise ValueError("thresholds.review must not exceed thresholds.flag")
        return self


class EnsembleThresholds(CalibratedThresholds):
    """Thresholds fitted on the ensemble's own video scores, with how and on what."""

    method: str = Field(description="How they were fitted, e.g. the validation-real quantiles used.")
    fitted_on: str = Field(description="The data they were fitted on (never the test split).")


class EnsembleManifest(BaseModel):
    """The unit that is served and calibrated: member models, aggregation, thresholds for that aggregation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    kind: Literal["ensemble"]
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: str
    members: list[str] = Field(min_length=1, description="Member manifests, relative to this file.")
    aggregation: Aggregation = Field(
        description="Per-model aggregation of crop scores (then mean over models)."
    )
    thresholds: EnsembleThresholds | None = None
    description: str = ""
    licence: str = ""


class AudioThresholds(CalibratedThresholds):
    """Review / flag thresholds on a track's p(synthetic speech), with how and on what they were fitted."""

    method: str
    fitted_on: str = Field(description="The data they were fitted on (never the test split).")
    windows: int = Field(ge=1, description="Windows per track the scores were averaged over when fitting.")
    early_exit_below: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="A track whose first window scores below this is decided on that window alone (the "
        "others are not scored): fitted so that no calibration fake caught with every window is lost; null: "
        "always score every window.",
    )


class AudioModelManifest(BaseModel):
    """An anti-spoofing model scoring fixed-length windows of 16 kHz mono speech.

    The model outputs two logits per window, [synthetic, bona fide]; a window's score is their difference
    (a log-likelihood ratio) and a track's score is the sigmoid of the mean over its windows, the quantity
    the thresholds were fitted on.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    schema_version: Literal[1] = 1
    kind: Literal["audio"]
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: str
    file: str = Field(description="ONNX file, relative to the manifest.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Checked at load time.")
    input_name: str = "waveform"
    output_name: str = "logits"
    sample_rate: Literal[16000] = 16000
    window_samples: int = Field(ge=1600, le=1_000_000, description="Samples per window (float32 in [-1, 1]).")
    output: Literal["logits_synthetic_bonafide"] = "logits_synthetic_bonafide"
    thresholds: AudioThresholds
    reference_outputs: str | None = Field(
        None, description="JSON file of the model's recorded outputs on fixed inputs (the parity test's)."
    )
    description: str = ""
    licence: str = ""
    source: ModelSource | None = None


def load_audio_manifest(path: str | Path) -> tuple[AudioModelManifest, Path]:
    """Read an audio model manifest; returns it with its hash-checked model file (licences must travel)."""
    path = Path(path)
    manifest = AudioModelManifest.model_validate_json(path.read_bytes())
    return manifest, _checked_model_file(path, manifest.file, manifest.sha256, manifest.source)


@dataclass(frozen=True)
class ModelSet:
    """What `DFG_MODEL_PATHS` resolves to: member manifests, and the ensemble manifest if one was named."""

    member_paths: list[Path]
    ensemble: EnsembleManifest | None = None


def _is_ensemble(path: Path) -> bool:
    data = json.loads(path.read_bytes())
    return isinstance(data, dict) and data.get("kind") == "ensemble"


def resolve_models(paths: Sequence[str | Path]) -> ModelSet:
    """One ensemble manifest, or any number of model manifests (an ad-hoc ensemble without thresholds)."""
    given = [Path(p) for p in paths]
    if not given:
        raise ValueError("at least one model manifest is required")
    ensembles = [p for p in given if _is_ensemble(p)]
    if not ensembles:
        return ModelSet(given)
    if len(given) > 1:
        raise ValueError(
            f"{ensembles[0]} is an ensemble manifest: name it alone ({len(given)} manifests given)"
        )
    ens = EnsembleManifest.model_validate_json(ensembles[0].read_bytes())
    members = [(ensembles[0].parent / m).resolve() for m in ens.members]
    for m in members:
        if not m.is_file():
            raise FileNotFoundError(f"member manifest {m} named by {ensembles[0]} does not exist")
        if _is_ensemble(m):
            raise ValueError(
                f"member {m} named by {ensembles[0]} is an ensemble manifest: members are models"
            )
    return ModelSet(members, ens)


def _checked_model_file(path: Path, file: str, sha256: str | None, source: ModelSource | None) -> Path:
    """The model file a manifest at `path` names, hash-checked when a sha256 is stated, with the licence files
    its source requires present beside the manifest (they travel with every copy)."""
    model_path = (path.parent / file).resolve()
    if not model_path.is_file():
        raise FileNotFoundError(f"model file {model_path} named by {path} does not exist")
    if sha256:
        digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
        if digest != sha256:
            raise ValueError(f"{model_path} has sha256 {digest}, manifest {path} says {sha256}")
    licence_files = source.licence_files if source else ()
    missing = [n for n in licence_files if not (path.parent / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} must travel with its licence files; missing beside it: {missing}")
    return model_path


def load_manifest(path: str | Path) -> tuple[ModelManifest, Path]:
    """Read a manifest and return it with the resolved path of its model file (hash-checked if stated)."""
    path = Path(path)
    manifest = ModelManifest.model_validate_json(path.read_bytes())
    return manifest, _checked_model_file(path, manifest.file, manifest.sha256, manifest.source)


def find_manifest(models: list[ModelManifest], name: str) -> ModelManifest:
    """The manifest of the model called `name` in an ensemble."""
    for m in models:
        if m.name == name:
            return m
    raise KeyError(f"unknown model {name}")
