"""`service.evaluation`: AUC against the pair-counting definition, log loss against known values, the decision
confusion matrix. Oracles are written out here; scikit-learn is not needed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from service.evaluation import DFDC_EPS, accuracy_at, auc, bootstrap, confusion, decision_counts, log_loss

# Scores from a small grid so that ties (between and within classes) are common.
_samples = st.lists(
    st.tuples(st.integers(0, 1), st.integers(0, 8).map(lambda k: k / 8)), min_size=0, max_size=60
)


def _pairwise_auc(labels: list[int], scores: list[float]) -> float:
    pos = [s for y, s in zip(labels, scores, strict=True) if y == 1]
    neg = [s for y, s in zip(labels, scores, strict=True) if y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@given(_samples)
@example([(1, 0.5), (0, 0.5)])  # one tied pair: exactly a coin toss
@example([(1, 1.0), (1, 0.0), (0, 0.5)])
def test_auc_is_the_share_of_correctly_ordered_pairs(samples: list[tuple[int, float]]) -> None:
    labels, scores = [y for y, _ in samples], [s for _, s in samples]
    got = auc(labels, scores)
    if len(set(labels)) < 2:
        assert math.isnan(got)
    else:
        assert got == pytest.approx(_pairwise_auc(labels, scores), abs=1e-12)


@given(_samples)
def test_auc_is_symmetric_under_label_and_score_flip(samples: list[tuple[int, float]]) -> None:
    labels, scores = [y for y, _ in samples], [s for _, s in samples]
    if len(set(labels)) == 2:
        flipped = auc([1 - y for y in labels], [1 - s for s in scores])
        assert flipped == pytest.approx(auc(labels, scores), abs=1e-12)


def test_auc_known_values() -> None:
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert auc([0, 1, 0, 1], [0.1, 0.3, 0.35, 0.8]) == 0.75
    assert auc([0, 1], [0.5, 0.5]) == 0.5
    assert math.isnan(auc([1, 1], [0.2, 0.3])) and math.isnan(auc([], []))


def test_log_loss_known_values() -> None:
    assert log_loss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert log_loss([1], [0.9]) == pytest.approx(-math.log(0.9))
    assert log_loss([0, 1], [0.2, 0.6]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    # DFDC clipping: a confident mistake costs -log(1e-15), about 34.54 nats, not infinity.
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(DFDC_EPS))
    assert log_loss([0], [1.0]) == pytest.approx(-math.log(DFDC_EPS), abs=1e-3)  # 1 - eps rounds
    assert log_loss([1], [0.0], eps=1e-7) == pytest.approx(-math.log(1e-7))
    assert log_loss([1, 0], [1.0, 0.0]) == pytest.approx(-math.log(1 - DFDC_EPS), abs=1e-12)
    assert math.isnan(log_loss([], []))


@given(st.lists(st.tuples(st.integers(0, 1), st.floats(0, 1)), min_size=1, max_size=30))
def test_log_loss_is_finite_and_at_least_that_of_the_truth(samples: list[tuple[int, float]]) -> None:
    labels, scores = [y for y, _ in samples], [s for _, s in samples]
    got = log_loss(labels, scores)
    assert 0.0 <= got <= -math.log(DFDC_EPS) + 1e-2  # 1 - eps rounds in float64
    assert got >= log_loss(labels, [float(y) for y in labels])


def test_accuracy_and_bootstrap() -> None:
    assert accuracy_at([1, 0, 1], [0.9, 0.6, 0.4], 0.5) == pytest.approx(1 / 3)
    groups = [f"id{i // 4}" for i in range(40)]
    v, lo, hi = bootstrap(lambda a, b: auc(a, b), [0, 1] * 20, [0.2, 0.8] * 20, groups, reps=100)
    assert v == lo == hi == 1.0
    v, lo, hi = bootstrap(lambda a, b: float(np.mean(b)), [0, 1] * 20, np.arange(40.0), groups, reps=200)
    assert lo < v < hi


def test_confusion_rows_are_the_reference_columns_the_candidate() -> None:
    pairs = [
        ("allow", "allow"),
        ("allow", "review"),
        ("allow", "review"),
        ("flag", "allow"),
        ("review", "flag"),
    ]
    assert confusion(pairs) == [[1, 2, 0], [0, 0, 1], [1, 0, 0]]
    assert confusion([]) == [[0, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert decision_counts(["flag", "allow", "flag"]) == {"allow": 1, "review": 0, "flag": 2}
    with pytest.raises(ValueError, match="unknown decision 'block'"):
        confusion([("allow", "block")])
