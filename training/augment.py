"""Heavy, cheap augmentation of uint8 RGB images: what uploads do to faces (compression, rescaling, noise).

Compression matters most: H.264 and JPEG smooth away blending traces, so the model must learn traces that
survive them. JPEG at random quality stands in for video compression during training (encoding a clip per
sample would cost more than the forward pass); the evaluation uses real H.264 clips.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["jitter_box", "photometric"]

RGB = npt.NDArray[np.uint8]
Box = tuple[float, float, float, float]


def jitter_box(box: Box, rng: np.random.Generator, shift: float = 0.08, scale: float = 0.1) -> Box:
    """The face box moved and rescaled a little, as another detector (or the tracker) would place it."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx = (x1 + x2) / 2 + rng.uniform(-shift, shift) * w
    cy = (y1 + y2) / 2 + rng.uniform(-shift, shift) * h
    s = 1 + rng.uniform(-scale, scale)
    return (cx - w * s / 2, cy - h * s / 2, cx + w * s / 2, cy + h * s / 2)


def _jpeg(img: RGB, quality: int) -> RGB:
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        return img
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return img if decoded is None else np.ascontiguousarray(decoded[..., ::-1], dtype=np.uint8)


def photometric(img: RGB, rng: np.random.Generator) -> RGB:
    """Colour, blur, noise, down-and-up scaling and JPEG, each with its own probability."""
    x = img
    if rng.random() < 0.5:
        f = img.astype(np.float32)
        f = (f - 128) * rng.uniform(0.75, 1.25) + 128 + rng.uniform(-25, 25)
        f *= rng.uniform(0.9, 1.1, 3).astype(np.float32)
        x = np.clip(f, 0, 255).astype(np.uint8)
    if rng.random() < 0.25:
        h, w = x.shape[:2]
        s = rng.uniform(0.5, 0.9)
        small = cv2.resize(x, (max(8, int(w * s)), max(8, int(h * s))), interpolation=cv2.INTER_AREA)
        x = np.asarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), dtype=np.uint8)
    if rng.random() < 0.15:
        x = np.asarray(cv2.GaussianBlur(x, (0, 0), rng.uniform(0.3, 1.2)), dtype=np.uint8)
    if rng.random() < 0.2:
        noise = rng.normal(0, rng.uniform(2, 8), x.shape).astype(np.float32)
        x = np.clip(x.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.05:
        x = np.repeat(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    if rng.random() < 0.6:
        x = _jpeg(x, int(rng.integers(40, 96)))
    return np.ascontiguousarray(x)
