"""AASIST-L embeddings of the head's training and calibration crops, as the research made them.

A port of `docs/research/audio/scripts/head_finetune/embed.py` (its phases `eval_aac64`, `train_aug`,
`train_aug2`) with its helpers from `scripts/audiolib.py`. It must stay the research's draw for draw:
every random number comes from one generator per (clip, phase), seeded `1000 * clip id + len(phase name)`,
and is drawn in the research's order (including draws whose value ends up unused), so the crops, hence the
embeddings, hence the head and the shipped model file, come out identical.

Crops (all of 64,600 samples, the published model's input; a shorter signal is tiled):

* `eval_aac64`: the clip after an AAC 64 kb/s round trip, up to 3 windows placed by silero VAD where speech is
  densest (at least 2 s apart; candidates every 0.1 s). The plain training crops, and the calibration crops
  that choose the L2 penalty.
* `train_aug`: 4 crops per training clip, each from its own augmentation: random pauses (70 %), an 8 kHz
  band limit (15 %), a random gain, white-ish noise at 20 dB (35 %), AAC 64 (40 %) or Opus 32 (30 %) or no
  codec, then one window placed by VAD or at a random start (half and half).
* `train_aug2`: 6 silence-heavy crops per training clip (the silence shortcut): a 0.5-2 s lead-in of
  near-silence kept inside the window, or a pause every 1-2.5 s of speech; gain; noise at 15-30 dB SNR (half);
  codec as above.

Both classes get the same augmentations. "Silence" is digital zero (a third) or Gaussian noise at -75 to -50
dBFS.

The embedding is `/m/Concat_output_0`, the 160-d input of the final layer, read by adding it as a second
output of the published graph (the `onnx` package); the graph is otherwise untouched. One ORT run per clip
and phase on all its windows at once (the research's batch shapes), 1 thread.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from training.audio.codecs import decode, encode

__all__ = [
    "EMBEDDING_OUTPUT",
    "GAP",
    "PHASES",
    "SR",
    "STEP",
    "WIN",
    "Embedder",
    "add_noise",
    "augment",
    "augment2",
    "pauses",
    "phase_seed",
    "phase_windows",
    "placed_windows",
    "resample",
    "roundtrip",
    "silence",
    "tile_window",
]

SR = 16000
WIN = 64600  # AASIST-L's input: 4.04 s
STEP = 1600  # candidate window starts every 0.1 s
GAP = 32000  # placed windows at least 2 s apart
EMBEDDING_OUTPUT = "/m/Concat_output_0"
PHASES = ("eval_aac64", "train_aug", "train_aug2")
CROPS = {"train_aug": 4, "train_aug2": 6}
_CODECS = {"aac": ("aac", 64000, ".m4a"), "opus": ("libopus", 32000, ".webm")}

Audio = npt.NDArray[np.float32]
Info = dict[str, Any]
Probs = Callable[[Audio], npt.NDArray[np.float32]]  # VAD: one speech probability per 512-sample frame
FRAME = 512


def phase_seed(clip_id: int, phase: str) -> int:
    """The research's per-task seed: 1000 * clip id + len(phase name)."""
    return 1000 * clip_id + len(phase)


def tile_window(y: Audio) -> Audio:
    """(1, WIN): the first WIN samples, or `y` tiled to WIN (the published reference pads by repetition)."""
    if len(y) < WIN:
        reps = int(np.ceil(WIN / max(len(y), 1)))
        return np.asarray(np.tile(y, reps)[:WIN][None])
    return np.stack([y[0:WIN]])


def placed_windows(probs: Probs, y: Audio, n: int) -> tuple[Audio, list[int]]:
    """Up to `n` windows where VAD speech (p >= 0.5) is densest, greedily, starts at least 2 s apart, returned
    in time order with their starts. A signal no longer than a window gives one tiled window (start 0)."""
    if len(y) <= WIN:
        return tile_window(y), [0]
    p = probs(y)
    m = np.repeat(p >= 0.5, FRAME)[: len(y)].astype(np.float32)
    cs = np.concatenate([[0], np.cumsum(m)])
    starts = np.arange(0, len(y) - WIN + 1, STEP)
    frac = (cs[starts + WIN] - cs[starts]) / WIN
    chosen: list[int] = []
    for i in np.argsort(-frac, kind="stable"):
        if all(abs(starts[i] - c) >= GAP for c in chosen):
            chosen.append(int(starts[i]))
        if len(chosen) == n:
            break
    chosen = sorted(chosen)
    return np.stack([y[c : c + WIN] for c in chosen]), chosen


