"""Binary classification figures for training: `service.evaluation`'s, plus exact binomial bounds.

AUC, log loss, accuracy and the identity-level bootstrap live in `service.evaluation`, shared with `dfguard
models diff`. Two things stay here: `clopper_pearson`, which needs SciPy (the `training` extra, never in
serving images), and training's log-loss clipping of 1e-7, kept so the figures of earlier reports and model
cards stay comparable (the service's default is the DFDC's 1e-15; they differ only for scores within 1e-7 of
0 or 1).
"""

from __future__ import annotations

from collections.abc import Sequence

from service.evaluation import Floats, accuracy_at, auc, bootstrap
from service.evaluation import log_loss as _log_loss

__all__ = ["Floats", "accuracy_at", "auc", "bootstrap", "clopper_pearson", "log_loss"]

TRAINING_LOG_LOSS_EPS = 1e-7


def log_loss(
    labels: Sequence[int] | Floats, scores: Sequence[float] | Floats, eps: float = TRAINING_LOG_LOSS_EPS
) -> float:
    """`service.evaluation.log_loss` with training's clipping (see the module docstring)."""
    return _log_loss(labels, scores, eps)


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
