"""The audio head: a class- and source-balanced logistic regression on AASIST-L's 160-d embedding, and its
export into the published graph's final layer.

A port of the research's `docs/research/audio/scripts/head_finetune/head.py` (`fit_lr`, `train_set`, the L2
selection) and `export_head.py`, kept operation for operation (the same dtypes, the same order of the training
rows) so that the same embeddings give the same head to the last bit and so the same model file.

The fit: embeddings standardised per dimension (in float32, as the research did), a bias column, Newton's
method (IRLS) on the weighted logistic loss with an L2 penalty on the weights (not the bias), at most 50 steps
or until no step moves a coefficient by 1e-8; the standardisation is then folded back so that the head reads
the raw embedding: score = e . W + c, the logit of p(synthetic).

The export writes [W/2; -W/2] and [c/2, -c/2] into `m.out_layer` (160 -> 2) of the published AASIST-L graph,
so its input, output and every other weight stay as published: logits = [synthetic, bona fide], llr = logit0 -
logit1 = e . W + c, and softmax(logits)[0] = sigmoid(e . W + c).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from service.evaluation import auc

__all__ = [
    "DOC_STRING",
    "L2_GRID",
    "L2_MARGIN",
    "OUT_BIAS",
    "OUT_WEIGHT",
    "Head",
    "balanced_weights",
    "clip_scores",
    "export_head",
    "fit_lr",
    "read_head",
    "select_l2",
    "sha256",
]

F64 = npt.NDArray[np.float64]
OUT_WEIGHT = "m.out_layer.weight"  # (2, 160) in the published graph: rows = [spoof, bona fide]
OUT_BIAS = "m.out_layer.bias"
L2_GRID = (100.0, 10.0, 1.0, 0.1)  # tried in this order (head.py)
L2_MARGIN = 0.005  # a smaller L2 replaces the current choice only if its calibration AUC is higher by more
# the research's export set this; kept so the file is the research's byte for byte
DOC_STRING = (
    "AASIST-L (clovaai/aasist, MIT, NAVER) encoder frozen; "
    "out_layer re-fitted (head-only) for dfguard issue 16 research"
)


@dataclass(frozen=True)
class Head:
    """score = embedding . W + c (the logit of p(synthetic)), fitted with penalty `l2`."""

    W: F64
    c: float
    l2: float

    def score(self, emb: npt.NDArray[Any]) -> F64:
        return np.asarray(emb @ self.W + self.c, dtype=np.float64)


def fit_lr(X: npt.NDArray[np.float32], y: F64, w: F64, l2: float = 1.0, it: int = 50) -> tuple[F64, float]:
    """Weighted L2-penalised logistic regression by IRLS on standardised X, folded back to raw X.

    Returns (W, c) with score = X @ W + c. X is standardised in its own dtype (float32 for embeddings), the
    Newton steps run in float64; the bias is not penalised; 1e-9 on the Hessian's diagonal keeps it
    invertible. Deterministic: no random draw anywhere."""
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Z = np.c_[(X - mu) / sd, np.ones(len(X))]
    b = np.zeros(Z.shape[1])
    reg = l2 * np.r_[np.ones(Z.shape[1] - 1), 0]
    for _ in range(it):
        p = 1 / (1 + np.exp(-np.clip(Z @ b, -30, 30)))
        g = Z.T @ (w * (p - y)) + reg * b
        H = (Z * (w * p * (1 - p))[:, None]).T @ Z + np.diag(reg + 1e-9)
        step = np.linalg.solve(H, g)
        b -= step
        if np.abs(step).max() < 1e-8:
            break
    W = b[:-1] / sd
    c = b[-1] - (mu / sd) @ b[:-1]
    return np.asarray(W, dtype=np.float64), float(c)


def balanced_weights(y: npt.NDArray[Any], groups: Sequence[str] | npt.NDArray[Any]) -> F64:
    """Row weights: each class weighs half, and within a class each source (group) an equal share of it;
    scaled so that they sum to the number of rows (the penalty's scale is then that of unweighted rows)."""
    y = np.asarray(y, dtype=float)
    grp = np.asarray(groups)
    w = np.zeros(len(y))
    for label in (0, 1):
        srcs = sorted(set(grp[y == label]))
        for s in srcs:
            m = (y == label) & (grp == s)
            w[m] = 0.5 / len(srcs) / m.sum()
    return np.asarray(w * len(y), dtype=np.float64)


def clip_scores(W: F64, c: float, embeddings: Sequence[npt.NDArray[np.float32]]) -> F64:
    """Per clip: the mean of the head's score over the clip's windows (how the product aggregates)."""
    return np.array([(e @ W + c).mean() for e in embeddings], dtype=np.float64)


def select_l2(
    X: npt.NDArray[np.float32],
    y: F64,
    w: F64,
    cal_embeddings: Sequence[npt.NDArray[np.float32]],
    cal_labels: Sequence[int],
    grid: Sequence[float] = L2_GRID,
    margin: float = L2_MARGIN,
) -> tuple[Head, list[dict[str, float]]]:
    """The research's model selection: fit at each L2 of `grid` in order (largest first) and score the
    calibration clips; a later (smaller) L2 is taken only if its calibration AUC beats the current choice's by
    more than `margin`. Returns the chosen head and the AUC of every L2 tried."""
    lab = np.asarray(cal_labels)
    tried: list[dict[str, float]] = []
    best: tuple[float, float] | None = None
    fits: dict[float, tuple[F64, float]] = {}
    for l2 in grid:
        W, c = fit_lr(X, y, w, l2=l2)
        fits[l2] = (W, c)
        s = clip_scores(W, c, cal_embeddings)
        a = auc(lab, s)
        tried.append({"l2": l2, "cal_auc": a})
        if best is None or a > best[0] + margin:
            best = (a, l2)
    assert best is not None
    W, c = fits[best[1]]
    return Head(W, c, best[1]), tried


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_head(
    published: Path, W: npt.NDArray[Any], c: float, out: Path, doc_string: str = DOC_STRING
) -> dict[str, Any]:
    """Write the head into the published graph's final layer and save it to `out` (checked by
    `onnx.checker`). W is stored in float32 as [W/2; -W/2], c as [c/2, -c/2]: logit0 - logit1 = e . W + c.
    Returns what was written (sha256 of both files, the head's float32 values' norms)."""
    import onnx
    from onnx import numpy_helper

    W32 = np.asarray(W).astype(np.float32)
    c = float(c)
    m = onnx.load(str(published))
    done = set()
    for init in m.graph.initializer:
        if init.name == OUT_WEIGHT:
            if tuple(init.dims) != (2, len(W32)):
                raise ValueError(f"{published}: {OUT_WEIGHT} is {tuple(init.dims)}, expected (2, {len(W32)})")
            init.CopyFrom(
                numpy_helper.from_array(np.stack([W32 / 2, -W32 / 2]).astype(np.float32), init.name)
            )
            done.add(init.name)
        if init.name == OUT_BIAS:
            init.CopyFrom(numpy_helper.from_array(np.array([c / 2, -c / 2], np.float32), init.name))
            done.add(init.name)
    if done != {OUT_WEIGHT, OUT_BIAS}:
        raise ValueError(f"{published} has no {sorted({OUT_WEIGHT, OUT_BIAS} - done)}: not AASIST-L?")
    m.doc_string = doc_string
    onnx.checker.check_model(m)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(out))
    return {
        "file": str(out),
        "sha256": sha256(out),
        "size": out.stat().st_size,
        "source": str(published),
        "source_sha256": sha256(published),
        "W_norm": float(np.linalg.norm(W32.astype(np.float64))),
        "c": float(np.float32(c)),
    }


def read_head(model: Path) -> tuple[F64, float]:
    """(W, c) of a model written by `export_head`: logit0 - logit1 = e . W + c, read back from out_layer."""
    import onnx
    from onnx import numpy_helper

    inits: Mapping[str, Any] = {
        t.name: numpy_helper.to_array(t) for t in onnx.load(str(model)).graph.initializer
    }
    wt, bias = np.asarray(inits[OUT_WEIGHT], np.float64), np.asarray(inits[OUT_BIAS], np.float64)
    return wt[0] - wt[1], float(bias[0] - bias[1])
