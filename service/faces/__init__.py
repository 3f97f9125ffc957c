"""Face stage: detect faces on key frames, track them across sampled frames, crop them for a classifier."""

from service.faces.crop import Resize, crop_face, expand_box
from service.faces.detector import DEFAULT_DETECTOR_PATH, FaceDetector, RetinaFaceDetector, ort_session
from service.faces.tracking import keyframe_positions, track_faces
from service.faces.types import Box, Detection, TrackedFace, iou

__all__ = [
    "DEFAULT_DETECTOR_PATH",
    "Box",
    "Detection",
    "FaceDetector",
    "Resize",
    "RetinaFaceDetector",
    "TrackedFace",
    "crop_face",
    "expand_box",
    "iou",
    "keyframe_positions",
    "ort_session",
    "track_faces",
]
