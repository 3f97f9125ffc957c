"""Voice-activity detection with Silero VAD's sequence model on ONNX Runtime (no PyTorch).

Chosen by measurement on the speech data (docs/research/audio/FINDINGS.md section 2): F1 0.85 clean, 0.82 at
10 dB SNR and 0.85 after AAC, false positives on noise and music at most 0.1, where WebRTC's VAD fired on
90-100 % of stationary noise. The model file is the one inside PyPI's `silero-vad` 6.2.3 wheel
(`silero_vad/data/silero_vad_16k_sequence.onnx`, MIT, `weights/LICENSE.silero-vad`), copied here because the
wheel depends on PyTorch, which serving does not install.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.faces.detector import ort_session

__all__ = ["FRAME_SAMPLES", "SILERO_SHA256", "VAD_MODEL", "SileroVad"]

VAD_MODEL = Path(__file__).parent / "weights" / "silero_vad_16k_sequence.onnx"
SILERO_SHA256 = "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85"
FRAME_SAMPLES = 512  # 32 ms at 16 kHz: one probability per frame
_CONTEXT = 64  # samples of the previous frame the model sees before each frame
_CHUNK = 512  # frames per model call (the recurrent state is carried across calls)


class SileroVad:
    """Speech probability per 32-ms frame of 16 kHz mono audio. Thread-compatible (one run at a time per call;
    ONNX Runtime sessions may be shared by threads)."""

    def __init__(self, path: Path = VAD_MODEL, threads: int = 1) -> None:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if path == VAD_MODEL and digest != SILERO_SHA256:
            raise ValueError(f"{path} has sha256 {digest}, expected {SILERO_SHA256}")
        self._session = ort_session(path, threads)

    def probabilities(self, samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(ceil(len / 512),) speech probabilities; the last frame is zero-padded."""
        n = (len(samples) + FRAME_SAMPLES - 1) // FRAME_SAMPLES
        if n == 0:
            return np.empty(0, dtype=np.float32)
        frames = np.zeros((n, FRAME_SAMPLES), dtype=np.float32)
        frames.reshape(-1)[: len(samples)] = samples
        context = np.zeros((n, _CONTEXT), dtype=np.float32)
        context[1:] = frames[:-1, -_CONTEXT:]
        blocks = np.concatenate([context, frames], axis=1)
        h = np.zeros((1, 1, 128), dtype=np.float32)
        c = np.zeros((1, 1, 128), dtype=np.float32)
        out = []
        for i in range(0, n, _CHUNK):
            p, h, c = self._session.run(
                ["speech_probs", "hn", "cn"], {"input": blocks[i : i + _CHUNK], "h": h, "c": c}
            )
            out.append(np.asarray(p, dtype=np.float32).reshape(-1))
        return np.concatenate(out)
