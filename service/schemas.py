"""Pydantic models at dfguard's boundaries: what `dfguard score --json` prints and the gateway returns."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Decision = Literal["allow", "review", "flag"]
DecisionOrigin = Literal["scored", "duplicate", "near_duplicate", "media_error"]
ThresholdSource = Literal["settings", "ensemble", "model", "default"]
MediaKind = Literal["video", "image"]
ShadowSource = Literal["worker", "gateway"]  # the scoring path a shadow result came from

__all__ = [
    "Decision",
    "DecisionOrigin",
    "DecisionRecord",
    "ErrorBody",
    "ErrorDetail",
    "FaceResult",
    "FrameResult",
    "Health",
    "JobAccepted",
    "JobRequest",
    "JobState",
    "JobStatus",
    "MediaInfo",
    "MediaKind",
    "ModelRef",
    "ScoreResult",
    "ScoreUrlRequest",
    "ShadowSource",
    "ThresholdSource",
    "Timings",
    "UsedThresholds",
]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MediaInfo(_Out):
    sha256: str = Field(description="SHA-256 of the uploaded bytes (hex).")
    kind: MediaKind
    duration_s: float | None = Field(description="Duration of a video; null for an image.")
    width: int = Field(description="Width of the upright (rotation-applied) picture, pixels.")
    height: int = Field(description="Height of the upright picture, pixels.")


class ModelRef(_Out):
    name: str
    version: str


class Timings(_Out):
    decode: float = Field(description="Milliseconds spent decoding and sampling frames.")
    detect: float = Field(description="Milliseconds spent detecting and tracking faces.")
    classify: float = Field(description="Milliseconds spent cropping and classifying faces.")
    total: float = Field(description="Milliseconds end to end.")


class FaceResult(_Out):
    box: tuple[float, float, float, float] = Field(
        description="[x1, y1, x2, y2] in pixels of the upright, rotation-applied frame."
    )
    detector_score: float = Field(
        description="Detector confidence (of the nearest detection for tracked faces)."
    )
    score: float = Field(
        description="Probability that this face is manipulated (mean over the ensemble); for a face that was "
        "not classified itself (`scored` false) the score of the nearest classified face of its track."
    )
    track_id: int = Field(description="Faces with the same track id are the same person across frames.")
    tracked: bool = Field(description="True when the box was interpolated by tracking, not detected here.")
    scored: bool = Field(
        True,
        description="True when this crop was classified (DFG_CLASSIFY_CROPS=detected skips tracked ones).",
    )


class FrameResult(_Out):
    index: int = Field(description="Index of the frame in the decoded stream.")
    time_s: float
    faces: list[FaceResult]


class UsedThresholds(_Out):
    review: float
    flag: float
    source: ThresholdSource | None = Field(
        None,
        description="Where they came from: `settings` (DFG_REVIEW_THRESHOLD and/or DFG_FLAG_THRESHOLD set "
        "explicitly), `ensemble` (fitted for the served ensemble, in its manifest), `model` (a lone model's "
        "calibrated thresholds), `default` (0.5 / 0.8). Null on decisions stored before it was recorded.",
    )


class ScoreResult(_Out):
    """The verdict on one piece of media."""

    media: MediaInfo
    frames_sampled: int
    faces_detected: int = Field(description="Faces found, summed over sampled frames (detected or tracked).")
    crops_scored: int = Field(description="Face crops classified (all faces, or only the detected ones).")
    score: float | None = Field(description="Video-level manipulation score in [0, 1]; null when no face.")
    decision: Decision
    reasons: list[str]
    model: ModelRef
    thresholds: UsedThresholds = Field(description="The review / flag thresholds this decision applied.")
    aggregation: str = Field(description="How crop scores became the video score (per model, then mean).")
    timings_ms: Timings
    frames: list[FrameResult]


class ErrorDetail(_Out):
    code: str
    message: str


class ErrorBody(_Out):
    error: ErrorDetail


# --- gateway requests and jobs ---------------------------------------------------------------------------

JobState = Literal["queued", "running", "succeeded", "failed"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScoreUrlRequest(_In):
    """Score media that the service fetches itself (http/https; private addresses are refused)."""

    url: str = Field(
        min_length=1,
        max_length=4096,
        description="http(s) URL of the video or image (s3://bucket/key where enabled).",
    )


class JobRequest(_In):
    url: str = Field(
        min_length=1,
        max_length=4096,
        description="http(s) URL of the video or image (s3://bucket/key where enabled).",
    )
    callback_url: str | None = Field(
        None, max_length=4096, description="Receives the finished job by POST (signed, retried)."
    )


class JobAccepted(_Out):
    job_id: str
    status: JobState
    status_url: str


class JobStatus(_Out):
    job_id: str
    status: JobState
    created_at: str
    updated_at: str
    result: ScoreResult | None = None
    error: ErrorDetail | None = None


class Health(_Out):
    status: Literal["ok", "degraded", "unavailable"] = Field(
        description="`degraded`: ready to score, but a dependency of other endpoints (the store) is down."
    )
    detail: str = ""
    dependencies: dict[str, Literal["up", "down"]] = Field(
        default_factory=dict, description="Readiness: each dependency (`backend`, `store`) up or down."
    )


# --- stored decisions (worker writes, gateway reads) --------------------------------------------------------


class DecisionRecord(_Out):
    """A stored moderation decision with its audit trail (`GET /v1/decisions/{video_id}`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    video_id: str
    decision: Decision
    score: float | None
    reasons: list[str]
    origin: DecisionOrigin = Field(
        description="`scored`: analysed here; `duplicate`: byte-identical to a scored upload (sha256); "
        "`near_duplicate`: perceptually close to a flagged upload; `media_error`: could not be analysed."
    )
    model: ModelRef
    thresholds: UsedThresholds
    aggregation: str
    sha256: str | None
    source_event_id: str
    flag_event_id: str
    timings_ms: dict[str, float]
    decided_at: datetime
