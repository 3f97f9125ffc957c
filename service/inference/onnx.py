"""Embedded backend: every model of the ensemble in an in-process ONNX Runtime session."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from service.faces.detector import ort_session
from service.inference.prepare import prepare, to_probability
from service.models.manifest import (
    AudioModelManifest,
    ModelManifest,
    find_manifest,
    load_audio_manifest,
    load_manifest,
)

__all__ = ["OnnxRuntimeBackend", "llr"]


def llr(logits: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """(N, 2) logits [synthetic, bona fide] -> (N,) log-likelihood ratios of synthetic speech."""
    return (logits[:, 0] - logits[:, 1]).astype(np.float32)


class OnnxRuntimeBackend:
    """ONNX Runtime on the CPU; crops are fed in batches of at most `max_batch_size`; the audio model (given
    `audio`, its manifest) in one session beside them."""

    name = "onnxruntime"

    def __init__(
        self,
        manifest_paths: list[Path],
        *,
        threads: int = 2,
        max_batch_size: int = 64,
        audio: Path | None = None,
    ) -> None:
        if not manifest_paths:
            raise ValueError("at least one model manifest is required")
        self._manifests: list[ModelManifest] = []
        self._sessions: dict[str, ort.InferenceSession] = {}
        # Each session's arena keeps its own peak of activations: 7 x B7 at 32 crops held more than 24 GB
        # (bench.models was OOM-killed). Without an arena the runs were 2.8x slower, so an ensemble keeps the
        # arenas and shrinks each one back after every run.
        self._run_options: ort.RunOptions | None = None
        if len(manifest_paths) > 1:
            self._run_options = ort.RunOptions()
            self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        for path in manifest_paths:
            manifest, model_path = load_manifest(path)
            if manifest.name in self._sessions:
                raise ValueError(f"model {manifest.name} is listed twice")
            self._manifests.append(manifest)
            self._sessions[manifest.name] = ort_session(model_path, threads)
        self.max_batch_size = max_batch_size
        self._audio: tuple[AudioModelManifest, ort.InferenceSession] | None = None
        if audio is not None:
            audio_manifest, audio_path = load_audio_manifest(audio)
            self._audio = (audio_manifest, ort_session(audio_path, threads))

    @property
    def models(self) -> list[ModelManifest]:
        return list(self._manifests)

    @property
    def audio_model(self) -> AudioModelManifest | None:
        return self._audio[0] if self._audio else None

    def predict_audio(self, windows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if self._audio is None:
            raise RuntimeError("this backend serves no audio model")
        m, session = self._audio
        (logits,) = session.run([m.output_name], {m.input_name: np.ascontiguousarray(windows, np.float32)})
        return llr(np.asarray(logits))

    def ready(self) -> bool:
        return len(self._sessions) == len(self._manifests)

    def close(self) -> None:
        self._sessions.clear()  # the sessions' memory goes with the last reference
        self._audio = None

    def predict(self, model: str, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        m = find_manifest(self._manifests, model)
        x = prepare(m, crops)
        session = self._sessions[model]
        out = np.empty(len(crops), dtype=np.float32)
        for start in range(0, len(crops), self.max_batch_size):
            chunk = x[start : start + self.max_batch_size]
            (y,) = session.run([m.output_name], {m.input_name: chunk}, self._run_options)
            out[start : start + len(chunk)] = to_probability(m, y, len(chunk))
        return out

    def predict_many(
        self, crops_by_model: Mapping[str, npt.NDArray[np.uint8]]
    ) -> dict[str, npt.NDArray[np.float32]]:
        return {name: self.predict(name, crops) for name, crops in crops_by_model.items()}
