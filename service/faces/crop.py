"""Cut a face out of a frame with a margin and fit it, isotropically and padded, to a classifier's input.

The recipe follows the DFDC winner (selimsef/dfdc_deepfake_challenge `kernel_utils.py` 240-302): margin as a
fraction of the box size on each side, the longest side resized to the input size (INTER_AREA when shrinking,
INTER_CUBIC when enlarging for `area_cubic`; bilinear for `linear`, 6-10x cheaper), zero padding to a centred
square. Models declare which in their manifest, so serving matches training.

`area_cubic` reproduces the reference pixel for pixel, integer arithmetic included (integer box, margin
`w // 3` for 1/3, truncated resize sizes). `stretch` is Self-Blended Images' test-time crop
(mapooon/SelfBlendedImages `src/inference/preprocess.py` `crop_face`, phase test, and `cv2.resize` to the
input size): no padding, the crop stretched to a square with bilinear interpolation, its end pixel inclusive.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from service.faces.types import Box

__all__ = ["Resize", "crop_face", "expand_box"]

Resize = Literal["linear", "area_cubic", "stretch"]


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


def crop_face(
    frame: npt.NDArray[np.uint8], box: Box, margin: float, size: int, resize: Resize = "linear"
) -> npt.NDArray[np.uint8]:
    """A `size` x `size` x 3 uint8 crop of `box` (pixels of `frame`), zero-padded to a square."""
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
