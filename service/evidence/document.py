"""What an evidence page shows, as data: the pydantic models at the evidence boundary.

`EvidenceDocument` is stored (JSON) beside the pictures (blobs) and is what `?format=json` returns; the
HTML page and the PNG contact sheet are rendered from it and the pictures (`service/evidence/page.py`). Boxes
are in the pixels of the kept (downscaled) frame picture, so a renderer needs nothing else to draw them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.schemas import Decision, MediaInfo, ModelRef, UsedThresholds

__all__ = [
    "AuditEntry",
    "EvidenceDocument",
    "EvidenceFace",
    "EvidenceFrame",
    "EvidenceSubject",
    "OverlayState",
    "SensitivityMap",
    "SeriesPoint",
]

EvidenceSubject = Literal["decision", "job"]  # a worker decision (video_id) or a gateway job (job_id)
OverlayState = Literal["pending", "ready", "failed", "skipped"]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class EvidenceFace(_Doc):
    box: tuple[float, float, float, float] = Field(
        description="[x1, y1, x2, y2] in pixels of the kept frame picture (not of the original video)."
    )
    track_id: int
    score: float = Field(
        description="This face's manipulation score (its track's nearest if not classified)."
    )
    scored: bool = Field(description="True when this crop itself was classified.")


class EvidenceFrame(_Doc):
    index: int = Field(description="Index of the frame in the decoded stream.")
    time_s: float
    score: float | None = Field(description="The highest face score on this frame; null: no face.")
    width: int = Field(description="Width of the kept picture (JPEG), pixels.")
    height: int
    faces: list[EvidenceFace]


class SeriesPoint(_Doc):
    time_s: float
    score: float | None = Field(description="The highest face score on this sampled frame; null: no face.")


class SensitivityMap(_Doc):
    """Where the model looked on one kept face: the score drop when each grid cell is greyed out."""

    frame: int = Field(description="Position of the face's frame in `frames`.")
    face: int = Field(description="Position of the face in that frame's `faces`.")
    track_id: int
    score: float = Field(description="The ensemble's score on the unoccluded crop.")
    grid: int = Field(description="Cells per side of the occlusion grid.")
    drop: list[list[float]] = Field(
        description="grid x grid rows: unoccluded score minus the score with that cell greyed (positive: the "
        "cell raised the score)."
    )


class AuditEntry(_Doc):
    at: datetime
    event: str = Field(description="e.g. `decided`, `evidence_captured`, `overlays_ready`, `revised`.")
    detail: str = ""


class EvidenceDocument(_Doc):
    """The data behind one evidence page (`GET .../evidence?format=json`)."""

    subject: EvidenceSubject
    subject_id: str = Field(description="The video id (decision) or the job id (job).")
    tenant: str
    decision: Decision
    score: float | None
    reasons: list[str]
    model: ModelRef
    thresholds: UsedThresholds
    aggregation: str
    media: MediaInfo
    frames: list[EvidenceFrame] = Field(description="The kept frames, in time order.")
    series: list[SeriesPoint] = Field(description="Every sampled frame's score, in time order.")
    overlays: OverlayState = Field(description="`pending` while the sensitivity maps are being computed.")
    sensitivity: list[SensitivityMap] = Field(default_factory=list)
    audit: list[AuditEntry] = Field(default_factory=list)
    captured_at: datetime
    expires_at: datetime = Field(description="When the evidence is deleted (retention).")
    shown_for: str | None = Field(
        None, description="Set when this is the original's evidence shown for a repost: the repost's id."
    )
