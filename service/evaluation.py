"""Figures for comparing detectors: ROC AUC, log loss, bootstrap intervals, decision confusion matrices.

One implementation for `training.evaluate` (held-out fakes) and `dfguard models diff` (the store's shadow
results, or a team's own labelled folder). It lives in the service package and needs only numpy, so an
operator can compare models in a serving image without PyTorch or scikit-learn.

Decisions taken here:
- AUC is the Mann-Whitney statistic: the share of (fake, real) pairs the scores order correctly, a tie
  counting half (what scikit-learn's `roc_auc_score` gives). With one class absent it is undefined: `nan`.
- Log loss clips probabilities to [eps, 1 - eps] with eps = 1e-15 by default, the DFDC's scoring rule, so one
  confident mistake costs about 34.5 nats instead of infinity.
- A confusion matrix over decisions is 3 x 3, rows the reference (primary) decision and columns the
  candidate's, in `DECISIONS` order (allow, review, flag).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import numpy.typing as npt

from service.schemas import Decision

__all__ = [
    "DECISIONS",
    "DFDC_EPS",
    "Floats",
    "accuracy_at",
    "auc",
    "bootstrap",
    "confusion",
    "decision_counts",
    "log_loss",
]

Floats = npt.NDArray[np.float64]
DECISIONS: tuple[Decision, ...] = ("allow", "review", "flag")
DFDC_EPS = 1e-15  # the Deepfake Detection Challenge's clipping of submitted probabilities


def _average_ranks(values: Floats) -> Floats:
    """1-based ranks, tied values sharing the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of the last member of each distinct value
    mean_rank = last - (counts - 1) / 2.0
    return np.asarray(mean_rank[inverse.reshape(-1)], dtype=np.float64)


def auc(labels: Sequence[int] | Floats, scores: Sequence[float] | Floats) -> float:
    """ROC AUC by the Mann-Whitney statistic (ties count half); nan when a class is missing."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(np.sum(y == 1)), int(np.sum(y == 0))
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r_pos = float(_average_ranks(s)[y == 1].sum())
    return (r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def log_loss(
    labels: Sequence[int] | Floats, scores: Sequence[float] | Floats, eps: float = DFDC_EPS
) -> float:
    """Mean binary cross-entropy (nats) of fake-probabilities `scores`, clipped to [eps, 1 - eps]; nan on no
    samples."""
    y = np.asarray(labels, dtype=np.float64)
    if y.size == 0:
        return float("nan")
    p = np.clip(np.asarray(scores, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def accuracy_at(labels: Sequence[int] | Floats, scores: Sequence[float] | Floats, threshold: float) -> float:
    """Share of samples on the right side of `threshold` (at or above: called fake)."""
    y = np.asarray(labels, dtype=np.int64)
    return float(np.mean((np.asarray(scores) >= threshold).astype(np.int64) == y))


def bootstrap(
    metric: Callable[[Floats, Floats], float],
    labels: Sequence[int] | Floats,
    scores: Sequence[float] | Floats,
    groups: Sequence[str],
    *,
    reps: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(value, low, high): the metric and its 95 % percentile interval over group-resampled replicates.

    Samples of one group (a person) are not independent, so each replicate draws whole groups with
    replacement (a cluster bootstrap); replicates where the metric is undefined (nan) are dropped.
    """
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(groups)
    names = np.unique(g)
    members = [np.flatnonzero(g == n) for n in names]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(reps):
        idx = np.concatenate([members[k] for k in rng.integers(0, len(names), len(names))])
        v = metric(y[idx], s[idx])
        if not np.isnan(v):
            values.append(v)
    point = metric(y, s)
    if not values:
        return point, float("nan"), float("nan")
    lo, hi = np.percentile(values, [2.5, 97.5])
    return point, float(lo), float(hi)


def decision_counts(decisions: Iterable[str]) -> dict[Decision, int]:
    """How many of each decision, every decision present (zero when unseen)."""
    out: dict[Decision, int] = dict.fromkeys(DECISIONS, 0)
    for d in decisions:
        out[_decision(d)] += 1
    return out


def confusion(pairs: Iterable[tuple[str, str]], counts: Iterable[int] | None = None) -> list[list[int]]:
    """3 x 3 counts of (reference, candidate) decision pairs: row = reference, column = candidate.

    `counts`, parallel to `pairs`, weighs each pair (a `GROUP BY` result); default: one each.
    """
    matrix = [[0] * len(DECISIONS) for _ in DECISIONS]
    weights = iter(counts) if counts is not None else None
    for ref, cand in pairs:
        k = 1 if weights is None else next(weights)
        matrix[DECISIONS.index(_decision(ref))][DECISIONS.index(_decision(cand))] += k
    return matrix


_BY_NAME: dict[str, Decision] = {d: d for d in DECISIONS}


def _decision(d: str) -> Decision:
    try:
        return _BY_NAME[d]
    except KeyError:
        raise ValueError(f"unknown decision {d!r} (expected one of {', '.join(DECISIONS)})") from None
