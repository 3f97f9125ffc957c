"""Shadow scoring: a candidate ensemble judges a sample of live traffic beside the primary, out of its way.

Which media are in the shadow's arm is a function of the media's sha256 (`in_shadow_arm`), so a repost of the
same bytes lands in the same arm on every replica, the gateway and the worker alike. The adapters cut the
shadow's crops while the frames are alive (`Pipeline.score_media_with`: cropping is cheap next to decoding and
detection, which the shadow reuses) and, once the primary decision is made, offer them to the `ShadowLane`:
one low-priority thread with a bounded queue and its own backend (embedded ONNX Runtime with one thread, or
the `shadow_ensemble` model on Triton), so live crops never wait behind shadow crops in the micro-batcher.
On Triton the shadow's member models still share the server (its dynamic-batching queues and GPU) with live
crops, and the lane's nice value does nothing there: the sample is the lever (docs/rollouts.md).
When the queue is full the medium is skipped and counted, never queued without bound: the shadow is a
measurement, and an incomplete one is preferable to a primary slowed down by it. The queue bounds items, not
bytes: an item holds all of a medium's crops.

The shadow decides with its own ensemble's policy (its manifest's thresholds and aggregation, else a lone
model's calibrated thresholds, else the defaults); the `DFG_*_THRESHOLD` overrides are the primary's. Its
verdict goes to a sink the adapter injects (the decision store's `shadow_results`); it is never emitted as a
flag event. Nothing here does I/O of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service import metrics
from service.audio.judge import overall
from service.decision import Policy, Thresholds, Verdict, ensemble_policy, judge
from service.inference import InferenceBackend
from service.lanes import LowPriorityLane
from service.models import EnsembleManifest, ModelManifest
from service.pipeline import CutCrops, ensemble_ref
from service.schemas import Decision, ModelRef, ShadowSource

__all__ = [
    "ShadowLane",
    "ShadowModels",
    "ShadowSink",
    "ShadowSource",
    "ShadowSubject",
    "ShadowVerdict",
    "ShadowWork",
    "in_shadow_arm",
]


log = logging.getLogger("dfguard.shadow")

SKIP_REASONS = ("queue_full", "failed", "store_unavailable", "no_faces_cut", "shutdown")


def in_shadow_arm(sha256: str, sample: float) -> bool:
    """Whether media with this sha256 is in the shadow's sample: its first 64 bits, read as a fraction of
    2**64, fall below `sample` (0: never, 1: always). A digest is uniform, so the share is `sample`."""
    if sample <= 0.0:
        return False
    if sample >= 1.0:
        return True
    return int(sha256[:16], 16) / 2**64 < sample


@dataclass(frozen=True)
class ShadowModels:
    """The shadow ensemble: its members, its manifest (if one was named), and the policy it decides with."""

    models: list[ModelManifest]
    ensemble: EnsembleManifest | None
    sample: float

    @property
    def model_ref(self) -> ModelRef:
        return ensemble_ref(self.models, self.ensemble)

    @property
    def policy(self) -> Policy:
        """The ensemble's own policy, without the settings' overrides (those were chosen for the primary)."""
        return ensemble_policy(self.models, self.ensemble)

    def judge(self, backend: InferenceBackend, crops: CutCrops, policy: Policy | None = None) -> Verdict:
        """The verdict on `crops` with `backend`: the live lane's and `dfguard models diff --folder`'s, so
        the offline report judges a candidate exactly as its shadow would be judged."""
        if crops.crop_frames:
            scores = backend.predict_many(crops.crops_by_model)
        else:
            scores = {name: np.empty(0, dtype=np.float32) for name in crops.crops_by_model}
        return judge(
            {m.name: scores[m.name] for m in self.models},
            crops.crop_frames,
            policy or self.policy,
            partial=crops.partial,
            untrained=any(not m.trained for m in self.models),
        )

    def models_for(self, sha256: str) -> Sequence[ModelManifest]:
        """The models to cut crops for (`service.pipeline.ExtraModels`): all of them in the arm, else none."""
        return self.models if in_shadow_arm(sha256, self.sample) else ()


@dataclass(frozen=True)
class ShadowSubject:
    """Which medium the shadow judged and what the primary decided on it."""

    source: ShadowSource
    tenant: str
    sha256: str
    video_id: str | None  # the worker's video id, the gateway's job id; None for `/v1/score`
    decision_id: int | None  # the stored decision (worker)
    primary_model: ModelRef
    primary_score: float | None
    primary_decision: Decision
    # The speech's verdict, which the shadow (face models only) keeps: its decision is the stricter of the
    # candidate faces' and this, so a change counts only what the candidate would change.
    audio: tuple[Decision | None, list[str]] | None = None


class SpeechAnswer(Protocol):
    @property
    def decision(self) -> Decision | None: ...
    @property
    def reasons(self) -> list[str]: ...


class PrimaryAnswer(Protocol):
    """What the shadow records of the primary's decision (a `ScoreResult`, a stored `DecisionRecord`)."""

    @property
    def model(self) -> ModelRef: ...
    @property
    def score(self) -> float | None: ...
    @property
    def decision(self) -> Decision: ...
    @property
    def audio(self) -> SpeechAnswer | None: ...


