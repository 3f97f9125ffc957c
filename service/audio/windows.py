"""Where to score a track: fixed-length windows of the original signal placed over its speech. Pure.

Windows are cut from the signal as it is (no splicing of speech segments), at the places with the most speech,
kept apart so that they spread over the track; a track shorter than one window is tiled to its length, as the
model's reference evaluation does. This is the placement the shipped thresholds were fitted with
(docs/research/audio/HEAD_FINETUNE.md), except that the minimum gap grows with the track so that long tracks
are sampled across their length, and that windows with almost no speech are never chosen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["MIN_SPEECH_FRACTION", "SpeechWindows", "excerpts", "place_windows", "speech_mask", "tile"]

STEP = 1600  # candidate window starts every 0.1 s at 16 kHz
MIN_GAP = 32_000  # 2 s between window starts, at least
MIN_SPEECH_FRACTION = 0.25  # a window must be at least a quarter speech to be scored


@dataclass(frozen=True)
class SpeechWindows:
    """The windows to score: `starts[i]` is the first sample of window i (0 and a tiled copy for a short
    track); `speech_samples` is how much of the whole track the detector called speech."""

    starts: list[int]
    speech_samples: int
    tiled: bool = False


def speech_mask(
    probabilities: npt.NDArray[np.float32], threshold: float, n_samples: int, frame: int
) -> npt.NDArray[np.bool_]:
    """Per-sample speech mask from per-frame probabilities."""
    return np.repeat(probabilities >= threshold, frame)[:n_samples]


def place_windows(mask: npt.NDArray[np.bool_], window: int, count: int) -> SpeechWindows:
    """Up to `count` window starts, on speech, greedily where speech is densest, each at least
    max(2 s, (len - window) / count) from the others (halved until `count` fit, but never under 2 s)."""
    n = len(mask)
    speech = int(mask.sum())
    if n <= window:
        return SpeechWindows([0], speech, tiled=True) if speech else SpeechWindows([], 0)
    cumulative = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    # Candidates start on speech: every 0.1 s, plus each speech onset exactly. A window that opens in quiet
    # holds a lead-in the model reads as bona fide (a window's score fell from 0.96 to 0.05 with 0.2 s of it).
    onsets = np.flatnonzero(mask[1:] & ~mask[:-1]) + 1
    grid = np.append(np.arange(0, n - window + 1, STEP), n - window)
    every = np.unique(np.concatenate([grid, onsets[onsets <= n - window]]))
    on_speech = every[mask[every]]
    starts = on_speech if len(on_speech) else every  # a track barely longer than a window may have none
    fraction = (cumulative[starts + window] - cumulative[starts]) / window
    order = [int(i) for i in np.argsort(-fraction, kind="stable") if fraction[i] >= MIN_SPEECH_FRACTION]
    gap = max(MIN_GAP, (n - window) // count)
    while True:
        chosen: list[int] = []
        for i in order:
            if all(abs(int(starts[i]) - c) >= gap for c in chosen):
                chosen.append(int(starts[i]))
                if len(chosen) == count:
                    break
        if len(chosen) == count or gap <= MIN_GAP:
            return SpeechWindows(sorted(chosen), speech)
        gap = max(MIN_GAP, gap // 2)


def tile(samples: npt.NDArray[np.float32], window: int) -> npt.NDArray[np.float32]:
    """`samples` repeated to exactly `window` samples (the reference evaluation's padding of short audio)."""
    reps = -(-window // max(1, len(samples)))
    return np.tile(samples, reps)[:window]


def excerpts(n_samples: int, budget: int, piece: int) -> list[tuple[int, int]]:
    """Where to look for speech in a track of `n_samples`: all of it within `budget` samples, else
    budget // piece excerpts of `piece` samples spread evenly from its start to its end."""
    if n_samples <= budget:
        return [(0, n_samples)]
    count = max(1, budget // piece)
    starts = np.linspace(0, n_samples - piece, count).astype(np.int64)
    return [(int(s), int(s) + piece) for s in starts]
