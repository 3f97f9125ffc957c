"""Model manifests and the embedded ONNX Runtime backend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from service.inference import OnnxRuntimeBackend
from service.models import DEFAULT_MANIFEST, ModelManifest, load_manifest


def test_default_manifest_is_named_untrained_and_hash_checked() -> None:
    manifest, model_path = load_manifest(DEFAULT_MANIFEST)
    assert manifest.trained is False
    assert "untrained" in manifest.version
    assert model_path.is_file() and manifest.sha256


def test_tampered_model_file_is_refused(tmp_path: Path) -> None:
    data = json.loads(DEFAULT_MANIFEST.read_text())
    (tmp_path / "model.onnx").write_bytes((DEFAULT_MANIFEST.parent / "model.onnx").read_bytes() + b"x")
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="sha256"):
        load_manifest(tmp_path / "model.json")


def test_manifest_rejects_inconsistent_preprocessing() -> None:
    base = json.loads(DEFAULT_MANIFEST.read_text())
    with pytest.raises(ValidationError):
        ModelManifest.model_validate({**base, "normalization_in_graph": False})  # uint8 needs in-graph norm
    with pytest.raises(ValidationError):
        ModelManifest.model_validate({**base, "thresholds": {"review": 0.9, "flag": 0.5}})
    with pytest.raises(ValidationError):
        ModelManifest.model_validate({**base, "unknown_field": 1})


def test_backend_scores_batches_consistently() -> None:
    backend = OnnxRuntimeBackend([DEFAULT_MANIFEST], threads=1, max_batch_size=4)
    (m,) = backend.models
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (10, m.input_size, m.input_size, 3), dtype=np.uint8)
    probs = backend.predict(m.name, crops)
    assert probs.shape == (10,) and probs.dtype == np.float32
    assert np.all((probs >= 0) & (probs <= 1))
    one_by_one = np.concatenate([backend.predict(m.name, crops[i : i + 1]) for i in range(10)])
    np.testing.assert_allclose(probs, one_by_one, atol=1e-6)
    assert len(set(np.round(probs, 6))) > 1  # different crops, different outputs: the network is real
    with pytest.raises(ValueError, match="expects"):
        backend.predict(m.name, crops[:, :100])


def test_backend_refuses_a_model_listed_twice() -> None:
    with pytest.raises(ValueError, match="twice"):
        OnnxRuntimeBackend([DEFAULT_MANIFEST, DEFAULT_MANIFEST])
