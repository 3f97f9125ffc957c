"""Model manifests and the registry of models the service serves."""

from pathlib import Path

from service.models.manifest import (
    CalibratedThresholds,
    EnsembleManifest,
    ModelManifest,
    ModelSet,
    load_manifest,
    resolve_models,
)

BUILTIN_DIR = Path(__file__).parent / "builtin"
# Trained here on Self-Blended Images (training/, see builtin/sbi-mnv3s/MODEL_CARD.md).
DEFAULT_MANIFEST = BUILTIN_DIR / "sbi-mnv3s" / "model.json"
# The seeded random 4-layer CNN (scripts/make_untrained_model.py): kept for plumbing tests and benchmarks that
# need a tiny graph of known structure (the Triton and batcher tests, bench.gpu's PyTorch replica of it).
UNTRAINED_MANIFEST = BUILTIN_DIR / "untrained-mini" / "model.json"

__all__ = [
    "BUILTIN_DIR",
    "DEFAULT_MANIFEST",
    "UNTRAINED_MANIFEST",
    "CalibratedThresholds",
    "EnsembleManifest",
    "ModelManifest",
    "ModelSet",
    "load_manifest",
    "resolve_models",
]
