"""The scoring path every entry point shares: media -> sampled frames -> faces -> crop scores -> verdict.

Each stage is a call with a typed value and is timed on its own; the CLI, the gateway and the worker are thin
adapters over `Pipeline.score_file`. A pipeline is assembled in one place, `service.compose.build_pipeline`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.config import Settings
from service.decision import Thresholds, Verdict, aggregate, decide
from service.faces import (
    Detection,
    FaceDetector,
    TrackedFace,
    crop_face,
    keyframe_positions,
    track_faces,
)
from service.inference import InferenceBackend
from service.media import PendingMedia, SampledMedia, file_sha256
from service.models import ModelManifest
from service.schemas import FaceResult, FrameResult, MediaInfo, ModelRef, ScoreResult, Timings

__all__ = ["Pipeline", "StageResult"]


@dataclass(frozen=True)
class StageResult:
    """Faces found on the sampled frames and their scores, per model and averaged over the ensemble."""

    faces: list[list[TrackedFace]]
    crop_frames: list[int]
    scores_by_model: dict[str, npt.NDArray[np.float32]]
    mean_scores: npt.NDArray[np.float32]


def _ensemble_ref(models: Sequence[ModelManifest]) -> ModelRef:
    if len(models) == 1:
        return ModelRef(name=models[0].name, version=models[0].version)
    return ModelRef(name="+".join(m.name for m in models), version="+".join(m.version for m in models))


class Pipeline:
    """Scores media files. Thread-compatible: one instance may serve concurrent calls."""

    def __init__(self, settings: Settings, detector: FaceDetector, backend: InferenceBackend) -> None:
        self.settings = settings
        self.detector = detector
        self.backend = backend
        self.models = backend.models
        self.model_ref = _ensemble_ref(self.models)
        self.thresholds = self._thresholds()
        self.untrained = any(not m.trained for m in self.models)

    def close(self) -> None:
        """Release the backend (the micro-batcher's thread, a Triton client); no scoring after this."""
        self.backend.close()

    def _thresholds(self) -> Thresholds:
        """Calibrated thresholds of the models (mean over the ensemble) win over the settings' defaults."""
        calibrated = [m.thresholds for m in self.models if m.thresholds is not None]
        if calibrated and len(calibrated) == len(self.models):
            return Thresholds(
                review=float(np.mean([t.review for t in calibrated])),
                flag=float(np.mean([t.flag for t in calibrated])),
            )
        return Thresholds(self.settings.review_threshold, self.settings.flag_threshold)

    # --- stages ----------------------------------------------------------------------------------------

    def detect(self, media: SampledMedia) -> list[list[TrackedFace]]:
        """Faces on every sampled frame: detector on key frames, tracking in between."""
        n = len(media.frames)
        is_image = media.header.kind == "image"
        keys = keyframe_positions(n, 1 if is_image else self.settings.detect_every)
        side = self.settings.detect_side_image if is_image else self.settings.detect_side_video
        dets = self._detect_coarse_to_fine([media.frames[k] for k in keys], side)
        min_px = self.settings.min_face_px / media.scale
        dets = [
            [d for d in frame if min(d.box[2] - d.box[0], d.box[3] - d.box[1]) >= min_px] for frame in dets
        ]
        return track_faces(keys, dets, n, self.settings.track_iou)

    def _detect_coarse_to_fine(self, frames: list[npt.NDArray[np.uint8]], side: int) -> list[list[Detection]]:
        """Detections per frame: cheap where faces are large, finer only where needed.

        The first key frame is searched at `side` (320 px for video). If it shows a face, so are the others,
        and only key frames left without a face get a second look at `detect_side_fallback` (640 px: faces
        down to about 5 % of the frame height). If it shows none, faces are small or absent: every key frame
        is searched at the fine size at once, rather than paying for both passes.
        """
        fine = self.settings.detect_side_fallback
        if fine <= side:
            return self.detector.detect(frames, side)
        first = self.detector.detect(frames[:1], side)
        if not first[0]:
            return self.detector.detect(frames, fine)
        dets = first + self.detector.detect(frames[1:], side)
        empty = [i for i, d in enumerate(dets) if not d]
        if empty:
            for i, found in zip(empty, self.detector.detect([frames[i] for i in empty], fine), strict=True):
                dets[i] = found
        return dets

    def classify(self, media: SampledMedia, faces: list[list[TrackedFace]]) -> StageResult:
        """Crop every face as each model's manifest says and score the crops with the whole ensemble."""
        flat = [face for frame in faces for face in frame]
        crop_frames = [face.frame for face in flat]
        groups: dict[tuple[int, float, str], list[ModelManifest]] = defaultdict(list)
        for m in self.models:
            margin = self.settings.crop_margin if self.settings.crop_margin is not None else m.crop_margin
            groups[(m.input_size, margin, m.resize)].append(m)
        crops_by_model: dict[str, npt.NDArray[np.uint8]] = {}
        for (size, margin, resize), members in groups.items():
            crops = np.empty((len(flat), size, size, 3), dtype=np.uint8)
            for i, face in enumerate(flat):
                crops[i] = crop_face(media.frames[face.frame], face.box, margin, size, resize)  # type: ignore[arg-type]
            for m in members:
                crops_by_model[m.name] = crops
        if flat:
            scores = self.backend.predict_many(crops_by_model)
        else:
            scores = {name: np.empty(0, dtype=np.float32) for name in crops_by_model}
        ordered = {m.name: scores[m.name] for m in self.models}
        mean = np.mean(np.stack(list(ordered.values())), axis=0) if flat else np.empty(0, np.float32)
        return StageResult(faces, crop_frames, ordered, mean.astype(np.float32))

    def verdict(self, media: SampledMedia, stage: StageResult) -> Verdict:
        score = aggregate(
            {k: v.tolist() for k, v in stage.scores_by_model.items()},
            stage.crop_frames,
            self.settings.aggregation,
        )
        extra = []
        if media.header.partial:
            extra.append("partially_decoded")
        if self.untrained:
            extra.append("untrained_model")
        return decide(score, self.thresholds, extra)

    # --- whole path ------------------------------------------------------------------------------------

    def score_file(self, path: str | Path) -> ScoreResult:
        """Score the media at `path`. Raises a `MediaError` for media that cannot be analysed."""
        return self.score_pending(PendingMedia(path, self.settings))

    def score_pending(self, pending: PendingMedia) -> ScoreResult:
        """Score media whose decoding has already started (see `PendingMedia`); releases its frames."""
        try:
            sha = file_sha256(pending.path)
            media = pending.result()
            return self.score_media(media, sha, pending.started)
        finally:
            pending.close()

    def score_media(self, media: SampledMedia, sha: str, started: float) -> ScoreResult:
        """Score decoded media (`started`: perf_counter when its decoding began, for the timings)."""
        t1 = time.perf_counter()
        faces = self.detect(media)
        t2 = time.perf_counter()
        stage = self.classify(media, faces)
        verdict = self.verdict(media, stage)
        t3 = time.perf_counter()
        return self._result(media, sha, stage, verdict, (t1 - started, t2 - t1, t3 - t2, t3 - started))

    def _result(
        self,
        media: SampledMedia,
        sha: str,
        stage: StageResult,
        verdict: Verdict,
        secs: tuple[float, float, float, float],
    ) -> ScoreResult:
        s = media.scale
        frames: list[FrameResult] = []
        k = 0
        for pos, faces in enumerate(stage.faces):
            out = []
            for face in faces:
                x1, y1, x2, y2 = face.box
                out.append(
                    FaceResult(
                        box=(round(x1 * s, 2), round(y1 * s, 2), round(x2 * s, 2), round(y2 * s, 2)),
                        detector_score=round(face.detector_score, 4),
                        score=round(float(stage.mean_scores[k]), 6),
                        track_id=face.track_id,
                        tracked=face.tracked,
                    )
                )
                k += 1
            frames.append(FrameResult(index=media.indices[pos], time_s=media.times[pos], faces=out))
        h = media.header
        ms = [round(x * 1000, 2) for x in secs]
        return ScoreResult(
            media=MediaInfo(sha256=sha, kind=h.kind, duration_s=h.duration_s, width=h.width, height=h.height),
            frames_sampled=len(media.frames),
            faces_detected=k,
            score=None if verdict.score is None else round(verdict.score, 6),
            decision=verdict.decision,
            reasons=verdict.reasons,
            model=self.model_ref,
            timings_ms=Timings(decode=ms[0], detect=ms[1], classify=ms[2], total=ms[3]),
            frames=frames,
        )
