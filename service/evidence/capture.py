"""Evidence capture: the frames, faces and crops a reviewer will see, taken while the frames are alive.

Called by the pipeline right after its verdict, on media it has just scored (no second decode). Everything is
pure: the kept frames are chosen from the per-frame scores, downscaled and JPEG-encoded; the kept faces' crops
are cut as each served model crops, for the occlusion lane to re-score later (`service/evidence/lane.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import cv2
import numpy as np
import numpy.typing as npt

from service.config import Settings
from service.evidence.document import (
    AuditEntry,
    EvidenceDocument,
    EvidenceFace,
    EvidenceFrame,
    EvidenceSubject,
    SeriesPoint,
)
from service.evidence.pictures import CropRef, EvidencePictures
from service.faces import TrackedFace
from service.media import SampledMedia
from service.models import ModelManifest
from service.schemas import Decision, ScoreResult

__all__ = ["CapturedEvidence", "EvidenceFor", "capture", "choose_frames", "document_for", "wants_evidence"]


def wants_evidence(decision: Decision, evidence_for: str) -> bool:
    """Whether a decision keeps evidence under `DFG_EVIDENCE_FOR` (`review` covers review and flag)."""
    if evidence_for == "all":
        return True
    if evidence_for == "review":
        return decision in ("review", "flag")
    if evidence_for == "flag":
        return decision == "flag"
    return False


@dataclass(frozen=True)
class EvidenceFor:
    """What the pipeline needs to capture: which decisions, how many frames, and at what size."""

    decisions: str  # DFG_EVIDENCE_FOR
    frames: int
    side: int
    quality: int
    crop_margin: float | None  # the served crop margin override (DFG_CROP_MARGIN), as the pipeline used it

    @classmethod
    def from_settings(cls, s: Settings) -> EvidenceFor | None:
        """What `DFG_EVIDENCE_*` asks for; None with `DFG_EVIDENCE_FOR=none` (no capture at all)."""
        if s.evidence_for == "none":
            return None
        return cls(s.evidence_for, s.evidence_frames, s.evidence_side, s.evidence_jpeg_quality, s.crop_margin)

    def wanted(self, result: ScoreResult) -> bool:
        return wants_evidence(result.decision, self.decisions)


@dataclass(frozen=True)
class CapturedEvidence:
    """A capture before it is tied to a stored subject (`document_for`)."""

    frames: list[EvidenceFrame]
    series: list[SeriesPoint]
    pictures: EvidencePictures  # frames and crops; no overlays yet
    crops_by_model: dict[str, npt.NDArray[np.uint8]]  # the kept faces, as each model crops them
    crop_refs: list[CropRef]
    partial: bool


def choose_frames(scores: Sequence[float | None], k: int) -> list[int]:
    """Positions of up to `k` frames: the most suspicious first, each at least `n / k` positions (one k-th of
    the video) from the ones already chosen, so a long suspicious stretch yields frames in proportion to its
    length and a second peak elsewhere still gets one, rather than k neighbours of one peak. Only when too few
    frames are that far apart is the spacing relaxed, by halves.

    Frames without a face count as least suspicious; with no face anywhere the frames are evenly spaced.
    Returned in time order.
    """
    n = len(scores)
    m = min(k, n)
    if m <= 0:
        return []
    if all(s is None for s in scores):
        return sorted({round(i * (n - 1) / max(1, m - 1)) for i in range(m)})
    order = sorted(range(n), key=lambda i: (scores[i] is None, -(scores[i] or 0.0), i))
    chosen: list[int] = []
    gaps = [max(1, n // k)]
    while gaps[-1] > 1:  # relaxed by halves: the next frames still as far apart as the rest allows
        gaps.append(gaps[-1] // 2)
    for min_gap in gaps:
        for i in order:
            if len(chosen) >= m:
                break
            if i not in chosen and all(abs(i - j) >= min_gap for j in chosen):
                chosen.append(i)
    return sorted(chosen)


def _jpeg(rgb: npt.NDArray[np.uint8], quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB picture
        raise RuntimeError("JPEG encoding failed")
    return bytes(buf)


def _downscaled(frame: npt.NDArray[np.uint8], side: int) -> tuple[npt.NDArray[np.uint8], float]:
    h, w = frame.shape[:2]
    f = min(1.0, side / max(h, w))
    if f >= 1.0:
        return frame, 1.0
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA), f  # type: ignore[return-value]


def capture(
    media: SampledMedia,
    faces: Sequence[Sequence[TrackedFace]],
    face_scores: Sequence[float],
    face_scored: Sequence[bool],
    models: Sequence[ModelManifest],
    how: EvidenceFor,
) -> CapturedEvidence:
    """The evidence of scored media: `faces` per sampled frame and `face_scores` / `face_scored` over them in
    order (`service.pipeline.StageResult`)."""
    from service.pipeline import cut_crops  # the pipeline imports this module

    per_frame: list[list[tuple[TrackedFace, float, bool]]] = []
    k = 0
    for frame_faces in faces:
        row = []
        for face in frame_faces:
            row.append((face, face_scores[k], face_scored[k]))
            k += 1
        per_frame.append(row)
    frame_scores: list[float | None] = [max((s for _, s, _ in row), default=None) for row in per_frame]
    series = [
        SeriesPoint(time_s=round(t, 3), score=None if s is None else round(s, 6))
        for t, s in zip(media.times, frame_scores, strict=True)
    ]
    kept = choose_frames(frame_scores, how.frames)

    frames: list[EvidenceFrame] = []
    jpegs: list[bytes] = []
    candidates: list[tuple[float, int, int, TrackedFace]] = []
    for pos_kept, pos in enumerate(kept):
        small, f = _downscaled(media.frames[pos], how.side)
        jpegs.append(_jpeg(small, how.quality))
        out = []
        for j, (face, score, scored) in enumerate(per_frame[pos]):
            x1, y1, x2, y2 = face.box
            box = (round(x1 * f, 1), round(y1 * f, 1), round(x2 * f, 1), round(y2 * f, 1))
            out.append(EvidenceFace(box=box, track_id=face.track_id, score=round(score, 6), scored=scored))
            candidates.append((score, pos_kept, j, face))
        frames.append(
            EvidenceFrame(
                index=media.indices[pos],
                time_s=round(media.times[pos], 3),
                score=None if frame_scores[pos] is None else round(frame_scores[pos] or 0.0, 6),
                width=small.shape[1],
                height=small.shape[0],
                faces=out,
            )
        )
    # The `frames` most suspicious faces of the kept frames, in page order: each costs grid^2 + 1 model calls
    # on the overlay lane, so the lane's cost is bounded by K, whatever the crowd on the frames.
    best = sorted(sorted(candidates, key=lambda c: -c[0])[: how.frames], key=lambda c: (c[1], c[2]))
    refs = [CropRef(frame=fi, face=j, track_id=face.track_id, score=round(s, 6)) for s, fi, j, face in best]
    crops = cut_crops(media, [c[3] for c in best], models, how.crop_margin) if best else {}
    first = crops[models[0].name] if crops else None
    crop_jpegs = [] if first is None else [_jpeg(c, how.quality) for c in first]
    return CapturedEvidence(
        frames=frames,
        series=series,
        pictures=EvidencePictures(frames=jpegs, crops=crop_jpegs),
        crops_by_model=crops,
        crop_refs=refs,
        partial=media.header.partial,
    )


def document_for(
    captured: CapturedEvidence,
    result: ScoreResult,
    *,
    subject: EvidenceSubject,
    subject_id: str,
    tenant: str,
    now: datetime,
    retention_seconds: float,
    overlays_planned: bool,
    audit: Sequence[AuditEntry] = (),
) -> EvidenceDocument:
    """The stored document of a capture, for the decision (`video_id`) or the job (`job_id`) it explains."""
    planned = overlays_planned and bool(captured.crop_refs)
    return EvidenceDocument(
        subject=subject,
        subject_id=subject_id,
        tenant=tenant,
        decision=result.decision,
        score=result.score,
        reasons=list(result.reasons),
        model=result.model,
        thresholds=result.thresholds,
        aggregation=result.aggregation,
        media=result.media,
        frames=captured.frames,
        series=captured.series,
        overlays="pending" if planned else "skipped",
        audit=[
            *audit,
            AuditEntry(at=now, event="evidence_captured", detail=f"{len(captured.frames)} frames kept"),
        ],
        captured_at=now,
        expires_at=now + timedelta(seconds=retention_seconds),
    )
