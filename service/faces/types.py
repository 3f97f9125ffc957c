"""Values of the face stage: detections on key frames, tracked faces on every sampled frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels


@dataclass(frozen=True)
class Detection:
    box: Box
    score: float
    landmarks: npt.NDArray[np.float32] | None = None  # (5, 2): eyes, nose, mouth corners


@dataclass(frozen=True)
class TrackedFace:
    """A face on one sampled frame: detected there, or placed by the tracker between detections."""

    frame: int  # position in the sampled frames
    box: Box
    detector_score: float
    track_id: int
    tracked: bool
    landmarks: npt.NDArray[np.float32] | None = None  # (5, 2) like Detection's, interpolated with the box


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
