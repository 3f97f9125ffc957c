"""Cut a face out of a frame with a margin and fit it, isotropically and padded, to a classifier's input.

The recipe follows the DFDC winner (selimsef/dfdc_deepfake_challenge `kernel_utils.py` 240-302): margin as a
fraction of the box size on each side, the longest side resized to the input size (INTER_AREA when shrinking,
INTER_CUBIC when enlarging for `area_cubic`; bilinear for `linear`, 6-10x cheaper), zero padding to a centred
square. Models declare which in their manifest, so serving matches training.

`area_cubic` reproduces the reference pixel for pixel, integer arithmetic included (integer box, margin
`w // 3` for 1/3, truncated resize sizes). `stretch` is Self-Blended Images' test-time crop
(mapooon/SelfBlendedImages `src/inference/preprocess.py` `crop_face`, phase test, and `cv2.resize` to the
input size): no padding, the crop stretched to a square with bilinear interpolation, its end pixel inclusive.
`aligned` is MesoNet's landmark-aligned crop (see `aligned_square`), the only recipe that needs landmarks.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from service.faces.types import Box

__all__ = ["Resize", "aligned_square", "crop_face", "expand_box"]

Resize = Literal["linear", "area_cubic", "stretch", "aligned"]

ALIGNED_SCALE = 2.2 * 1.3  # MesoNet's two factors on the larger landmark distance


def expand_box(box: Box, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The box grown by `margin` x its size on each side, clipped to the frame, as integer pixels."""
    x1, y1, x2, y2 = box
    mw, mh = (x2 - x1) * margin, (y2 - y1) * margin
    return (
        max(0, int(x1 - mw)),
        max(0, int(y1 - mh)),
        min(width, int(x2 + mw)),
        min(height, int(y2 + mh)),
    )


def _reference_box(box: Box, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """DFDC winner's crop window: integer box, integer margin (`w // 3` for 1/3), clipped to the frame."""
    x1, y1, x2, y2 = (int(v) for v in box)
    pw, ph = int((x2 - x1) * margin + 1e-6), int((y2 - y1) * margin + 1e-6)
    return max(0, x1 - pw), max(0, y1 - ph), min(width, x2 + pw), min(height, y2 + ph)


def _stretch(frame: npt.NDArray[np.uint8], box: Box, margin: float, size: int) -> npt.NDArray[np.uint8]:
    """Self-Blended Images' test-time crop: grown by `margin`, end pixel inclusive, stretched to a square."""
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = box
    mw, mh = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = max(0, int(x1 - mw)), max(0, int(y1 - mh))
    right, bottom = min(w, int(x2 + mw) + 1), min(h, int(y2 + mh) + 1)
    if right - left < 1 or bottom - top < 1:
        return np.zeros((size, size, 3), dtype=np.uint8)
    face = np.ascontiguousarray(frame[top:bottom, left:right])
    return np.asarray(cv2.resize(face, (size, size), interpolation=cv2.INTER_LINEAR), dtype=np.uint8)


def aligned_square(
    landmarks: npt.NDArray[np.floating] | None, box: Box
) -> tuple[tuple[float, float], float, tuple[float, float]]:
    """MesoNet's face square: (centre, side, unit vector of the square's downward axis), in frame pixels.

    From the 5 detector landmarks (eyes, nose tip, mouth corners): centre = the nose tip; side = the larger
    of the distance between the eyes and the distance from the eyes' midpoint to the mouth's midpoint, x 2.2
    x 1.3; the square's vertical axis runs from the eyes' midpoint to the mouth's midpoint. Without landmarks
    (a detector that gives none) an upright square on the box: centre = its centre, side = its longer side
    (the landmark square measured 1.01-1.13 x that on RetinaFace boxes).
    """
    if landmarks is None:
        x1, y1, x2, y2 = box
        return ((x1 + x2) / 2, (y1 + y2) / 2), max(x2 - x1, y2 - y1), (0.0, 1.0)
    lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    eyes, mouth = (lm[0] + lm[1]) / 2, (lm[3] + lm[4]) / 2
    axis = mouth - eyes
    length = float(np.hypot(axis[0], axis[1]))
    side = max(float(np.hypot(*(lm[1] - lm[0]))), length) * ALIGNED_SCALE
    down = (float(axis[0] / length), float(axis[1] / length)) if length > 0 else (0.0, 1.0)
    return (float(lm[2, 0]), float(lm[2, 1])), side, down


def _aligned(
    frame: npt.NDArray[np.uint8], landmarks: npt.NDArray[np.floating] | None, box: Box, size: int
) -> npt.NDArray[np.uint8]:
    """The aligned square cut at the frame's own scale (bilinear, reflect-padded outside the frame: numpy's
    `reflect`, edge pixel not repeated), then resized to `size` (area when shrinking, bilinear otherwise).

    The intermediate patch is at most 4 x `size` pixels a side, so absurd landmarks cannot ask for gigabytes.
    """
    (cx, cy), side, (dx, dy) = aligned_square(landmarks, box)
    if not (np.isfinite(side) and np.isfinite(cx) and np.isfinite(cy)) or side < 1:
        return np.zeros((size, size, 3), dtype=np.uint8)
    n = min(max(1, round(side)), 4 * size)
    step = side / n
    # patch pixel (u, v) -> frame point centre + step * ((u - (n-1)/2) * right + (v - (n-1)/2) * down), with
    # right = (dy, -dx) perpendicular to down and of the frame's handedness: rotated, never mirrored
    rx, ry = dy, -dx
    half = (n - 1) / 2
    m = np.array(
        [
            [step * rx, step * dx, cx - step * half * (rx + dx)],
            [step * ry, step * dy, cy - step * half * (ry + dy)],
        ]
    )
    patch = cv2.warpAffine(
        np.ascontiguousarray(frame),
        m,
        (n, n),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    if n != size:
        patch = cv2.resize(
            patch, (size, size), interpolation=cv2.INTER_AREA if n > size else cv2.INTER_LINEAR
        )
    return np.asarray(patch, dtype=np.uint8)


def crop_face(
    frame: npt.NDArray[np.uint8],
    box: Box,
    margin: float,
    size: int,
    resize: Resize = "linear",
    landmarks: npt.NDArray[np.floating] | None = None,
) -> npt.NDArray[np.uint8]:
    """A `size` x `size` x 3 uint8 crop of `box` (pixels of `frame`), zero-padded to a square; `aligned`
    uses the face's 5 `landmarks` instead (and ignores `margin`)."""
    if resize == "aligned":
        return _aligned(frame, landmarks, box, size)
    if resize == "stretch":
        return _stretch(frame, box, margin, size)
    h, w = frame.shape[:2]
    if resize == "area_cubic":
        x1, y1, x2, y2 = _reference_box(box, margin, w, h)
    else:
        x1, y1, x2, y2 = expand_box(box, margin, w, h)
    out = np.zeros((size, size, 3), dtype=np.uint8)
    if x2 - x1 < 1 or y2 - y1 < 1:
        return out
    face = frame[y1:y2, x1:x2]
    fh, fw = face.shape[:2]
    scale = size / max(fh, fw)
    if resize == "area_cubic":
        # kernel_utils.isotropically_resize_image: the longer side becomes `size`, the other is truncated
        nw, nh = (size, max(1, int(fh * scale))) if fw > fh else (max(1, int(fw * scale)), size)
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    else:
        nw, nh = max(1, min(size, round(fw * scale))), max(1, min(size, round(fh * scale)))
        interp = cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(face), (nw, nh), interpolation=interp)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out
