"""Figures of the audio evaluation: AUC with a stratified cluster bootstrap, decision counts, exact bounds.

The AUC is `service.evaluation.auc` (Mann-Whitney, ties half). Its interval resamples clusters (speakers,
synthetic voices, LJ utterances) with replacement *within each class*, as the research did: the test split has
few clusters per class (about 24 real, 20 synthetic), and `service.evaluation.bootstrap`, which draws clusters
from both classes together, would let the class balance wander between replicates. Rates carry Clopper-Pearson
95 % bounds (`training.metrics.clopper_pearson`), which treat clips as independent: the cluster bootstrap is
the other view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.evaluation import auc
from training.metrics import clopper_pearson

__all__ = ["DECISION_KEYS", "AucInterval", "cluster_bootstrap_auc", "decision_shares", "rate"]

DECISION_KEYS = ("allow", "review", "flag", "none")  # "none": the audio stage gave no decision (no speech)


@dataclass(frozen=True)
class AucInterval:
    value: float
    low: float
    high: float
    real_clusters: int
    fake_clusters: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "value": round(self.value, 4),
            "ci95": [round(self.low, 4), round(self.high, 4)],
            "real_clusters": self.real_clusters,
            "fake_clusters": self.fake_clusters,
        }


def cluster_bootstrap_auc(
    labels: Sequence[int],
    scores: Sequence[float],
    clusters: Sequence[str],
    *,
    reps: int = 1000,
    seed: int = 0,
) -> AucInterval:
    """AUC of `scores` (higher = synthetic) and its 2.5 / 97.5 percentile interval over `reps` replicates,
    each drawing as many clusters as each class has, with replacement, from that class's clusters."""
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    members: dict[tuple[int, str], list[int]] = {}
    for i, (label, c) in enumerate(zip(y.astype(int).tolist(), clusters, strict=True)):
        members.setdefault((label, c), []).append(i)
    by_class = [[np.asarray(v) for (label, _), v in members.items() if label == k] for k in (0, 1)]
    point = auc(y, s)
    if not by_class[0] or not by_class[1]:
        return AucInterval(point, float("nan"), float("nan"), len(by_class[0]), len(by_class[1]))
    rng = np.random.default_rng(seed)
    values = np.empty(reps)
    for r in range(reps):
        idx = np.concatenate([g[j] for g in by_class for j in rng.integers(0, len(g), len(g))])
        values[r] = auc(y[idx], s[idx])
    lo, hi = np.percentile(values, [2.5, 97.5])
    return AucInterval(point, float(lo), float(hi), len(by_class[0]), len(by_class[1]))


def rate(k: int, n: int) -> dict[str, Any]:
    """k of n with its share and Clopper-Pearson 95 % bounds (null share and bounds when n = 0)."""
    if n == 0:
        return {"k": k, "n": n, "share": None, "cp95": None}
    lo, hi = clopper_pearson(k, n)
    return {"k": k, "n": n, "share": round(k / n, 4), "cp95": [round(lo, 4), round(hi, 4)]}


def decision_shares(decisions: Sequence[str | None]) -> dict[str, Any]:
    """Counts of allow / review / flag / none, and three rates: `review` (decision review), `flag`, and
    `review_or_flag` (at or above the review threshold: for real clips the false positives, for synthetic
    ones the caught)."""
    counts = dict.fromkeys(DECISION_KEYS, 0)
    for d in decisions:
        counts[d if d in counts else "none"] += 1
    n = len(decisions)
    return {
        "n": n,
        "counts": counts,
        "review": rate(counts["review"], n),
        "flag": rate(counts["flag"], n),
        "review_or_flag": rate(counts["review"] + counts["flag"], n),
    }