def roundtrip(x: Audio, codec: str, workdir: Path) -> Audio:
    """`x` encoded as the audio of an upload (48 kHz; "aac": AAC 64 kb/s in MP4, "opus": Opus 32 kb/s in WebM)
    and decoded back to 16 kHz (`training.audio.codecs`, sample-identical to the research's round trip)."""
    name, bit_rate, suffix = _CODECS[codec]
    return decode(encode(x, workdir / f"roundtrip{suffix}", name, bit_rate))


def add_noise(x: Audio, snr_db: float, rng: np.random.Generator) -> Audio:
    """The research's `audiolib.add_noise` as it was: the signal power is a float32 mean (the evaluation's
    `codecs.add_noise` takes it in float64, which may move a noise sample by one float32 step)."""
    p = float(np.mean(x**2)) + 1e-12
    white = rng.standard_normal(len(x)).astype(np.float32)
    n: npt.NDArray[Any] = np.convolve(white, np.ones(4, np.float32) / 4, mode="same")
    n *= np.sqrt(p / (10 ** (snr_db / 10)) / (np.mean(n**2) + 1e-12))
    return np.asarray(x + n, dtype=np.float32)


def resample(x: Audio, sr_from: int, sr_to: int) -> Audio:
    """PyAV's resampler on a whole mono signal (flushed)."""
    fr = av.AudioFrame.from_ndarray(x.reshape(1, -1).astype(np.float32), format="flt", layout="mono")
    fr.sample_rate = sr_from
    rs = av.AudioResampler(format="flt", layout="mono", rate=sr_to)
    o = rs.resample(fr) + rs.resample(None)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in o]).astype(np.float32)


def silence(n: int, rng: np.random.Generator) -> Audio:
    """`n` samples of digital zero (1 in 3) or Gaussian noise at -75 to -50 dBFS."""
    kind = rng.integers(3)
    if kind == 0:
        return np.zeros(n, np.float32)
    lvl = 10 ** (rng.uniform(-75, -50) / 20)
    return (rng.standard_normal(n) * lvl).astype(np.float32)


def _gain(x: Audio, rng: np.random.Generator) -> Audio:
    """Peak-normalised to 0.9, then -8 to +2 dB (in the research's operation order, float32 throughout)."""
    return np.asarray(x * (10 ** (rng.uniform(-8, 2) / 20)) / (np.abs(x).max() + 1e-6) * 0.9)


def _codec(x: Audio, rng: np.random.Generator, info: Info, workdir: Path) -> Audio:
    r = rng.random()
    if r < 0.4:
        x = roundtrip(x, "aac", workdir)
        info["codec"] = "aac64"
    elif r < 0.7:
        x = roundtrip(x, "opus", workdir)
        info["codec"] = "opus32"
    else:
        info["codec"] = "none"
    return x


def augment(x: Audio, rng: np.random.Generator, workdir: Path) -> tuple[Audio, Info]:
    """`train_aug`: random pauses, optional band limit via 8 kHz, gain, noise at 20 dB, AAC 64 / Opus 32 /
    none."""
    info: Info = {}
    if rng.random() < 0.7:
        lead = int(rng.uniform(0.1, 1.5) * SR)
        parts = [silence(lead, rng)]
        cuts = sorted(rng.integers(0, len(x), rng.integers(0, 3)))
        prev = 0
        for c in cuts:
            parts += [x[prev:c], silence(int(rng.uniform(0.2, 0.8) * SR), rng)]
            prev = c
        parts += [x[prev:], silence(int(rng.uniform(0, 0.8) * SR), rng)]
        x = np.concatenate(parts)
        info["pauses"] = 1 + len(cuts)
    if rng.random() < 0.15:
        x = resample(resample(x, SR, 8000), 8000, SR)
        info["bl8k"] = 1
    x = _gain(x, rng)
    if rng.random() < 0.35:
        x = add_noise(x, 20, rng)
        info["noise20"] = 1
    x = _codec(x, rng, info, workdir)
    return np.clip(x, -1, 1).astype(np.float32), info


