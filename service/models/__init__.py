"""Model manifests and the registry of models the service serves."""

from pathlib import Path

from service.models.manifest import CalibratedThresholds, ModelManifest, load_manifest

BUILTIN_DIR = Path(__file__).parent / "builtin"
DEFAULT_MANIFEST = BUILTIN_DIR / "untrained-mini" / "model.json"

__all__ = ["BUILTIN_DIR", "DEFAULT_MANIFEST", "CalibratedThresholds", "ModelManifest", "load_manifest"]
