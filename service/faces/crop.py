"""Cut a face out of a frame with a margin and fit it, isotropically and padded, to a classifier's input.

The recipe follows the DFDC winner (selimsef/dfdc_deepfake_challenge `kernel_utils.py` 240-302): margin as a
fraction of the box size on each side, the longest side resized to the input size (INTER_AREA when shrinking,
INTER_CUBIC when enlarging for `area_cubic`; bilinear for `linear`, 6-10x cheaper), zero padding to a centred
square. Models declare which in their manifest, so serving matches training.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from service.faces.types import Box

__all__ = ["Resize", "crop_face", "expand_box"]

Resize = Literal["linear", "area_cubic"]


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


def crop_face(
    frame: npt.NDArray[np.uint8], box: Box, margin: float, size: int, resize: Resize = "linear"
) -> npt.NDArray[np.uint8]:
    """A `size` x `size` x 3 uint8 crop of `box` (pixels of `frame`), zero-padded to a square."""
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = expand_box(box, margin, w, h)
    out = np.zeros((size, size, 3), dtype=np.uint8)
    if x2 - x1 < 1 or y2 - y1 < 1:
        return out
    face = frame[y1:y2, x1:x2]
    fh, fw = face.shape[:2]
    scale = size / max(fh, fw)
    nw, nh = max(1, min(size, round(fw * scale))), max(1, min(size, round(fh * scale)))
    if resize == "area_cubic":
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    else:
        interp = cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(face), (nw, nh), interpolation=interp)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out
