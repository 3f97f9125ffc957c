"""`python -m training.calibrate --model A.json [B.json ...] --out DIR/ensemble.json`: the ensemble manifest.

The served unit is the ensemble (members + aggregation), so its thresholds are fitted on its own video scores:
every item of the validation split's evaluation index (`training.fakes --split val`: held-out identities,
never the test split) goes through the service's pipeline with exactly these members and this aggregation.

* review = the 95th percentile of the validation reals' video scores: about 5 % of real uploads like these go
  to a person, the budget a moderation queue can absorb.
* flag = above the highest validation-real score by `flag_margin` in logit units: a flag acts without a
  person, so no validation real may reach it, and a margin covers the next unseen identity scoring a little
  higher than the few seen here (see `fit_thresholds`).

Validation SBI fakes give the ensemble's validation AUC (recorded in the manifest's description), so members,
aggregation and ensembles are compared on validation figures only.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, get_args

import numpy as np

from service.config import Aggregation
from service.models import EnsembleManifest
from service.models.manifest import EnsembleThresholds
from training.evaluate import build_eval_pipeline, score_items
from training.metrics import auc

__all__ = ["calibrate", "fit_thresholds"]

REVIEW_QUANTILE = 0.95
# The highest validation-real logit is raised by this much for the flag threshold. A logit step of 1.0 is a
# factor e on the odds: measured on the validation reals (see the model card), it is more than the spread
# between the highest and the 95th-percentile real score, so a new identity has to sit well outside what
# validation showed to be flagged without review.
FLAG_MARGIN_LOGIT = 1.0


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))


def _sigmoid(x: float) -> float:
    return float(1 / (1 + np.exp(-x)))


def fit_thresholds(real_scores: list[float], flag_margin: float = FLAG_MARGIN_LOGIT) -> tuple[float, float]:
    """(review, flag) from validation-real video scores: review at their 95th percentile, flag above their
    maximum by `flag_margin` logits (at most 0.999: a flag must remain reachable)."""
    if len(real_scores) < 20:
        raise ValueError(f"{len(real_scores)} validation reals: too few to fit a 95th percentile")
    arr = np.asarray(real_scores, dtype=np.float64)
    review = float(np.quantile(arr, REVIEW_QUANTILE, method="higher"))
    flag = min(0.999, _sigmoid(_logit(float(arr.max())) + flag_margin))
    return round(review, 4), round(max(flag, review), 4)


def calibrate(
    models: list[Path],
    out: Path,
    *,
    name: str,
    version: str,
    aggregation: Aggregation,
    root: Path,
    split: str = "val",
    flag_margin: float = FLAG_MARGIN_LOGIT,
    threads: int = 1,
) -> dict[str, Any]:
    """Score the split's index with the ensemble, fit its thresholds and write `out` (members relative)."""
    pipeline = build_eval_pipeline(models, threads, aggregation=aggregation)
    items = json.loads((root / "eval" / split / "index.json").read_text())
    scored = score_items(pipeline, root, items)
    reals = [it["video_score"] for it in scored if it["kind"] == "real"]
    review, flag = fit_thresholds(reals, flag_margin)
    sbi = [it for it in scored if it["kind"] in ("real", "sbi") and it["media"] == "video"]
    val_auc = auc([it["label"] for it in sbi], [it["video_score"] for it in sbi])
    members = [os.path.relpath(Path(m).resolve(), out.parent.resolve()) for m in models]
    manifest = EnsembleManifest(
        kind="ensemble",
        name=name,
        version=version,
        members=members,
        aggregation=aggregation,
        thresholds=EnsembleThresholds(
            review=review,
            flag=flag,
            method=f"review: {REVIEW_QUANTILE:.0%} quantile of validation-real video scores; flag: their "
            f"maximum + {flag_margin} logit",
            fitted_on=f"{len(reals)} real items (stills and CRF 23/35 clips) of the '{split}' split's "
            f"{len({it['identity'] for it in scored if it['kind'] == 'real'})} held-out identities",
        ),
        description=f"{' + '.join(m.name for m in pipeline.models)}, aggregation {aggregation}; validation "
        f"video AUC on held-out SBI {val_auc:.3f}.",
        licence="; ".join(sorted({m.licence for m in pipeline.models if m.licence})),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(manifest.model_dump_json(indent=2, exclude_none=True) + "\n")
    reals_arr = np.asarray(reals)
    return {
        "manifest": str(out),
        "thresholds": {"review": review, "flag": flag},
        "val_sbi_video_auc": round(val_auc, 4),
        "val_reals": len(reals),
        "val_real_max": round(float(reals_arr.max()), 4),
        "val_real_p95": round(float(np.quantile(reals_arr, REVIEW_QUANTILE)), 4),
        "val_real_median": round(float(np.median(reals_arr)), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, nargs="+", required=True, help="member manifests")
    parser.add_argument("--out", type=Path, required=True, help="the ensemble manifest to write")
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--aggregation", default="confident", choices=get_args(Aggregation))
    parser.add_argument("--root", type=Path, default=Path(".cache/training"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--flag-margin", type=float, default=FLAG_MARGIN_LOGIT, help="logit units")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    summary = calibrate(
        args.model,
        args.out,
        name=args.name,
        version=args.version,
        aggregation=args.aggregation,
        root=args.root,
        split=args.split,
        flag_margin=args.flag_margin,
        threads=args.threads,
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
