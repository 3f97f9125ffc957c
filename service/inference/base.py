"""The one interface every classifier backend implements: batched crops in, probabilities out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np
import numpy.typing as npt

from service.errors import BackendUnavailable
from service.models.manifest import AudioModelManifest, ModelManifest

__all__ = ["BackendUnavailable", "InferenceBackend"]


class InferenceBackend(Protocol):
    """Runs the classifiers of an ensemble on face crops, and the audio model (if it serves one) on speech."""

    name: str

    @property
    def models(self) -> list[ModelManifest]:
        """The ensemble, in a stable order."""
        ...

    def predict(self, model: str, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """Probabilities (N,) that each crop is manipulated.

        `crops` are (N, S, S, 3) uint8 RGB, cropped and resized as the model's manifest says.
        """
        ...

    def predict_many(
        self, crops_by_model: Mapping[str, npt.NDArray[np.uint8]]
    ) -> dict[str, npt.NDArray[np.float32]]:
        """Every listed model on its crops in one go (one ensemble call where the backend has one)."""
        ...

    @property
    def audio_model(self) -> AudioModelManifest | None:
        """The anti-spoofing model it serves, if any."""
        ...

    def predict_audio(self, windows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Log-likelihood ratios (N,) that each window's speech is synthetic (logit[synthetic] minus
        logit[bona fide]).

        `windows` are (N, window_samples) float32 16 kHz mono in [-1, 1], as the audio manifest says.
        Raises RuntimeError when no audio model is served.
        """
        ...

    def ready(self) -> bool:
        """Whether every model is loaded and can serve."""
        ...

    def close(self) -> None:
        """Release what the backend holds (sessions, connections, threads); it cannot serve after."""
        ...