def pauses(
    x: Audio,
    rng: np.random.Generator,
    every: tuple[float, float] = (1.0, 2.5),
    dur: tuple[float, float] = (0.3, 1.0),
    lead: tuple[float, float] = (0.5, 2.0),
) -> Audio:
    """A leading silence, then a pause after every 1-2.5 s of signal (the pause-insertion attack)."""
    parts = [silence(int(rng.uniform(*lead) * SR), rng)]
    i = 0
    while i < len(x):
        j = min(len(x), i + int(rng.uniform(*every) * SR))
        parts += [x[i:j], silence(int(rng.uniform(*dur) * SR), rng)]
        i = j
    return np.concatenate(parts)


def augment2(x: Audio, rng: np.random.Generator, workdir: Path) -> tuple[Audio, Info]:
    """`train_aug2`: a leading silence that stays inside the window, or dense inner pauses; gain; noise at
    15-30 dB (half); AAC 64 / Opus 32 / none."""
    info: Info = {}
    if rng.random() < 0.5:
        x = np.concatenate([silence(int(rng.uniform(0.5, 2.0) * SR), rng), x])
        info["mode"] = "lead_window0"
    else:
        x = pauses(x, rng)
        info["mode"] = "inner_pauses"
    x = _gain(x, rng)
    if rng.random() < 0.5:
        x = add_noise(x, float(rng.uniform(15, 30)), rng)
        info["noise"] = 1
    x = _codec(x, rng, info, workdir)
    return np.clip(x, -1, 1).astype(np.float32), info


def phase_windows(
    phase: str, clip_id: int, x: Audio, probs: Probs, workdir: Path
) -> tuple[Audio, dict[str, Any]]:
    """The crops of one decoded clip for one phase: (windows (n, WIN) float32, meta)."""
    rng = np.random.default_rng(phase_seed(clip_id, phase))
    meta: dict[str, Any] = {}
    if phase == "eval_aac64":
        w, meta["starts"] = placed_windows(probs, roundtrip(x, "aac", workdir), 3)
    elif phase == "train_aug2":
        ws, infos = [], []
        for _ in range(CROPS[phase]):
            y, info = augment2(x, rng, workdir)
            if info["mode"] == "lead_window0":
                ww = tile_window(y)
            else:
                ww, _st = placed_windows(probs, y, 1)
            ws.append(ww[0])
            infos.append(info)
        w, meta["aug"] = np.stack(ws), infos
    elif phase == "train_aug":
        ws, infos = [], []
        for _ in range(CROPS[phase]):
            y, info = augment(x, rng, workdir)
            if rng.random() < 0.5:
                ww, _st = placed_windows(probs, y, 1)
                info["place"] = "vad"
            else:
                s0 = int(rng.integers(0, max(1, len(y) - WIN + 1)))
                ww = tile_window(y[s0 : s0 + WIN] if len(y) >= WIN else y)
                info["place"] = "random"
            ws.append(ww[0])
            infos.append(info)
        w, meta["aug"] = np.stack(ws), infos
    else:
        raise ValueError(f"unknown phase {phase!r} (one of {', '.join(PHASES)})")
    return w.astype(np.float32), meta


class Embedder:
    """The published AASIST-L graph with its 160-d embedding as a second output, on ORT CPU (1 thread by
    default, spinning off, as the research ran it), and the product's VAD."""

    def __init__(self, published: Path, threads: int = 1) -> None:
        import onnx
        import onnxruntime as ort

        from service.audio.vad import SileroVad

        m = onnx.load(str(published))
        m.graph.output.append(
            onnx.helper.make_tensor_value_info(EMBEDDING_OUTPUT, onnx.TensorProto.FLOAT, None)
        )
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self.vad = SileroVad(threads=1)
        self._tmp = tempfile.TemporaryDirectory(prefix="dfguard-embed-")
        self.workdir = Path(self._tmp.name)

    def run(self, windows: Audio) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """(embeddings (n, 160), logits (n, 2)) of a batch of windows, one ORT run."""
        lg, e = self._session.run(None, {"waveform": windows.astype(np.float32)})
        return np.asarray(e, np.float32), np.asarray(lg, np.float32)

    def clip(self, phase: str, clip_id: int, path: Path) -> tuple[Any, Any, dict[str, Any]]:
        """(embeddings, logits, meta) of one clip's crops for `phase`."""
        w, meta = phase_windows(phase, clip_id, decode(path), self.vad.probabilities, self.workdir)
        e, lg = self.run(w)
        return e, lg, meta

    def close(self) -> None:
        self._tmp.cleanup()
