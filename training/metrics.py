"""Binary classification figures with 95 % bootstrap intervals, resampling whole identities.

Clips and crops of one person are not independent, and the test split holds few people, so the intervals come
from a cluster bootstrap: each replicate draws identities with replacement and keeps all of their samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["accuracy_at", "auc", "bootstrap", "clopper_pearson", "log_loss"]

Floats = npt.NDArray[np.float64]


def auc(labels: Sequence[int] | Floats, scores: Sequence[float] | Floats) -> float:
    """ROC AUC by the Mann-Whitney statistic (ties count half); nan when a class is missing."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order), dtype=np.float64)
    allv = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(allv):  # average ranks over ties
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def log_loss(labels: Sequence[int] | Floats, scores: Sequence[float] | Floats, eps: float = 1e-7) -> float:
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(scores, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def accuracy_at(labels: Sequence[int] | Floats, scores: Sequence[float] | Floats, threshold: float) -> float:
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
    """(value, low, high): the metric and its 95 % percentile interval over identity-resampled replicates."""
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


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided 1 - alpha interval of a binomial rate k / n: conservative, and right
    at 0 of n, where the normal approximation claims a zero-width interval. Treats the n trials as
    independent (clips of one person are not quite: the identity bootstrap is the other view)."""
    from scipy.stats import beta

    if n == 0:
        return float("nan"), float("nan")
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi
