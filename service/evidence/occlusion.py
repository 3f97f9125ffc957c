"""Where the model looked: occlusion sensitivity of a face crop, and its picture as a reviewer sees it.

Each cell of a grid x grid partition of the crop is greyed in turn and the crop is re-scored by the same
`InferenceBackend` that scored it live. The score drop per cell says how much that region raised the
manipulation score. Nothing here knows what the model is: it only needs `predict_many`, so the map works
for any ensemble, served embedded (ONNX Runtime) or on Triton. The cost is grid^2 crops per face and per
model (`python -m bench.evidence` measures it to choose the grid).

Apart from the backend call, these are pure functions: pixels in, numbers or JPEG bytes out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import cv2
import numpy as np
import numpy.typing as npt

from service.inference import InferenceBackend

__all__ = ["crop_jpeg", "occlusion_drops", "overlay_jpeg"]

OVERLAY_ALPHA = 0.45  # opacity where the drop is largest: the face stays readable under the hottest cell


def cell_edges(size: int, grid: int) -> npt.NDArray[np.intp]:
    """The grid + 1 pixel boundaries of `grid` cells over `size` pixels. From np.linspace, so that cell
    (r, c) covers the same fraction of the face on models with different input sizes."""
    return np.rint(np.linspace(0, size, grid + 1)).astype(np.intp)


def _ensemble_mean(
    scores: Mapping[str, npt.NDArray[np.float32]], names: list[str]
) -> npt.NDArray[np.float32]:
    """The mean over models of each crop's score, as `Pipeline.classify` computes a crop's score."""
    stacked = np.stack([np.asarray(scores[n], dtype=np.float32) for n in names])
    return np.asarray(stacked.mean(axis=0), dtype=np.float32)


def _chunks(total: int, size: int) -> Iterator[npt.NDArray[np.intp]]:
    for start in range(0, total, size):
        yield np.arange(start, min(start + size, total), dtype=np.intp)


def occlusion_drops(
    backend: InferenceBackend,
    crops_by_model: Mapping[str, npt.NDArray[np.uint8]],
    grid: int,
    *,
    patch_value: int = 128,
    max_batch: int = 64,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Occlusion sensitivity of N face crops under the backend's ensemble.

    Args:
        crops_by_model: each model's (N, S_m, S_m, 3) RGB crops of the same N faces, as they were scored
            (`service.pipeline.cut_crops`); models that share one array are occluded once.
        grid: cells per side; each crop is re-scored grid^2 times.
        patch_value: the grey that replaces a cell (mid-grey: neither a dark nor a bright blemish).
        max_batch: occluded crops per model in one `predict_many` call, which scores every model at once
            (one ensemble request on Triton), bounding the memory a lane holds.

    Returns:
        (base, drops): base (N,) the ensemble mean score of each unoccluded crop; drops (N, grid, grid) base
        minus the ensemble score with that cell greyed (positive: the cell raised the manipulation score).
    """
    if grid < 1:
        raise ValueError(f"grid must be at least 1, got {grid}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    if not 0 <= patch_value <= 255:
        raise ValueError(f"patch_value must be in [0, 255], got {patch_value}")
    names = list(crops_by_model)
    if not names:
        raise ValueError("crops_by_model names no model")
    sizes = {len(crops_by_model[n]) for n in names}
    if len(sizes) != 1:
        raise ValueError(f"every model needs the same number of crops, got {sorted(sizes)}")
    n = sizes.pop()
    for name in names:
        a = crops_by_model[name]
        if a.ndim != 4 or a.shape[1] != a.shape[2] or a.shape[3] != 3 or a.dtype != np.uint8:
            raise ValueError(f"{name}: expected (N, S, S, 3) uint8 crops, got {a.shape} {a.dtype}")
    if n == 0:
        return np.empty(0, np.float32), np.empty((0, grid, grid), np.float32)

    base = _ensemble_mean(backend.predict_many(crops_by_model), names)

    cells = grid * grid
    total = n * cells  # variant v occludes cell v % cells of crop v // cells
    # Models cut alike share one crop array (`cut_crops`): occlude each distinct array once per chunk.
    distinct: dict[int, npt.NDArray[np.uint8]] = {id(crops_by_model[m]): crops_by_model[m] for m in names}
    edges = {key: cell_edges(arr.shape[1], grid) for key, arr in distinct.items()}
    occluded = np.empty(total, dtype=np.float32)
    for idx in _chunks(total, max_batch):
        crop_of, cell_of = idx // cells, idx % cells
        batch: dict[int, npt.NDArray[np.uint8]] = {}
        for key, arr in distinct.items():
            e = edges[key]
            out = arr[crop_of]  # fancy indexing: a copy, the caller's crops stay untouched
            for j, cell in enumerate(cell_of):
                r, c = divmod(int(cell), grid)
                out[j, e[r] : e[r + 1], e[c] : e[c + 1]] = patch_value
            batch[key] = out
        scores = backend.predict_many({m: batch[id(crops_by_model[m])] for m in names})
        occluded[idx] = _ensemble_mean(scores, names)
    drops = base[:, None, None] - occluded.reshape(n, grid, grid)
    return base, drops.astype(np.float32)


def _check_crop(crop: npt.NDArray[np.uint8]) -> None:
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8 or 0 in crop.shape:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB crop, got {crop.shape} {crop.dtype}")


def _jpeg(bgr: npt.NDArray[np.uint8], quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV fails only on arguments checked above
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def heat_weights(
    drops: npt.NDArray[np.float32], height: int, width: int, floor: float
) -> npt.NDArray[np.float32]:
    """The positive drops in [0, 1] at pixel resolution, smoothly upsampled.

    Normalised by max(max |drop|, floor): a map whose largest change is below `floor` (a model that barely
    reacts) stays faint instead of being stretched to full heat, and negative drops (regions that lowered the
    score) count in the scale, so a small positive drop beside a large negative one is not shown as hot.
    """
    d = np.nan_to_num(np.asarray(drops, dtype=np.float32))
    if d.ndim != 2 or 0 in d.shape:
        raise ValueError(f"expected (grid, grid) drops, got {d.shape}")
    scale = max(float(np.abs(d).max()), floor, 1e-12)
    pos = np.clip(d / scale, 0.0, 1.0).astype(np.float32)
    # Bicubic between cell centres reads as a heat map, not a chequerboard; it overshoots a little: clip.
    up = np.asarray(cv2.resize(pos, (width, height), interpolation=cv2.INTER_CUBIC), dtype=np.float32)
    return np.clip(up, 0.0, 1.0)


def overlay_jpeg(
    crop: npt.NDArray[np.uint8], drops: npt.NDArray[np.float32], *, quality: int = 85, floor: float = 0.05
) -> bytes:
    """The crop (RGB) with the positive drops drawn as a translucent heat map, as JPEG bytes.

    Opacity follows the heat (up to `OVERLAY_ALPHA`), so cells that did not raise the score leave the face
    as it was: the reviewer sees the face and, over it, only where the model looked.
    """
    _check_crop(crop)
    h, w = crop.shape[:2]
    heat = heat_weights(drops, h, w, floor)
    colours = np.asarray(
        cv2.applyColorMap(np.rint(heat * 255).astype(np.uint8), cv2.COLORMAP_JET), np.float32
    )
    bgr = np.asarray(cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), dtype=np.float32)
    alpha = (heat * OVERLAY_ALPHA)[..., None]
    blended = bgr * (1.0 - alpha) + colours * alpha  # applyColorMap's colours are BGR, as is the crop now
    return _jpeg(np.clip(np.rint(blended), 0, 255).astype(np.uint8), quality)


def crop_jpeg(crop: npt.NDArray[np.uint8], *, quality: int = 85) -> bytes:
    """The crop (RGB) as the model saw it, as JPEG bytes (the plain picture beside its overlay)."""
    _check_crop(crop)
    return _jpeg(np.asarray(cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), dtype=np.uint8), quality)
