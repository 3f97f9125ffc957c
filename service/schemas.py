"""Pydantic models at dfguard's boundaries: what `dfguard score --json` prints and the gateway returns."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Decision = Literal["allow", "review", "flag"]
DecisionOrigin = Literal["scored", "duplicate", "near_duplicate", "media_error"]
ThresholdSource = Literal["settings", "ensemble", "model", "default"]
MediaKind = Literal["video", "image", "audio"]
ShadowSource = Literal["worker", "gateway"]  # the scoring path a shadow result came from

__all__ = [
    "AudioResult",
    "AudioSummary",
    "AudioWindow",
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
    duration_s: float | None = Field(description="Duration of a video or audio file; null for an image.")
    width: int = Field(description="Width of the upright (rotation-applied) picture, pixels; 0 for audio.")
    height: int = Field(description="Height of the upright picture, pixels; 0 for audio.")


class ModelRef(_Out):
    name: str
    version: str


class Timings(_Out):
    decode: float = Field(description="Milliseconds spent decoding and sampling frames.")
    detect: float = Field(description="Milliseconds spent detecting and tracking faces.")
    classify: float = Field(description="Milliseconds spent cropping and classifying faces.")
    audio: float = Field(0.0, description="Milliseconds spent finding and scoring speech (0: no audio).")
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


class ErrorDetail(_Out):
    code: str
    message: str


class ErrorBody(_Out):
    error: ErrorDetail


class AudioWindow(_Out):
    start_s: float = Field(description="Start of the scored window in the track, seconds.")
    end_s: float
    score: float = Field(description="Probability that this window's speech is synthetic.")


class AudioResult(_Out):
    """The verdict on the speech of the audio track."""

    score: float | None = Field(
        description="Probability that the speech is synthetic (sigmoid of the mean window log-likelihood "
        "ratio); null when no speech was found or the track could not be decoded."
    )
    decision: Decision | None = Field(description="The audio's own decision; null without a score.")
    reasons: list[str] = Field(
        description="E.g. `synthetic_speech_suspected`, `no_speech_found`, `audio_error:<code>`, "
        "`partially_decoded`."
    )
    speech_seconds: float = Field(description="Speech the voice-activity detector found in the track.")
    scanned_seconds: float = Field(
        description="How much of the track was searched for speech: all of it up to DFG_AUDIO_SCAN_SECONDS, "
        "else excerpts spread over it."
    )
    duration_s: float = Field(description="Duration of the decoded track.")
    sample_rate: int = Field(description="Sample rate of the source stream, Hz (analysed at 16 kHz mono).")
    channels: int
    codec: str
    windows: list[AudioWindow] = Field(
        description="The windows scored, over speech, in track order (only the first when it alone decided: "
        "clearly real speech, DFG_AUDIO_EARLY_EXIT)."
    )
    model: ModelRef
    thresholds: UsedThresholds = Field(description="The audio review / flag thresholds applied.")
    error: ErrorDetail | None = Field(None, description="Why the track could not be analysed, if so.")


class AudioSummary(_Out):
    """The speech track's verdict as decisions keep it: flag events (schema v2) and stored decisions."""

    model_config = ConfigDict(extra="ignore", frozen=True, protected_namespaces=())

    score: float | None = Field(description="Probability that the speech is synthetic; null without speech.")
    decision: Decision | None
    reasons: list[str]
    speech_seconds: float
    windows: list[AudioWindow]
    model: ModelRef

    @classmethod
    def of(cls, audio: AudioResult | None) -> AudioSummary | None:
        if audio is None:
            return None
        return cls(
            score=audio.score,
            decision=audio.decision,
            reasons=list(audio.reasons),
            speech_seconds=audio.speech_seconds,
            windows=list(audio.windows),
            model=audio.model,
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
    audio: AudioResult | None = Field(
        None,
        description="The speech track's verdict; null when the media has no audio track (or audio is off). "
        "`decision` is the stricter of the faces' and the speech's; `score` stays the faces' score.",
    )


# --- gateway requests and jobs ---------------------------------------------------------------------------

JobState = Literal["queued", "running", "succeeded", "failed"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScoreUrlRequest(_In):
    """Score media that the service fetches itself (http/https; private addresses are refused)."""

    url: str = Field(
        min_length=1,
        max_length=4096,
        description="http(s) URL of the video, image or audio file (s3://bucket/key where enabled).",
    )


class JobRequest(_In):
    url: str = Field(
        min_length=1,
        max_length=4096,
        description="http(s) URL of the video, image or audio file (s3://bucket/key where enabled).",
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
    audio: AudioSummary | None = Field(
        None, description="The speech track's verdict; null without an audio track (or audio scoring off)."
    )
