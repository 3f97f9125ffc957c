"""The scoring path every entry point shares: media -> sampled frames -> faces -> crop scores -> verdict.

Each stage is a call with a typed value and is timed on its own; the CLI, the gateway and the worker are thin
adapters over `Pipeline.score_file`. A pipeline is assembled in one place, `service.compose.build_pipeline`.

`score_file_with` / `score_media_with` also cut crops for models outside the ensemble (a shadow candidate,
`service/shadow.py`) from the faces the ensemble classified, while the frames are alive; they are scored
elsewhere, later, so the answer never waits for them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from service.audio import AudioStage, overall
from service.config import Settings
from service.decision import Policy, Verdict, ensemble_policy, judge
from service.errors import NoVideoStream
from service.evidence.capture import CapturedEvidence, EvidenceFor, capture
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
from service.models import EnsembleManifest, ModelManifest
from service.schemas import (
    AudioResult,
    FaceResult,
    FrameResult,
    MediaInfo,
    ModelRef,
    ScoreResult,
    Timings,
    UsedThresholds,
)

__all__ = ["CutCrops", "ExtraModels", "Pipeline", "Scored", "StageResult", "cut_crops", "ensemble_ref"]


@dataclass(frozen=True)
class StageResult:
    """Faces found on the sampled frames and their scores, per model and averaged over the ensemble.

    `crop_frames` and the score arrays cover the classified crops only; `face_scores` and `face_scored` cover
    every face of `faces` in order (a face that was not classified carries its track's nearest score).
    """

    faces: list[list[TrackedFace]]
    crop_frames: list[int]
    scores_by_model: dict[str, npt.NDArray[np.float32]]
    mean_scores: npt.NDArray[np.float32]
    face_scores: list[float]
    face_scored: list[bool]
    crop_faces: list[TrackedFace] = field(default_factory=list)  # the classified faces, in crop order


@dataclass(frozen=True)
class CutCrops:
    """Crops cut for models outside the pipeline's ensemble (a shadow ensemble) from the faces it classified.

    Cut while the frames are alive, so the models can be run later, after the frames are released.
    """

    crops_by_model: dict[str, npt.NDArray[np.uint8]]
    crop_frames: list[int]
    partial: bool  # the media was only partly decoded


class Scored(NamedTuple):
    """A pipeline's answer, the crops cut for extra models (None when none were asked for), and the evidence
    captured for reviewers (None unless asked for and the decision calls for it)."""

    result: ScoreResult
    extra: CutCrops | None
    evidence: CapturedEvidence | None = None


ExtraModels = Callable[[str], Sequence[ModelManifest]]
"""Given the media's sha256, the extra models to cut crops for (empty: none)."""


def cut_crops(
    media: SampledMedia,
    faces: Sequence[TrackedFace],
    models: Sequence[ModelManifest],
    margin_override: float | None = None,
) -> dict[str, npt.NDArray[np.uint8]]:
    """Each model's crops of `faces`, cut as its manifest says; models that crop alike share one array."""
    groups: dict[tuple[int, float, str], list[ModelManifest]] = defaultdict(list)
    for m in models:
        margin = margin_override if margin_override is not None else m.crop_margin
        groups[(m.input_size, margin, m.resize)].append(m)
    crops_by_model: dict[str, npt.NDArray[np.uint8]] = {}
    for (size, margin, resize), members in groups.items():
        crops = np.empty((len(faces), size, size, 3), dtype=np.uint8)
        for i, face in enumerate(faces):
            frame = media.frames[face.frame]
            crops[i] = crop_face(frame, face.box, margin, size, resize, face.landmarks)  # type: ignore[arg-type]
        for m in members:
            crops_by_model[m.name] = crops
    return crops_by_model


def _fill_from_track(
    flat: Sequence[TrackedFace], chosen: Sequence[int], scores: Sequence[float]
) -> list[float]:
    """A score for every face: its own if classified, else the nearest classified one of its track's."""
    by_track: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for i, s in zip(chosen, scores, strict=True):
        by_track[flat[i].track_id].append((flat[i].frame, s))
    own = dict(zip(chosen, scores, strict=True))
    out = []
    for i, face in enumerate(flat):
        if i in own:
            out.append(own[i])
        else:
            out.append(min(by_track[face.track_id], key=lambda fs: abs(fs[0] - face.frame))[1])
    return out


def ensemble_ref(models: Sequence[ModelManifest], ensemble: EnsembleManifest | None) -> ModelRef:
    """The name and version an ensemble's verdicts carry: its manifest's, a lone model's, or the members'."""
    if ensemble is not None:
        return ModelRef(name=ensemble.name, version=ensemble.version)
    if len(models) == 1:
        return ModelRef(name=models[0].name, version=models[0].version)
    return ModelRef(name="+".join(m.name for m in models), version="+".join(m.version for m in models))


class Pipeline:
    """Scores media files. Thread-compatible: one instance may serve concurrent calls."""

    def __init__(
        self,
        settings: Settings,
        detector: FaceDetector,
        backend: InferenceBackend,
        ensemble: EnsembleManifest | None = None,
        audio: AudioStage | None = None,
    ) -> None:
        self.settings = settings
        self.audio = audio
        self.detector = detector
        self.backend = backend
        self.models = backend.models
        self.ensemble = ensemble
        self.model_ref = ensemble_ref(self.models, ensemble)
        self.policy = self._policy()
        self.thresholds = self.policy.thresholds
        self.untrained = any(not m.trained for m in self.models)

    def close(self) -> None:
        """Release the backend (the micro-batcher's thread, a Triton client); no scoring after this."""
        self.backend.close()

    def _policy(self) -> Policy:
        """Thresholds and aggregation: explicit settings, else the ensemble manifest's, else a lone model's
        calibrated thresholds, else the defaults (`service.decision.ensemble_policy`)."""
        return ensemble_policy(
            self.models,
            self.ensemble,
            review=self.settings.review_threshold,
            flag=self.settings.flag_threshold,
            aggregation=self.settings.aggregation,
        )

    @property
    def used_thresholds(self) -> UsedThresholds:
        t = self.policy.thresholds
        return UsedThresholds(review=t.review, flag=t.flag, source=self.policy.source)

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
        """Crop the faces as each model's manifest says and score the crops with the whole ensemble.

        `classify_crops="detected"` scores only faces the detector found (key frames), not the boxes tracking
        placed in between: a fraction of the crops (1 in `detect_every`) for a stronger, costlier model.
        """
        every = [face for frame in faces for face in frame]
        chosen = self._chosen(every)
        flat = [every[i] for i in chosen]
        crop_frames = [face.frame for face in flat]
        crops_by_model = cut_crops(media, flat, self.models, self.settings.crop_margin)
        if flat:
            scores = self.backend.predict_many(crops_by_model)
        else:
            scores = {name: np.empty(0, dtype=np.float32) for name in crops_by_model}
        ordered = {m.name: scores[m.name] for m in self.models}
        mean = np.mean(np.stack(list(ordered.values())), axis=0) if flat else np.empty(0, np.float32)
        chosen_set = set(chosen)
        return StageResult(
            faces,
            crop_frames,
            ordered,
            mean.astype(np.float32),
            _fill_from_track(every, chosen, [float(x) for x in mean]),
            [i in chosen_set for i in range(len(every))],
            flat,
        )

    def _chosen(self, every: Sequence[TrackedFace]) -> list[int]:
        """Positions in `every` of the faces to classify (`classify_crops`)."""
        if self.settings.classify_crops == "detected":
            return [i for i, f in enumerate(every) if not f.tracked]
        return list(range(len(every)))

    def verdict(self, media: SampledMedia, stage: StageResult) -> Verdict:
        return judge(
            stage.scores_by_model,
            stage.crop_frames,
            self.policy,
            partial=media.header.partial,
            untrained=self.untrained,
        )

    # --- whole path ------------------------------------------------------------------------------------

    def score_file(self, path: str | Path) -> ScoreResult:
        """Score the media at `path`. Raises a `MediaError` for media that cannot be analysed."""
        return self.score_pending(PendingMedia(path, self.settings))

    def score_file_with(
        self, path: str | Path, extra: ExtraModels | None, evidence: EvidenceFor | None = None
    ) -> Scored:
        """`score_file`, also cutting crops for the models `extra` names (a shadow ensemble), and capturing
        evidence when `evidence` is given and the decision calls for it."""
        return self._score_pending(PendingMedia(path, self.settings), extra, evidence)

    def score_pending(self, pending: PendingMedia) -> ScoreResult:
        """Score media whose decoding has already started (see `PendingMedia`); releases its frames."""
        return self._score_pending(pending, None, None).result

    def _score_pending(
        self, pending: PendingMedia, extra: ExtraModels | None, evidence: EvidenceFor | None
    ) -> Scored:
        try:
            sha = file_sha256(pending.path)
            media = pending.result()
            return self._score_media(media, sha, pending.started, extra, evidence)
        finally:
            pending.close()

    def score_media(self, media: SampledMedia, sha: str, started: float) -> ScoreResult:
        """Score decoded media (`started`: perf_counter when its decoding began, for the timings)."""
        return self._score_media(media, sha, started, None, None).result

    def score_media_with(
        self,
        media: SampledMedia,
        sha: str,
        started: float,
        extra: ExtraModels | None,
        evidence: EvidenceFor | None = None,
    ) -> Scored:
        """`score_media`, also cutting crops for the models `extra` names, from the same classified faces,
        and capturing evidence when `evidence` is given and the decision calls for it."""
        return self._score_media(media, sha, started, extra, evidence)

    def _score_media(
        self,
        media: SampledMedia,
        sha: str,
        started: float,
        extra: ExtraModels | None,
        evidence: EvidenceFor | None,
    ) -> Scored:
        t1 = time.perf_counter()
        pictured = media.header.kind != "audio"
        if not pictured and self.audio is None:
            raise NoVideoStream("the media is audio only and this pipeline scores no audio")
        faces = self.detect(media) if pictured else []
        t2 = time.perf_counter()
        stage = self.classify(media, faces)
        verdict = self.verdict(media, stage) if pictured else None
        t3 = time.perf_counter()
        audio = None
        if media.audio is not None and self.audio is not None:
            audio = self.audio.score(media.audio)
        t4 = time.perf_counter()
        result = self._result(
            media, sha, stage, verdict, audio, (t1 - started, t2 - t1, t3 - t2, t4 - t3, t4 - started)
        )
        # After the primary's timings: neither the extra cut nor the evidence is the answer's cost. The frames
        # are still alive.
        models = extra(sha) if extra is not None and pictured else ()
        cut = None
        if models:
            cut = CutCrops(
                cut_crops(media, stage.crop_faces, models),
                list(stage.crop_frames),
                media.header.partial,
            )
        kept = None
        if evidence is not None and pictured and evidence.wanted(result):
            kept = capture(media, stage.faces, stage.face_scores, stage.face_scored, self.models, evidence)
        return Scored(result, cut, kept)

    def _result(
        self,
        media: SampledMedia,
        sha: str,
        stage: StageResult,
        verdict: Verdict | None,
        audio: AudioResult | None,
        secs: tuple[float, float, float, float, float],
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
                        score=round(stage.face_scores[k], 6),
                        track_id=face.track_id,
                        tracked=face.tracked,
                        scored=stage.face_scored[k],
                    )
                )
                k += 1
            frames.append(FrameResult(index=media.indices[pos], time_s=media.times[pos], faces=out))
        h = media.header
        ms = [round(x * 1000, 2) for x in secs]
        decision, reasons = overall(
            (verdict.decision, verdict.reasons) if verdict is not None else None,
            (audio.decision, audio.reasons) if audio is not None else None,
        )
        score = None if verdict is None or verdict.score is None else round(verdict.score, 6)
        return ScoreResult(
            media=MediaInfo(sha256=sha, kind=h.kind, duration_s=h.duration_s, width=h.width, height=h.height),
            frames_sampled=len(media.frames),
            faces_detected=k,
            crops_scored=len(stage.crop_frames),
            score=score,
            decision=decision,
            reasons=reasons,
            model=self.model_ref,
            thresholds=self.used_thresholds,
            aggregation=self.policy.aggregation,
            timings_ms=Timings(decode=ms[0], detect=ms[1], classify=ms[2], audio=ms[3], total=ms[4]),
            frames=frames,
            audio=audio,
        )
