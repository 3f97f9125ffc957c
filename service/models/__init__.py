"""Model manifests and the registry of models the service serves."""

from pathlib import Path

from service.models.manifest import (
    AudioModelManifest,
    CalibratedThresholds,
    EnsembleManifest,
    ModelManifest,
    ModelSet,
    load_audio_manifest,
    load_manifest,
    resolve_models,
)

BUILTIN_DIR = Path(__file__).parent / "builtin"
# What the service serves unless told otherwise: one ensemble manifest (members, aggregation, the thresholds
# fitted for that aggregation; training/calibrate.py writes it). See builtin/faceres-sbi/MODEL_CARD.md.
DEFAULT_ENSEMBLE = BUILTIN_DIR / "default" / "ensemble.json"
# Its member: faceres (VGGFace2 MobileNetV1) fine-tuned here on Self-Blended Images (training/).
DEFAULT_MODEL = BUILTIN_DIR / "faceres-sbi" / "model.json"
# The seeded random 4-layer CNN (scripts/make_untrained_model.py): kept for plumbing tests and benchmarks that
# need a tiny graph of known structure (the Triton and batcher tests, bench.gpu's PyTorch replica of it).
UNTRAINED_MANIFEST = BUILTIN_DIR / "untrained-mini" / "model.json"
# The audio model: the published AASIST-L (MIT) with its final layer re-fitted here on compressed real and
# synthetic speech; see builtin/aasist-l-dfguard/MODEL_CARD.md.
DEFAULT_AUDIO_MODEL = BUILTIN_DIR / "aasist-l-dfguard" / "model.json"

__all__ = [
    "BUILTIN_DIR",
    "DEFAULT_AUDIO_MODEL",
    "DEFAULT_ENSEMBLE",
    "DEFAULT_MODEL",
    "UNTRAINED_MANIFEST",
    "AudioModelManifest",
    "CalibratedThresholds",
    "EnsembleManifest",
    "ModelManifest",
    "ModelSet",
    "load_audio_manifest",
    "load_manifest",
    "resolve_models",
]
