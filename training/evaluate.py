"""`python -m training.evaluate --model M.json [--split test] --json`: the served model on held-out fakes.

Every item of `training.fakes`' index goes through the service's own `Pipeline` (decoder, detector, crops as
the manifest says, aggregation, thresholds), so the figures are those of the model as deployed. Frame level:
per frame the highest face score (SBI's protocol), pooled over frames; video level: the verdict score.
Each set pairs the fakes of one method (held-out SBI, cross-identity swaps) with the real clips of the same
compression level. Intervals are 95 % identity-level bootstrap intervals (`training.metrics`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from service.compose import build_pipeline
from service.config import Settings
from service.pipeline import Pipeline
from training.metrics import Floats, accuracy_at, auc, bootstrap, log_loss

__all__ = ["evaluate", "score_items"]

NO_FACE_SCORE = 0.5  # as in SBI's evaluation: an item without a detected face counts as undecided


def score_items(pipeline: Pipeline, root: Path, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each item with `video_score` (the verdict score) and `frame_scores` (max over faces per frame)."""
    out = []
    for it in items:
        r = pipeline.score_file(root / it["path"])
        frames = [max(f.score for f in fr.faces) for fr in r.frames if fr.faces]
        score = NO_FACE_SCORE if r.score is None else r.score
        out.append(
            {**it, "video_score": score, "frame_scores": frames or [NO_FACE_SCORE], "no_face": not frames}
        )
    return out


def _figures(
    labels: list[int], scores: list[float], groups: list[str], review: float, flag: float, reps: int
) -> dict[str, Any]:
    metrics: dict[str, Callable[[Floats, Floats], float]] = {
        "auc": lambda y, s: auc(y, s),
        "log_loss": lambda y, s: log_loss(y, s),
        "accuracy_at_review": lambda y, s: accuracy_at(y, s, review),
        "accuracy_at_flag": lambda y, s: accuracy_at(y, s, flag),
    }
    res: dict[str, Any] = {"n": len(labels), "n_fake": int(sum(labels)), "identities": len(set(groups))}
    for name, fn in metrics.items():
        v, lo, hi = bootstrap(fn, labels, scores, groups, reps=reps)
        res[name] = {"value": round(v, 4), "ci95": [round(lo, 4), round(hi, 4)]}
    return res


def evaluate(
    models: list[Path], root: Path, split: str, *, reps: int = 1000, threads: int = 1
) -> dict[str, Any]:
    settings = Settings(model_paths=models, decode_isolation="inline", inference_threads=threads)
    pipeline = build_pipeline(settings, batching=False)  # one caller: nothing to merge
    items = json.loads((root / "eval" / split / "index.json").read_text())
    scored = score_items(pipeline, root, items)
    th = pipeline.thresholds
    report: dict[str, Any] = {
        "models": [m.name for m in pipeline.models],
        "split": split,
        "thresholds": {"review": th.review, "flag": th.flag},
        "aggregation": settings.aggregation,
        "items": len(scored),
        "no_face_items": sum(it["no_face"] for it in scored),
        "sets": {},
    }
    for kind in ("sbi", "swap"):
        for quality in ("png", "c23", "c35"):
            chosen = [it for it in scored if it["quality"] == quality and it["kind"] in ("real", kind)]
            if not chosen:
                continue
            entry: dict[str, Any] = {}
            fl = [(it["label"], s, it["identity"]) for it in chosen for s in it["frame_scores"]]
            entry["frame"] = _figures(
                [a for a, _, _ in fl], [b for _, b, _ in fl], [c for _, _, c in fl], th.review, th.flag, reps
            )
            if quality != "png":
                entry["video"] = _figures(
                    [it["label"] for it in chosen],
                    [it["video_score"] for it in chosen],
                    [it["identity"] for it in chosen],
                    th.review,
                    th.flag,
                    reps,
                )
            report["sets"][f"{kind}/{quality}"] = entry
    for quality in ("png", "c23", "c35"):
        reals = [it["video_score"] for it in scored if it["kind"] == "real" and it["quality"] == quality]
        if reals:
            report.setdefault("real", {})[quality] = {
                "n": len(reals),
                "mean_score": round(float(np.mean(reals)), 4),
                "share_at_or_above_review": round(float(np.mean(np.asarray(reals) >= th.review)), 4),
                "share_at_or_above_flag": round(float(np.mean(np.asarray(reals) >= th.flag)), 4),
            }
    return report


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"models {'+'.join(report['models'])} on split {report['split']} ({report['items']} items)",
        f"{'set':<10} {'level':<6} {'n':>4} {'AUC [95% CI]':<24} {'log loss [95% CI]':<24} acc@review",
    ]
    for name, entry in report["sets"].items():
        for level, f in entry.items():
            a, ll, acc = f["auc"], f["log_loss"], f["accuracy_at_review"]
            lines.append(
                f"{name:<10} {level:<6} {f['n']:>4} "
                f"{a['value']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}]{'':<4} "
                f"{ll['value']:.3f} [{ll['ci95'][0]:.3f}, {ll['ci95'][1]:.3f}]{'':<4} {acc['value']:.3f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, nargs="+", required=True, help="manifest(s): one, or an ensemble"
    )
    parser.add_argument("--root", type=Path, default=Path(".cache/training"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--reps", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    report = evaluate(args.model, args.root, args.split, reps=args.reps, threads=args.threads)
    sys.stdout.write((json.dumps(report) if args.json else _table(report)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
