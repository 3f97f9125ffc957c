"""Occlusion sensitivity ("where the model looked") through the real ONNX Runtime backend, and its pictures.

The localisation test uses a tiny real ONNX model whose score is the mean brightness of the crop's top-left
quadrant: its sensitivity map is known exactly, so a wrong cell layout, sign or ensemble mean shows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from onnx import TensorProto, helper, save

from devtools import media_factory as mf
from service.evidence.occlusion import cell_edges, crop_jpeg, occlusion_drops, overlay_jpeg
from service.faces import crop_face
from service.inference import OnnxRuntimeBackend
from service.models import DEFAULT_MODEL, UNTRAINED_MANIFEST
from service.models.manifest import ModelManifest

QUADRANT_SIZES = (64, 96)  # two models of different input sizes: their grids must align on the face


def _quadrant_model(folder: Path, size: int, name: str | None = None) -> Path:
    """A real ONNX classifier scoring mean brightness (0..1) of the top-left quadrant of a uint8 NHWC crop."""
    name = name or f"quadrant-{size}"
    half = size // 2
    nodes = [
        helper.make_node("Cast", ["input"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["q"]),
        helper.make_node("ReduceMean", ["q"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["m", "inv255"], ["output"]),
    ]
    inits = [
        helper.make_tensor("starts", TensorProto.INT64, [2], [0, 0]),
        helper.make_tensor("ends", TensorProto.INT64, [2], [half, half]),
        helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2]),
        helper.make_tensor("inv255", TensorProto.FLOAT, [], [1 / 255]),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch"])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="dfguard-test"
    )
    model.ir_version = 8
    out = folder / name
    out.mkdir()
    save(model, str(out / "model.onnx"))
    manifest = ModelManifest(
        name=name,
        version="0",
        trained=False,
        file="model.onnx",
        input_size=size,
        input_dtype="uint8",
        input_layout="NHWC",
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        normalization_in_graph=True,
        crop_margin=0.0,
        output="probability",
    )
    (out / "model.json").write_text(json.dumps(manifest.model_dump(mode="json")))
    return out / "model.json"


@pytest.fixture(scope="module")
def quadrant_backend(tmp_path_factory: pytest.TempPathFactory) -> OnnxRuntimeBackend:
    folder = tmp_path_factory.mktemp("quadrant")
    return OnnxRuntimeBackend([_quadrant_model(folder, s) for s in QUADRANT_SIZES], threads=1)


@pytest.fixture(scope="module")
def real_backend() -> OnnxRuntimeBackend:
    """The bundled detector beside the untrained placeholder: a two-model ensemble of 128 and 224 px crops."""
    return OnnxRuntimeBackend([DEFAULT_MODEL, UNTRAINED_MANIFEST], threads=1)


def _textured(n: int, size: int, lo: int, hi: int, seed: int) -> npt.NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(lo, hi + 1, (n, size, size, 3), dtype=np.uint8)


def _expected_quadrant_drops(crops: npt.NDArray[np.uint8], grid: int) -> npt.NDArray[np.float64]:
    """What greying each cell does to the quadrant model's score, computed with numpy alone."""
    size = crops.shape[1]
    half = size // 2
    e = cell_edges(size, grid)
    quadrant = crops[:, :half, :half].astype(np.float64)
    out = np.zeros((len(crops), grid, grid))
    for r in range(grid):
        for c in range(grid):
            y0, y1 = min(e[r], half), min(e[r + 1], half)
            x0, x1 = min(e[c], half), min(e[c + 1], half)
            part = quadrant[:, y0:y1, x0:x1] if y1 > y0 and x1 > x0 else np.zeros((len(crops), 0))
            out[:, r, c] = (part - 128).reshape(len(crops), -1).sum(axis=1) / (quadrant[0].size * 255)
    return out


def _decode(jpeg: bytes) -> npt.NDArray[np.uint8]:
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return np.asarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def _face_crops(size: int) -> npt.NDArray[np.uint8]:
    """Real face crops (astronaut, Grace Hopper) cut as the pipeline cuts them."""
    out = []
    for name in ("astronaut", "grace_hopper"):
        img = mf.face_photos()[name]
        h, w = img.shape[:2]
        fx1, fy1, fx2, fy2 = mf.PHOTO_FACE_BOXES[name]
        out.append(crop_face(img, (fx1 * w, fy1 * h, fx2 * w, fy2 * h), 0.3, size))
    return np.stack(out)


