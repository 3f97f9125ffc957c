"""Turn uint8 crops into exactly the tensor a model's manifest declares, and its output into probabilities.

Shared by every backend (embedded ONNX Runtime, Triton), so the same model sees the same numbers wherever it
runs; the Triton ensemble takes one input per group of models whose prepared tensors are identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from service.models.manifest import ModelManifest

__all__ = ["input_groups", "prepare", "to_probability"]


def prepare(m: ModelManifest, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.generic]:
    """(N, S, S, 3) uint8 RGB crops -> the model's input tensor (dtype, normalisation, layout)."""
    if crops.ndim != 4 or crops.shape[1:] != (m.input_size, m.input_size, 3):
        raise ValueError(f"{m.name} expects (N, {m.input_size}, {m.input_size}, 3) crops, got {crops.shape}")
    x: npt.NDArray[np.generic] = crops
    if m.input_dtype == "float32":
        f: npt.NDArray[np.float32] = crops.astype(np.float32) * np.float32(1 / 255)
        if not m.normalization_in_graph:
            mean = np.asarray(m.mean, dtype=np.float32)
            std = np.asarray(m.std, dtype=np.float32)
            f = np.divide(np.subtract(f, mean, dtype=np.float32), std, dtype=np.float32)
        x = f
    if m.input_layout == "NCHW":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x


def to_probability(m: ModelManifest, y: npt.NDArray[np.generic], n: int) -> npt.NDArray[np.float32]:
    """The model's raw output for n crops -> (n,) probabilities (last value per crop; sigmoid of logits)."""
    out = np.asarray(y, dtype=np.float32).reshape(n, -1)[:, -1]
    if m.output == "logit":
        out = (1.0 / (1.0 + np.exp(-out))).astype(np.float32)
    return out


def _group_key(m: ModelManifest) -> tuple[object, ...]:
    return (
        m.input_size,
        m.crop_margin,
        m.resize,
        m.input_dtype,
        m.input_layout,
        m.normalization_in_graph,
        m.mean if not m.normalization_in_graph else None,
        m.std if not m.normalization_in_graph else None,
    )


def input_groups(models: Sequence[ModelManifest]) -> list[tuple[str, list[ModelManifest]]]:
    """Models whose prepared inputs are identical, as (ensemble input name, members), in manifest order."""
    groups: dict[tuple[object, ...], list[ModelManifest]] = {}
    for m in models:
        groups.setdefault(_group_key(m), []).append(m)
    return [(f"crops_{i}", members) for i, members in enumerate(groups.values())]
