"""The upload conditions of the evaluation: each clip re-encoded as the audio-only file a user would upload.

A clip is decoded to 16 kHz mono (PyAV's resampler, as the research did), optionally degraded (noise,
leading near-silence), then encoded at 48 kHz mono like the audio track of an uploaded video: AAC 64 kb/s in
MP4 (`.m4a`, the headline condition), Opus 32 kb/s in WebM. The encoded file, not the decoded samples, is
what the product scores, so its own decode, resample and VAD run as in serving.

The degradations copy the research's (`docs/research/audio/scripts/audiolib.py`, `head_finetune/embed.py`) so
the figures stay comparable: noise is Gaussian white noise smoothed by a 4-tap moving average, scaled to the
clip's mean power at the given SNR; the silence check prepends 1 s of Gaussian noise at 1e-3 (-60 dBFS RMS).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

__all__ = [
    "CONDITIONS",
    "SR",
    "Condition",
    "add_noise",
    "decode",
    "encode",
    "prepend_silence",
    "write_condition",
]

SR = 16000
ENCODE_RATE = 48000  # the audio rate of uploaded video
Audio = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Condition:
    """An upload condition: codec, bit rate, container (by file suffix), optional noise before encoding."""

    name: str
    codec: str  # PyAV encoder name
    bit_rate: int
    suffix: str  # .m4a -> MP4 container, .webm -> WebM
    snr_db: float | None = None


CONDITIONS: dict[str, Condition] = {
    c.name: c
    for c in (
        Condition("aac64", "aac", 64000, ".m4a"),
        Condition("opus32", "libopus", 32000, ".webm"),
        Condition("aac64+noise20", "aac", 64000, ".m4a", snr_db=20.0),
    )
}
_FORMATS = {".m4a": ("mp4", "fltp"), ".webm": ("webm", "flt")}  # container, encoder sample format


def decode(path: Path, sr: int = SR) -> Audio:
    """Any audio file as mono float32 at `sr`."""
    out: list[npt.NDArray[Any]] = []
    with av.open(str(path)) as c:
        rs = av.AudioResampler(format="flt", layout="mono", rate=sr)
        for frame in c.decode(c.streams.audio[0]):
            out += [f.to_ndarray().reshape(-1) for f in rs.resample(frame)]
        out += [f.to_ndarray().reshape(-1) for f in rs.resample(None)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def encode(x: Audio, path: Path, codec: str, bit_rate: int, sr: int = SR) -> Path:
    """Write mono `x` (rate `sr`) to `path` as an audio-only file: resampled to 48 kHz, encoded in the codec's
    frame size (the last frame zero-padded)."""
    fmt, sample_fmt = _FORMATS[path.suffix]
    with av.open(str(path), "w", format=fmt) as oc:
        st = oc.add_stream(codec, rate=ENCODE_RATE)
        assert isinstance(st, av.AudioStream)
        st.bit_rate = bit_rate
        st.layout = "mono"
        rs = av.AudioResampler(format=sample_fmt, layout="mono", rate=ENCODE_RATE)
        frame = av.AudioFrame.from_ndarray(x.reshape(1, -1).astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = sr
        frames = rs.resample(frame) + rs.resample(None)
        data = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32)
        size = st.codec_context.frame_size or 1024
        for pts in range(0, len(data), size):
            chunk = data[pts : pts + size]
            chunk = np.pad(chunk, (0, size - len(chunk)))
            f = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format=sample_fmt, layout="mono")
            f.sample_rate, f.pts = ENCODE_RATE, pts
            for packet in st.encode(f):
                oc.mux(packet)
        for packet in st.encode(None):
            oc.mux(packet)
    return path


def add_noise(x: Audio, snr_db: float, rng: np.random.Generator) -> Audio:
    """`x` plus smoothed white noise at `snr_db` below its mean power (the research's recipe)."""
    power = float(np.mean(x.astype(np.float64) ** 2)) + 1e-12
    white = rng.standard_normal(len(x)).astype(np.float32)
    n = np.convolve(white, np.ones(4, np.float32) / 4, mode="same")
    n *= np.sqrt(power / (10 ** (snr_db / 10)) / (np.mean(n**2) + 1e-12))
    return np.asarray(x + n, dtype=np.float32)


def prepend_silence(x: Audio, rng: np.random.Generator, seconds: float = 1.0, rms: float = 1e-3) -> Audio:
    """`x` after `seconds` of Gaussian noise at `rms` (1e-3: -60 dBFS), a quiet lead-in."""
    lead = (rng.standard_normal(int(seconds * SR)) * rms).astype(np.float32)
    return np.concatenate([lead, x]).astype(np.float32)


def write_condition(
    x: Audio, cond: Condition, out: Path, rng: np.random.Generator | None = None, *, silence: bool = False
) -> Path:
    """Apply `cond` (noise draws from `rng`) and, for the silence check, the lead-in, then encode to `out`
    (its suffix replaced by the condition's). The research never combined the two; here noise comes first."""
    if cond.snr_db is not None:
        if rng is None:
            raise ValueError(f"condition {cond.name} needs a random generator for its noise")
        x = add_noise(x, cond.snr_db, rng)
    if silence:
        if rng is None:
            raise ValueError("the silence lead-in needs a random generator")
        x = prepend_silence(x, rng)
    return encode(x, out.with_suffix(cond.suffix), cond.codec, cond.bit_rate)
