"""Where to score a track: fixed-length windows of the original signal placed over its speech. Pure.

Windows are cut from the signal as it is (no splicing of speech segments), at the places with the most
speech, kept apart so that they spread over the track; a track shorter than one window is tiled to its length,
as the model's reference evaluation does. This is the placement the shipped thresholds were fitted with
(`training.audio.calibrate`): densest speech first, as in docs/research/audio/HEAD_FINETUNE.md, except that
the minimum gap grows with the track so that long tracks are sampled across their length, and that windows
start on speech and hold at least a quarter of it where the track allows.

Speech is given per voice-activity frame (512 samples), never per sample: a 30-min track is 56,000 frames,
where a per-sample mask and its running sum took 460 MB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["MIN_SPEECH_FRACTION", "SpeechWindows", "excerpts", "place_windows", "tile"]

STEP = 1600  # candidate window starts every 0.1 s at 16 kHz
MIN_GAP = 32_000  # 2 s between window starts, at least
MIN_SPEECH_FRACTION = 0.25  # a window should be at least a quarter speech


@dataclass(frozen=True)
class SpeechWindows:
    """The windows to score: `starts[i]` is the first sample of window i (0 and a tiled copy for a short
    track); `speech_samples` is how much of the track the detector called speech."""

    starts: list[int]
    speech_samples: int
    tiled: bool = False


def place_windows(
    speech: npt.NDArray[np.bool_], frame: int, n_samples: int, window: int, count: int
) -> SpeechWindows:
    """Up to `count` window starts over a track of `n_samples` whose frame i (samples [i * frame, (i + 1) *
    frame)) is speech when `speech[i]`.

    Greedily where speech is densest, each start on speech and at least max(2 s, (len - window) / count) from
    the others (halved until `count` fit, but never under 2 s); windows less than a quarter speech are taken
    only when no other holds any more (a track of short bursts still gets its densest window).
    """
    n = n_samples
    mask = np.zeros(-(-n // frame) + 1, dtype=bool)  # one False frame past the end, for starts at `n`
    mask[: min(len(speech), len(mask) - 1)] = speech[: len(mask) - 1]
    lengths = np.full(len(mask) - 1, frame, dtype=np.int64)
    if len(lengths):
        lengths[-1] = n - frame * (len(lengths) - 1)
    cumulative = np.concatenate([[0], np.cumsum(mask[:-1] * lengths)])
    speech_samples = int(cumulative[-1])
    if speech_samples == 0:
        return SpeechWindows([], 0)
    if n <= window:
        return SpeechWindows([0], speech_samples, tiled=True)

    def speech_before(x: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        idx = x // frame
        return np.asarray(cumulative[idx] + mask[idx] * (x - idx * frame), dtype=np.int64)

    # Candidates start on speech: every 0.1 s, plus each speech onset exactly. A window that opens in quiet
    # holds a lead-in the model reads as bona fide (a window's score fell from 0.96 to 0.05 with 0.2 s of it).
    onsets = (np.flatnonzero(mask[1:] & ~mask[:-1]) + 1) * frame
    grid = np.append(np.arange(0, n - window + 1, STEP), n - window)
    every = np.unique(np.concatenate([grid, onsets[onsets <= n - window]])).astype(np.int64)
    on_speech = every[mask[every // frame]]
    starts = on_speech if len(on_speech) else every  # a track barely longer than a window may have none
    fraction = (speech_before(starts + window) - speech_before(starts)) / window
    ranked = np.argsort(-fraction, kind="stable")
    order = [int(i) for i in ranked if fraction[i] >= MIN_SPEECH_FRACTION]
    if not order:  # sparse speech: its densest window rather than none
        order = [int(ranked[0])]
        count = 1
    gap = max(MIN_GAP, (n - window) // count)
    while True:
        chosen: list[int] = []
        for i in order:
            if all(abs(int(starts[i]) - c) >= gap for c in chosen):
                chosen.append(int(starts[i]))
                if len(chosen) == count:
                    break
        if len(chosen) == count or gap <= MIN_GAP:
            return SpeechWindows(sorted(chosen), speech_samples)
        gap = max(MIN_GAP, gap // 2)


def excerpts(n_samples: int, budget: int, piece: int, align: int) -> list[tuple[int, int]]:
    """Where to look for speech in a track of `n_samples`: all of it within `budget` samples, else
    budget // piece excerpts of `piece` samples spread evenly from its start to its end, starting on multiples
    of `align` (the detector's frame)."""
    if n_samples <= budget:
        return [(0, n_samples)]
    count = max(1, budget // piece)
    starts = np.linspace(0, n_samples - piece, count).astype(np.int64) // align * align
    return [(int(s), min(int(s) + piece, n_samples)) for s in starts]


def tile(samples: npt.NDArray[np.float32], window: int) -> npt.NDArray[np.float32]:
    """`samples` repeated to exactly `window` samples (the reference evaluation's padding of short audio)."""
    reps = -(-window // max(1, len(samples)))
    return np.tile(samples, reps)[:window]
