"""Model manifests and the embedded ONNX Runtime backend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from service.inference import OnnxRuntimeBackend
from service.models import (
    DEFAULT_ENSEMBLE,
    DEFAULT_MODEL,
    UNTRAINED_MANIFEST,
    ModelManifest,
    load_manifest,
    resolve_models,
)


def test_default_model_is_trained_small_hash_checked_and_documented() -> None:
    manifest, model_path = load_manifest(DEFAULT_MODEL)
    assert manifest.trained is True
    assert model_path.is_file() and manifest.sha256
    assert model_path.stat().st_size < 20 * 1024 * 1024
    assert (DEFAULT_MODEL.parent / "MODEL_CARD.md").is_file()


def test_default_bundle_is_one_ensemble_with_its_own_fitted_thresholds() -> None:
    models = resolve_models([DEFAULT_ENSEMBLE])
    assert models.member_paths == [DEFAULT_MODEL.resolve()]
    ens = models.ensemble
    assert ens is not None and ens.thresholds is not None
    assert 0.0 < ens.thresholds.review < ens.thresholds.flag < 1.0
    assert ens.thresholds.fitted_on  # says what it was fitted on
    package = DEFAULT_ENSEMBLE.parents[3]  # service/: every bundled weight file, the face detector's too
    bundled = sum(f.stat().st_size for f in package.rglob("*.onnx"))
    assert bundled < 25 * 1024 * 1024, bundled


def test_placeholder_model_is_named_untrained() -> None:
    manifest, _ = load_manifest(UNTRAINED_MANIFEST)
    assert manifest.trained is False and "untrained" in manifest.version


def test_tampered_model_file_is_refused(tmp_path: Path) -> None:
    data = json.loads(DEFAULT_MODEL.read_text())
    (tmp_path / "model.onnx").write_bytes((DEFAULT_MODEL.parent / "model.onnx").read_bytes() + b"x")
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="sha256"):
        load_manifest(tmp_path / "model.json")


def test_manifest_rejects_inconsistent_preprocessing() -> None:
    base = json.loads(DEFAULT_MODEL.read_text())
    with pytest.raises(ValidationError):
        ModelManifest.model_validate({**base, "normalization_in_graph": False})  # uint8 needs in-graph norm
    with pytest.raises(ValidationError):
        ModelManifest.model_validate({**base, "thresholds": {"review": 0.9, "flag": 0.5}})
    with pytest.raises(ValidationError):
        ModelManifest.model_validate({**base, "unknown_field": 1})


def test_backend_scores_batches_consistently() -> None:
    backend = OnnxRuntimeBackend([DEFAULT_MODEL], threads=1, max_batch_size=4)
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
        OnnxRuntimeBackend([DEFAULT_MODEL, DEFAULT_MODEL])


def _float_model(tmp_path: Path, *, output: str, layout: str) -> Path:
    """A float32 model returning the mean of its input: checks normalisation and layout outside the graph."""
    import hashlib

    import onnx
    from onnx import TensorProto, helper

    shape = ["n", 3, 32, 32] if layout == "NCHW" else ["n", 32, 32, 3]
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[1, 2, 3], keepdims=0)],
        "mean",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    data = model.SerializeToString()
    (tmp_path / "m.onnx").write_bytes(data)
    manifest = {
        "name": "float-mean",
        "version": "1",
        "trained": True,
        "file": "m.onnx",
        "sha256": hashlib.sha256(data).hexdigest(),
        "input_name": "x",
        "output_name": "y",
        "input_size": 32,
        "input_dtype": "float32",
        "input_layout": layout,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "normalization_in_graph": False,
        "crop_margin": 0.3,
        "output": output,
    }
    (tmp_path / "model.json").write_text(json.dumps(manifest))
    assert onnx.load_model_from_string(data)
    return tmp_path / "model.json"


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("output", ["probability", "logit"])
def test_float_models_are_normalised_as_their_manifest_says(tmp_path: Path, layout: str, output: str) -> None:
    backend = OnnxRuntimeBackend([_float_model(tmp_path, output=output, layout=layout)], threads=1)
    crops = np.stack([np.full((32, 32, 3), v, np.uint8) for v in (0, 128, 255)])
    expected = ((crops.astype(np.float64) / 255 - 0.5) / 0.25).mean(axis=(1, 2, 3))
    if output == "logit":
        expected = 1 / (1 + np.exp(-expected))
    np.testing.assert_allclose(backend.predict("float-mean", crops), expected, atol=1e-5)
