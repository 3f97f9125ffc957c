"""Embedded backend: every model of the ensemble in an in-process ONNX Runtime session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from service.faces.detector import ort_session
from service.models.manifest import ModelManifest, load_manifest

__all__ = ["OnnxRuntimeBackend"]


def _sigmoid(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


class OnnxRuntimeBackend:
    """ONNX Runtime on the CPU; crops are fed in batches of at most `max_batch_size`."""

    name = "onnxruntime"

    def __init__(self, manifest_paths: list[Path], *, threads: int = 2, max_batch_size: int = 64) -> None:
        if not manifest_paths:
            raise ValueError("at least one model manifest is required")
        self._manifests: list[ModelManifest] = []
        self._sessions: dict[str, ort.InferenceSession] = {}
        for path in manifest_paths:
            manifest, model_path = load_manifest(path)
            if manifest.name in self._sessions:
                raise ValueError(f"model {manifest.name} is listed twice")
            self._manifests.append(manifest)
            self._sessions[manifest.name] = ort_session(model_path, threads)
        self.max_batch_size = max_batch_size

    @property
    def models(self) -> list[ModelManifest]:
        return list(self._manifests)

    def ready(self) -> bool:
        return len(self._sessions) == len(self._manifests)

    def _prepare(self, m: ModelManifest, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.generic]:
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

    def predict(self, model: str, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        m = next(mm for mm in self._manifests if mm.name == model)
        if crops.ndim != 4 or crops.shape[1:] != (m.input_size, m.input_size, 3):
            raise ValueError(
                f"{model} expects (N, {m.input_size}, {m.input_size}, 3) crops, got {crops.shape}"
            )
        session = self._sessions[model]
        out = np.empty(len(crops), dtype=np.float32)
        for start in range(0, len(crops), self.max_batch_size):
            chunk = crops[start : start + self.max_batch_size]
            (y,) = session.run([m.output_name], {m.input_name: self._prepare(m, chunk)})
            y = np.asarray(y, dtype=np.float32).reshape(len(chunk), -1)[:, -1]
            out[start : start + len(chunk)] = _sigmoid(y) if m.output == "logit" else y
        return out
