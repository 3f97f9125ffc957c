"""From window scores to a track's verdict on synthetic speech. Pure functions, no I/O.

A window's score is the model's log-likelihood ratio (synthetic over bona fide); the track's score is the
sigmoid of their mean, the quantity the shipped thresholds were fitted on (review: the 95th percentile of
calibration real speech, flag: their maximum plus one logit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from service.decision import Thresholds
from service.models import AudioModelManifest
from service.schemas import Decision, ThresholdSource

__all__ = ["AudioPolicy", "AudioVerdict", "audio_policy", "judge_audio", "logit", "overall", "sigmoid"]


@dataclass(frozen=True)
class AudioPolicy:
    thresholds: Thresholds
    source: ThresholdSource


@dataclass(frozen=True)
class AudioVerdict:
    score: float | None
    decision: Decision | None
    reasons: list[str]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def logit(p: float) -> float:
    """The inverse of `sigmoid`, clamped so that 0 and 1 stay finite."""
    p = min(max(p, 1e-12), 1.0 - 1e-12)
    return math.log(p / (1.0 - p))


def audio_policy(model: AudioModelManifest, review: float | None, flag: float | None) -> AudioPolicy:
    """The model's fitted thresholds, with the `DFG_AUDIO_*_THRESHOLD` overrides given. Raises ValueError when
    review ends above flag."""
    t = Thresholds(
        model.thresholds.review if review is None else review, model.thresholds.flag if flag is None else flag
    )
    if t.review > t.flag:
        raise ValueError(
            f"audio review threshold {t.review} is above audio flag threshold {t.flag} "
            "(check DFG_AUDIO_REVIEW_THRESHOLD / DFG_AUDIO_FLAG_THRESHOLD against the audio model's)"
        )
    return AudioPolicy(t, "settings" if review is not None or flag is not None else "model")


def judge_audio(
    window_llrs: Sequence[float], policy: AudioPolicy, extra_reasons: Sequence[str] = ()
) -> AudioVerdict:
    """The track's verdict; no windows (no speech) gives no score and no decision."""
    reasons = list(extra_reasons)
    if not window_llrs:
        return AudioVerdict(None, None, ["no_speech_found", *reasons])
    score = sigmoid(sum(window_llrs) / len(window_llrs))
    t = policy.thresholds
    if score >= t.flag:
        return AudioVerdict(
            score, "flag", ["synthetic_speech_suspected", "speech_score_at_or_above_flag_threshold", *reasons]
        )
    if score >= t.review:
        return AudioVerdict(
            score,
            "review",
            ["synthetic_speech_suspected", "speech_score_at_or_above_review_threshold", *reasons],
        )
    return AudioVerdict(score, "allow", ["speech_score_below_review_threshold", *reasons])


_SEVERITY: dict[Decision, int] = {"allow": 0, "review": 1, "flag": 2}


def overall(
    video: tuple[Decision, list[str]] | None, audio: tuple[Decision | None, list[str]] | None
) -> tuple[Decision, list[str]]:
    """The media's decision: the stricter of the faces' (None for audio-only media) and the speech's.

    Reasons keep the faces' reasons and add `synthetic_speech_suspected` when the speech was sent to review or
    flagged (first, when that is what decided); a track without a decision adds why (`no_speech_found`,
    `audio_error:<code>`).
    """
    if audio is None:
        if video is None:
            raise ValueError("media with neither frames nor an audio track has no decision")
        return video
    a_decision, a_reasons = audio
    if a_decision is None:
        note = a_reasons[:1]
        return (video[0], [*video[1], *note]) if video else ("allow", list(a_reasons))
    if video is None:
        return a_decision, list(a_reasons)
    v_decision, v_reasons = video
    suspected = ["synthetic_speech_suspected"] if a_decision != "allow" else []
    if _SEVERITY[a_decision] > _SEVERITY[v_decision]:
        return a_decision, [*suspected, *v_reasons]
    return v_decision, [*v_reasons, *suspected]
