"""From crop scores to a video score and a decision. Pure functions, no I/O.

Aggregation runs per model, then the models of an ensemble are averaged (as the DFDC winner averaged its 7).
`confident` is the DFDC winner's `confident_strategy` (selimsef/dfdc_deepfake_challenge `kernel_utils.py`
264-274): a few confidently fake crops outweigh many uncertain ones, and a confidently real majority is
trusted, which suits face swaps that affect only some frames or one of several faces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from service.config import Aggregation
from service.schemas import Decision, ThresholdSource

if TYPE_CHECKING:
    from service.models import EnsembleManifest, ModelManifest

__all__ = [
    "DEFAULT_AGGREGATION",
    "Policy",
    "Thresholds",
    "Verdict",
    "aggregate",
    "choose_policy",
    "decide",
    "ensemble_policy",
    "judge",
]

DEFAULT_AGGREGATION: Aggregation = "confident"


@dataclass(frozen=True)
class Thresholds:
    review: float = 0.5
    flag: float = 0.8


@dataclass(frozen=True)
class Policy:
    """How crop scores become a decision, and where the thresholds came from (recorded with every verdict)."""

    thresholds: Thresholds
    aggregation: Aggregation
    source: ThresholdSource


def choose_policy(
    *,
    review: float | None,
    flag: float | None,
    aggregation: Aggregation | None,
    ensemble: tuple[float, float] | None,
    ensemble_aggregation: Aggregation | None,
    model: tuple[float, float] | None,
) -> Policy:
    """Explicit settings win; then the ensemble manifest's fitted thresholds; then a lone model's calibrated
    thresholds; then the defaults. A partial override (only review or only flag) keeps the other value of the
    base and is recorded as `settings`. Raises ValueError when the result has review above flag."""
    base, source = Thresholds(), "default"
    if ensemble is not None:
        base, source = Thresholds(*ensemble), "ensemble"
    elif model is not None:
        base, source = Thresholds(*model), "model"
    if review is not None or flag is not None:
        source = "settings"
        base = Thresholds(base.review if review is None else review, base.flag if flag is None else flag)
    if base.review > base.flag:
        raise ValueError(
            f"review threshold {base.review} is above flag threshold {base.flag} "
            "(check DFG_REVIEW_THRESHOLD / DFG_FLAG_THRESHOLD against the ensemble manifest's)"
        )
    chosen = aggregation or ensemble_aggregation or DEFAULT_AGGREGATION
    return Policy(base, chosen, source)  # type: ignore[arg-type]


def ensemble_policy(
    models: Sequence[ModelManifest],
    ensemble: EnsembleManifest | None,
    *,
    review: float | None = None,
    flag: float | None = None,
    aggregation: Aggregation | None = None,
) -> Policy:
    """The policy of an ensemble: the overrides given, else its manifest's, else a lone model's calibrated
    thresholds, else the defaults. The primary passes the `DFG_*` overrides; a shadow or offline candidate
    passes none (they were chosen for the primary), so both arms are judged the way they would be served."""
    lone = models[0].thresholds if len(models) == 1 else None
    return choose_policy(
        review=review,
        flag=flag,
        aggregation=aggregation,
        ensemble=(ensemble.thresholds.review, ensemble.thresholds.flag)
        if ensemble and ensemble.thresholds
        else None,
        ensemble_aggregation=ensemble.aggregation if ensemble else None,
        model=(lone.review, lone.flag) if lone else None,
    )


@dataclass(frozen=True)
class Verdict:
    score: float | None
    decision: Decision
    reasons: list[str]


def _confident(scores: np.ndarray, t: float = 0.8) -> float:
    n = len(scores)
    confident_fake = scores[scores > t]
    if len(confident_fake) > 11 and len(confident_fake) > n // 2.5:
        return float(np.mean(confident_fake))
    confident_real = scores[scores < 0.2]
    if len(confident_real) > 0.9 * n:
        return float(np.mean(confident_real))
    return float(np.mean(scores))


def _one_model(scores: Sequence[float], frames: Sequence[int], strategy: Aggregation) -> float:
    arr = np.asarray(scores, dtype=np.float64)
    if strategy == "mean":
        return float(arr.mean())
    if strategy == "max_face_mean_frames":
        per_frame: dict[int, float] = {}
        for f, s in zip(frames, arr, strict=True):
            per_frame[f] = max(per_frame.get(f, 0.0), float(s))
        return float(np.mean(list(per_frame.values())))
    return _confident(arr)


def aggregate(
    scores_by_model: Mapping[str, Sequence[float]], frames: Sequence[int], strategy: Aggregation
) -> float | None:
    """Video score: `strategy` over each model's crop scores, then the mean over models; None without crops.

    `frames[i]` is the sampled-frame position of crop i (the same for every model).
    """
    per_model = [_one_model(s, frames, strategy) for s in scores_by_model.values() if len(s)]
    return float(np.mean(per_model)) if per_model else None


def decide(score: float | None, thresholds: Thresholds, extra_reasons: Sequence[str] = ()) -> Verdict:
    """Map a video score to allow / review / flag with the reasons that led there."""
    reasons = list(extra_reasons)
    if score is None:
        return Verdict(None, "allow", ["no_face_found", *reasons])
    if score >= thresholds.flag:
        decision: Decision = "flag"
        reasons.insert(0, "score_at_or_above_flag_threshold")
    elif score >= thresholds.review:
        decision = "review"
        reasons.insert(0, "score_at_or_above_review_threshold")
    else:
        decision = "allow"
        reasons.insert(0, "score_below_review_threshold")
    return Verdict(score, decision, reasons)


def judge(
    scores_by_model: Mapping[str, Sequence[float] | npt.NDArray[np.floating]],
    crop_frames: Sequence[int],
    policy: Policy,
    *,
    partial: bool,
    untrained: bool,
) -> Verdict:
    """An ensemble's verdict on its crop scores: `policy`'s aggregation and thresholds, with the reasons that
    qualify any verdict (`partially_decoded`, `untrained_model`). The primary and the shadow both judge here,
    so their decisions differ only by their models and policies."""
    score = aggregate(
        {name: [float(x) for x in s] for name, s in scores_by_model.items()}, crop_frames, policy.aggregation
    )
    extra = ["partially_decoded"] if partial else []
    if untrained:
        extra.append("untrained_model")
    return decide(score, policy.thresholds, extra)