@dataclass(frozen=True)
class ShadowWork:
    subject: ShadowSubject
    crops: CutCrops


@dataclass(frozen=True)
class ShadowVerdict:
    """What the sink stores: the shadow's verdict beside the primary's (`shadow_results`)."""

    subject: ShadowSubject
    model: ModelRef
    score: float | None
    decision: Decision
    thresholds: Thresholds


ShadowSink = Callable[[ShadowVerdict], object]  # its return value is ignored


class ShadowLane:
    """One daemon thread scoring `ShadowWork` with the shadow's backend, fed through a bounded queue.

    `offer` never blocks. Failures never leave the lane: inference failures count as
    `dfguard_shadow_skipped_total{reason="failed"}`, sink failures (the store is down) as
    `{reason="store_unavailable"}`, offers after `close` and work it drops as `{reason="shutdown"}`. The lane
    owns `backend` and closes it.
    """

    def __init__(
        self, shadow: ShadowModels, backend: InferenceBackend, sink: ShadowSink, *, maxsize: int = 8
    ) -> None:
        self.shadow = shadow
        self.backend = backend
        self.sink = sink
        self.model_ref = shadow.model_ref
        self.policy = shadow.policy
        self._lane: LowPriorityLane[ShadowWork] = LowPriorityLane(
            "dfguard-shadow",
            self._score,
            maxsize=maxsize,
            depth=metrics.SHADOW_QUEUE_DEPTH,
            dropped=lambda _: metrics.SHADOW_SKIPPED.labels(reason="shutdown").inc(),
        )
        for reason in SKIP_REASONS:
            metrics.SHADOW_SKIPPED.labels(reason=reason)

    def models_for(self, sha256: str) -> Sequence[ModelManifest]:
        """`ShadowModels.models_for`: what the pipeline passes as `extra` (none once the lane is closed)."""
        return () if self._lane.closed else self.shadow.models_for(sha256)

    def offer(self, work: ShadowWork) -> bool:
        """Queue `work` for the shadow if there is room; False (and counted) when it was skipped."""
        if not work.crops.crop_frames:  # no face: both arms would say allow without looking
            metrics.SHADOW_SKIPPED.labels(reason="no_faces_cut").inc()
            return False
        put = self._lane.put(work)
        if put == "queued":
            return True
        # closed: a medium still being scored when the lane closed
        metrics.SHADOW_SKIPPED.labels(reason="queue_full" if put == "queue_full" else "shutdown").inc()
        return False

    def offer_scored(
        self,
        crops: CutCrops,
        primary: PrimaryAnswer,
        *,
        source: ShadowSource,
        tenant: str,
        sha256: str,
        video_id: str | None = None,
        decision_id: int | None = None,
    ) -> bool:
        """`offer` the crops of a medium the primary has answered for (the gateway's and the worker's)."""
        subject = ShadowSubject(
            source=source,
            tenant=tenant,
            sha256=sha256,
            video_id=video_id,
            decision_id=decision_id,
            primary_model=primary.model,
            primary_score=primary.score,
            primary_decision=primary.decision,
            audio=None if primary.audio is None else (primary.audio.decision, list(primary.audio.reasons)),
        )
        return self.offer(ShadowWork(subject, crops))

    def judge(self, crops: CutCrops) -> Verdict:
        """The shadow's verdict on `crops`: one queued item's work, on the caller's thread."""
        return self.shadow.judge(self.backend, crops, self.policy)

    def _score(self, work: ShadowWork) -> None:
        subject = work.subject
        try:
            verdict = self.judge(work.crops)
        except Exception as exc:  # noqa: BLE001 - the shadow must never take the service down
            log.warning(
                "shadow scoring failed",
                extra={"error": f"{type(exc).__name__}: {exc}", "media_id": subject.sha256},
            )
            metrics.SHADOW_SKIPPED.labels(reason="failed").inc()
            return
        score = verdict.score
        decision, _ = overall((verdict.decision, verdict.reasons), subject.audio)
        try:
            self.sink(ShadowVerdict(subject, self.model_ref, score, decision, self.policy.thresholds))
        except Exception as exc:  # noqa: BLE001 - a store that is down loses this row, nothing else
            log.warning(
                "shadow result not stored",
                extra={"error": f"{type(exc).__name__}: {exc}", "media_id": subject.sha256},
            )
            metrics.SHADOW_SKIPPED.labels(reason="store_unavailable").inc()
            return
        metrics.SHADOW_DECISIONS.labels(primary=subject.primary_decision, shadow=decision).inc()
        if score is not None and subject.primary_score is not None:
            metrics.SHADOW_SCORE_DIFF.observe(score - subject.primary_score)

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking work, finish what is queued within `timeout` seconds (the rest is dropped and counted
        as `shutdown`), release the backend. Offers from then on are refused and counted as `shutdown`."""
        if self._lane.close(timeout):
            self.backend.close()
