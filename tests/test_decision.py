"""Aggregation strategies and thresholds, with the DFDC winner's `confident_strategy` as the oracle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.decision import Thresholds, aggregate, decide


def _reference_confident_strategy(pred: np.ndarray, t: float = 0.8) -> float:
    """selimsef/dfdc_deepfake_challenge kernel_utils.py 264-274, verbatim logic."""
    pred = np.array(pred)
    sz = len(pred)
    fakes = np.count_nonzero(pred > t)
    if fakes > sz // 2.5 and fakes > 11:
        return float(np.mean(pred[pred > t]))
    elif np.count_nonzero(pred < 0.2) > 0.9 * sz:
        return float(np.mean(pred[pred < 0.2]))
    else:
        return float(np.mean(pred))


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=128))
def test_confident_matches_reference(scores: list[float]) -> None:
    frames = list(range(len(scores)))
    got = aggregate({"m": scores}, frames, "confident")
    assert got == pytest.approx(_reference_confident_strategy(np.array(scores)), abs=1e-12)


def test_confident_branches() -> None:
    frames = list(range(32))
    fakes = [0.95] * 14 + [0.1] * 18  # 14 > 11 and 14 > 32 // 2.5 = 12
    assert aggregate({"m": fakes}, frames, "confident") == pytest.approx(0.95)
    reals = [0.05] * 30 + [0.9] * 2  # 30 > 0.9 * 32
    assert aggregate({"m": reals}, frames, "confident") == pytest.approx(0.05)
    mixed = [0.9] * 10 + [0.1] * 22
    assert aggregate({"m": mixed}, frames, "confident") == pytest.approx(np.mean(mixed))


def test_max_face_mean_frames_takes_the_worst_face_per_frame() -> None:
    # two faces on frame 0, one on frame 1
    got = aggregate({"m": [0.2, 0.9, 0.4]}, [0, 0, 1], "max_face_mean_frames")
    assert got == pytest.approx((0.9 + 0.4) / 2)
    assert aggregate({"m": [0.2, 0.9, 0.4]}, [0, 0, 1], "mean") == pytest.approx(0.5)


def test_ensemble_is_the_mean_of_per_model_aggregates() -> None:
    frames = list(range(20))
    a = [0.9] * 20
    b = [0.1] * 20
    assert aggregate({"a": a, "b": b}, frames, "confident") == pytest.approx((0.9 + 0.1) / 2)


def test_no_crops_means_no_score() -> None:
    assert aggregate({"m": []}, [], "confident") is None
    v = decide(None, Thresholds())
    assert (v.score, v.decision, v.reasons) == (None, "allow", ["no_face_found"])


@pytest.mark.parametrize(
    ("score", "decision", "reason"),
    [
        (0.0, "allow", "score_below_review_threshold"),
        (0.4999, "allow", "score_below_review_threshold"),
        (0.5, "review", "score_at_or_above_review_threshold"),
        (0.7999, "review", "score_at_or_above_review_threshold"),
        (0.8, "flag", "score_at_or_above_flag_threshold"),
        (1.0, "flag", "score_at_or_above_flag_threshold"),
    ],
)
def test_thresholds(score: float, decision: str, reason: str) -> None:
    v = decide(score, Thresholds(0.5, 0.8), ["partially_decoded"])
    assert v.decision == decision
    assert v.reasons == [reason, "partially_decoded"]