class _Counting:
    """The real backend, noting the batch each `predict_many` call carries (a spy, not a stand-in)."""

    def __init__(self, inner: OnnxRuntimeBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: list[dict[str, int]] = []

    @property
    def models(self) -> list[ModelManifest]:
        return self.inner.models

    def predict(self, model: str, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        raise AssertionError("occlusion must score every model in one predict_many call")

    def predict_many(
        self, crops_by_model: Mapping[str, npt.NDArray[np.uint8]]
    ) -> dict[str, npt.NDArray[np.float32]]:
        self.calls.append({k: len(v) for k, v in crops_by_model.items()})
        return self.inner.predict_many(crops_by_model)

    def ready(self) -> bool:
        return self.inner.ready()

    def close(self) -> None:
        self.inner.close()


# --- the drops ---------------------------------------------------------------------------------------------


def test_drops_are_large_exactly_in_the_quadrant_the_model_reads(
    quadrant_backend: OnnxRuntimeBackend,
) -> None:
    grid = 4  # cells (0..1, 0..1) are the top-left quadrant on both the 64 and the 96 px crops
    crops = {f"quadrant-{s}": _textured(3, s, 200, 255, seed=s) for s in QUADRANT_SIZES}
    base, drops = occlusion_drops(quadrant_backend, crops, grid)
    assert base.shape == (3,) and drops.shape == (3, grid, grid)
    assert base.dtype == np.float32 and drops.dtype == np.float32
    inside = np.zeros((grid, grid), bool)
    inside[:2, :2] = True
    # Each quadrant cell is a quarter of the quadrant, about 100 grey levels brighter than the patch.
    assert (drops[:, inside] > 0.08).all(), drops
    assert np.abs(drops[:, ~inside]).max() < 1e-6, drops
    expected = np.mean(
        [_expected_quadrant_drops(crops[f"quadrant-{s}"], grid) for s in QUADRANT_SIZES], axis=0
    )
    np.testing.assert_allclose(drops, expected, atol=1e-5)


@pytest.mark.parametrize("grid", [1, 3, 5, 7])
def test_drops_follow_the_model_on_grids_that_do_not_align(
    quadrant_backend: OnnxRuntimeBackend, grid: int
) -> None:
    crops = {f"quadrant-{s}": _textured(2, s, 0, 255, seed=10 + s) for s in QUADRANT_SIZES}
    _, drops = occlusion_drops(quadrant_backend, crops, grid, max_batch=5)
    expected = np.mean(
        [_expected_quadrant_drops(crops[f"quadrant-{s}"], grid) for s in QUADRANT_SIZES], axis=0
    )
    np.testing.assert_allclose(drops, expected, atol=1e-5)


def test_a_region_that_lowers_the_score_has_negative_drops(quadrant_backend: OnnxRuntimeBackend) -> None:
    crops = {f"quadrant-{s}": _textured(1, s, 0, 40, seed=s) for s in QUADRANT_SIZES}  # darker than the patch
    _, drops = occlusion_drops(quadrant_backend, crops, 2, patch_value=128)
    assert drops[0, 0, 0] < -0.3  # grid 2: the top-left cell is the whole quadrant
    assert np.abs(drops[0].ravel()[1:]).max() < 1e-6


def test_base_is_the_ensembles_own_score_and_batches_stay_bounded(real_backend: OnnxRuntimeBackend) -> None:
    crops = {m.name: _face_crops(m.input_size) for m in real_backend.models}
    before = {k: v.copy() for k, v in crops.items()}
    own = real_backend.predict_many(crops)
    expected_base = np.mean(np.stack([own[m.name] for m in real_backend.models]), axis=0)

    spy = _Counting(real_backend)
    grid, max_batch = 3, 5
    base, drops = occlusion_drops(spy, crops, grid, max_batch=max_batch)
    np.testing.assert_allclose(base, expected_base, rtol=0, atol=1e-6)
    assert drops.shape == (2, grid, grid) and np.isfinite(drops).all()
    # One unoccluded call, then 2 crops x 9 cells in chunks of at most 5, every model in each call.
    assert len(spy.calls) == 1 + math.ceil(2 * grid * grid / max_batch)
    assert all(set(c) == set(crops) and max(c.values()) <= max_batch for c in spy.calls[1:])
    for name in crops:
        np.testing.assert_array_equal(crops[name], before[name])  # the caller's crops are not greyed

    _, whole = occlusion_drops(real_backend, crops, grid, max_batch=64)
    np.testing.assert_allclose(drops, whole, atol=1e-4)  # chunking does not change the map


def test_models_sharing_one_crop_array_are_occluded_alike(tmp_path: Path) -> None:
    # `cut_crops` hands models that crop alike one shared array: each model must still see every cell greyed.
    backend = OnnxRuntimeBackend(
        [_quadrant_model(tmp_path, 64, "quadrant-a"), _quadrant_model(tmp_path, 64, "quadrant-b")], threads=1
    )
    shared = _textured(2, 64, 150, 255, seed=3)
    _, together = occlusion_drops(backend, {"quadrant-a": shared, "quadrant-b": shared}, 4, max_batch=7)
    _, apart = occlusion_drops(backend, {"quadrant-a": shared.copy(), "quadrant-b": shared.copy()}, 4)
    np.testing.assert_allclose(together, apart, atol=1e-6)
    np.testing.assert_allclose(together, _expected_quadrant_drops(shared, 4), atol=1e-5)


def test_no_crops_no_calls(quadrant_backend: OnnxRuntimeBackend) -> None:
    spy = _Counting(quadrant_backend)
    empty = {f"quadrant-{s}": np.empty((0, s, s, 3), np.uint8) for s in QUADRANT_SIZES}
    base, drops = occlusion_drops(spy, empty, 3)
    assert base.shape == (0,) and drops.shape == (0, 3, 3) and spy.calls == []


@pytest.mark.parametrize("grid", [0, -2])
def test_grid_must_be_positive(quadrant_backend: OnnxRuntimeBackend, grid: int) -> None:
    crops = {"quadrant-64": _textured(1, 64, 0, 255, seed=0)}
    with pytest.raises(ValueError, match="grid"):
        occlusion_drops(quadrant_backend, crops, grid)


def test_models_must_cover_the_same_faces(quadrant_backend: OnnxRuntimeBackend) -> None:
    crops = {"quadrant-64": _textured(2, 64, 0, 255, seed=0), "quadrant-96": _textured(1, 96, 0, 255, seed=0)}
    with pytest.raises(ValueError, match="same number"):
        occlusion_drops(quadrant_backend, crops, 3)


def test_cell_edges_cover_the_crop() -> None:
    assert cell_edges(128, 4).tolist() == [0, 32, 64, 96, 128]
    e = cell_edges(224, 6)
    assert e[0] == 0 and e[-1] == 224 and (np.diff(e) > 0).all()


# --- the pictures ------------------------------------------------------------------------------------------


def test_overlay_marks_where_the_drops_are() -> None:
    crop = _face_crops(128)[0]
    drops = np.zeros((4, 4), np.float32)
    drops[0, 0] = 0.2
    drops[3, 3] = -0.1  # a cell that lowered the score is not drawn
    overlay = _decode(overlay_jpeg(crop, drops))
    plain = _decode(crop_jpeg(crop))
    assert overlay.shape == crop.shape == plain.shape
    diff = np.abs(overlay.astype(np.int16) - plain.astype(np.int16)).mean(axis=2)
    assert diff[:24, :24].mean() > 25  # the hot cell's core
    assert diff[64:, 64:].mean() < 3  # far from it, the face is as it was
    assert diff[96:, 96:].mean() < 3


def test_a_flat_map_leaves_the_picture_nearly_unchanged() -> None:
    crop = _face_crops(224)[1]
    plain = _decode(crop_jpeg(crop)).astype(np.int16)
    for drops in (
        np.zeros((5, 5), np.float32),
        np.random.default_rng(0).normal(0, 0.002, (5, 5)).astype(np.float32),  # noise under the floor
    ):
        overlay = _decode(overlay_jpeg(crop, drops)).astype(np.int16)
        assert np.abs(overlay - plain).mean() < 1.5


def test_pictures_keep_rgb_order_and_size() -> None:
    red = np.zeros((40, 56, 3), np.uint8)
    red[..., 0] = 230
    out = _decode(crop_jpeg(red, quality=95))
    assert out.shape == red.shape
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 30
    assert _decode(overlay_jpeg(red, np.zeros((3, 3), np.float32))).shape == red.shape
    with pytest.raises(ValueError):
        overlay_jpeg(red[..., 0], np.zeros((3, 3), np.float32))  # a grey picture is not an RGB crop
