"""`python -m training.evaluate --model M.json [--split test] --json`: the served model on held-out fakes.

Every item of `training.fakes`' index goes through the service's own `Pipeline` (decoder, detector, crops as
the manifest says, aggregation, thresholds), so the figures are those of the model as deployed. Frame level:
per frame the highest face score (SBI's protocol), pooled over frames; video level: the verdict score.
Each set pairs the fakes of one method (held-out SBI, cross-identity swaps) with the real clips of the same
compression level. Intervals are 95 % identity-level bootstrap intervals (`service.evaluation`, shared with
`dfguard models diff`).

`decisions` counts allow / review / flag at the thresholds the pipeline applies (an ensemble manifest's fitted
ones unless overridden) for every kind and quality, with Clopper-Pearson 95 % bounds on the rates that matter:
reals sent to review or flagged (false positives), fakes caught (review or flag) and flagged. `rendered` gives
the decision shares on computer-generated people (the `rendered` split, when its index exists).
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
from service.evaluation import Floats, accuracy_at, auc, bootstrap
from service.pipeline import Pipeline
from training.metrics import clopper_pearson, log_loss

__all__ = ["evaluate", "score_items"]

NO_FACE_SCORE = 0.5  # as in SBI's evaluation: an item without a detected face counts as undecided


def score_items(pipeline: Pipeline, root: Path, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each item with `video_score` (the verdict score), `decision`, and `frame_scores` (max over faces per
    frame)."""
    out = []
    for it in items:
        r = pipeline.score_file(root / it["path"])
        frames = [max(f.score for f in fr.faces) for fr in r.frames if fr.faces]
        score = NO_FACE_SCORE if r.score is None else r.score
        out.append(
            {
                **it,
                "video_score": score,
                "decision": r.decision,
                "frame_scores": frames or [NO_FACE_SCORE],
                "no_face": not frames,
            }
        )
    return out


def _rate(k: int, n: int) -> dict[str, Any]:
    lo, hi = clopper_pearson(k, n)
    return {"k": k, "n": n, "rate": round(k / n, 4) if n else None, "cp95": [round(lo, 4), round(hi, 4)]}


def decision_counts(scored: list[dict[str, Any]]) -> dict[str, Any]:
    """Per kind/quality: allow / review / flag counts and the rates with Clopper-Pearson 95 % bounds."""
    out: dict[str, Any] = {}
    for key in sorted({f"{it['kind']}/{it['quality']}" for it in scored}):
        kind, quality = key.split("/")
        rows = [it for it in scored if it["kind"] == kind and it["quality"] == quality]
        n = len(rows)
        counts = {d: sum(it["decision"] == d for it in rows) for d in ("allow", "review", "flag")}
        entry: dict[str, Any] = {"n": n, **counts}
        entry["review_or_flag"] = _rate(counts["review"] + counts["flag"], n)
        entry["flag_rate"] = _rate(counts["flag"], n)
        out[key] = entry
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


def build_eval_pipeline(models: list[Path], threads: int = 1, **overrides: Any) -> Pipeline:
    """The served pipeline for `models` (one ensemble manifest, or model manifests), decoding inline."""
    settings = Settings(model_paths=models, decode_isolation="inline", inference_threads=threads, **overrides)
    return build_pipeline(settings, batching=False)  # one caller: nothing to merge


def evaluate(
    models: list[Path],
    root: Path,
    split: str,
    *,
    reps: int = 1000,
    threads: int = 1,
    rendered_split: str | None = "rendered",
) -> dict[str, Any]:
    pipeline = build_eval_pipeline(models, threads)
    items = json.loads((root / "eval" / split / "index.json").read_text())
    scored = score_items(pipeline, root, items)
    th = pipeline.thresholds
    report: dict[str, Any] = {
        "models": [m.name for m in pipeline.models],
        "ensemble": pipeline.model_ref.model_dump(),
        "split": split,
        "thresholds": pipeline.used_thresholds.model_dump(),
        "aggregation": pipeline.policy.aggregation,
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
    report["decisions"] = decision_counts(scored)
    rendered_index = root / "eval" / str(rendered_split) / "index.json"
    if rendered_split and rendered_index.is_file():
        rendered = score_items(pipeline, root, json.loads(rendered_index.read_text()))
        report["rendered"] = {
            key.split("/")[1]: {
                "n": e["n"],
                **{d: round(e[d] / e["n"], 4) for d in ("allow", "review", "flag")},
                "review_or_flag": e["review_or_flag"],
            }
            for key, e in decision_counts(rendered).items()
        }
        report["rendered"]["identities"] = len({it["identity"] for it in rendered})
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
    th = report["thresholds"]
    lines.append(f"decisions at review {th['review']:.3f} / flag {th['flag']:.3f} ({th['source']})")
    lines.append(
        f"{'set':<14} {'n':>4} {'allow':>6} {'review':>6} {'flag':>6}  review+flag [CP 95%]    flag [CP 95%]"
    )
    for name, e in report["decisions"].items():
        rf, fl = e["review_or_flag"], e["flag_rate"]
        lines.append(
            f"{name:<14} {e['n']:>4} {e['allow']:>6} {e['review']:>6} {e['flag']:>6}  "
            f"{rf['rate']:.3f} [{rf['cp95'][0]:.3f}, {rf['cp95'][1]:.3f}]   "
            f"{fl['rate']:.3f} [{fl['cp95'][0]:.3f}, {fl['cp95'][1]:.3f}]"
        )
    for quality, e in report.get("rendered", {}).items():
        if isinstance(e, dict):
            lines.append(
                f"rendered/{quality:<5} {e['n']:>4} "
                f"allow {e['allow']:.2f} review {e['review']:.2f} flag {e['flag']:.2f}"
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
    parser.add_argument(
        "--rendered-split", default="rendered", help="decision shares on this split too ('' to skip)"
    )
    args = parser.parse_args(argv)
    report = evaluate(
        args.model,
        args.root,
        args.split,
        reps=args.reps,
        threads=args.threads,
        rendered_split=args.rendered_split or None,
    )
    sys.stdout.write((json.dumps(report) if args.json else _table(report)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
