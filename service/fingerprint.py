"""Perceptual fingerprints of sampled frames: near-duplicate clips (re-encoded, rescaled reposts) hash close.

pHash: grey 32x32 (area resize), 2-D DCT, the 8x8 lowest frequencies against their median -> 64 bits. Robust
to re-compression, scaling and small colour shifts; a face swap on the same footage changes only a small
region, so it hashes close too, which is why only known-*flagged* clips may short-cut scoring (a
near-duplicate of an allowed clip must be scored afresh). Pure functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["frame_hashes", "match_fraction", "to_signed", "to_unsigned"]

_M = 1 << 64


def _phash(frame: npt.NDArray[np.uint8]) -> int:
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    k = max(1, min(w, h) // 64)  # an integer shrink first: OpenCV's fast path for INTER_AREA (~10x cheaper)
    if k > 1:  # crop to a multiple of k (a few edge pixels) so the shrink is exact
        grey = cv2.resize(grey[: h - h % k, : w - w % k], (w // k, h // k), interpolation=cv2.INTER_AREA)
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low > np.median(low[1:])  # the DC term is only brightness: left out of the median
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def frame_hashes(frames: npt.NDArray[np.uint8], n: int) -> list[int]:
    """64-bit pHashes of `n` frames spread evenly over the sampled ones (all of them if fewer)."""
    total = len(frames)
    if total == 0 or n <= 0:
        return []
    picks = sorted({round(i) for i in np.linspace(0, total - 1, num=min(n, total))})
    return [_phash(frames[i]) for i in picks]


def match_fraction(query: Sequence[int], candidate: Sequence[int], max_distance: int) -> float:
    """Share of `query` hashes within `max_distance` bits of some hash of `candidate`."""
    if not query or not candidate:
        return 0.0
    q = np.array([to_unsigned(h) for h in query], dtype=np.uint64)[:, None]
    c = np.array([to_unsigned(h) for h in candidate], dtype=np.uint64)[None, :]
    distance = np.unpackbits((q ^ c).view(np.uint8).reshape(len(query), len(candidate), 8), axis=2).sum(
        axis=2
    )
    return float(np.mean(distance.min(axis=1) <= max_distance))


def to_signed(h: int) -> int:
    """As a signed 64-bit integer (SQL BIGINT)."""
    return h - _M if h >= 1 << 63 else h


def to_unsigned(h: int) -> int:
    return h + _M if h < 0 else h
