"""Choose what ships on validation figures: each candidate scored once, ensembles compared offline.

    python -m training.select score --model M.json --split val     # .cache/training/scores/<name>/val.json
    python -m training.select compare --model A.json B.json ... --split val [--json]

An ensemble's video score is the mean over its members of each member's own aggregate (`service.decision`),
computed from the same faces, so scoring every candidate alone once gives every subset's scores without
running the pipeline again. `compare` ranks single models and ensembles by validation video AUC on held-out
SBI fakes (CRF 23 and 35 clips pooled): the training fake, never the evaluation-only swaps, and never the test
split. The shipped ensemble is then calibrated (`training.calibrate`) and evaluated (`training.evaluate`) as
served, through the real pipeline.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any, get_args

import numpy as np

from service.config import Aggregation
from service.models import load_manifest
from training.evaluate import build_eval_pipeline, score_items
from training.metrics import auc

__all__ = ["compare", "score_model"]

DEFAULT_ROOT = Path(".cache/training")


def _cache(root: Path, name: str, split: str) -> Path:
    return root / "scores" / name / f"{split}.json"


def score_model(model: Path, root: Path, split: str, *, aggregation: str = "confident") -> Path:
    """Score the split's index with one model alone (its own pipeline) and cache the per-item scores."""
    manifest, _ = load_manifest(model)
    pipeline = build_eval_pipeline([model], 1, aggregation=aggregation)
    items = json.loads((root / "eval" / split / "index.json").read_text())
    scored = score_items(pipeline, root, items)
    out = _cache(root, manifest.name, split)
    out.parent.mkdir(parents=True, exist_ok=True)
    keep = ("path", "kind", "label", "quality", "media", "identity", "video_score", "no_face")
    out.write_text(json.dumps([{k: it[k] for k in keep} for it in scored]) + "\n")
    return out


def _sbi_auc(items: list[dict[str, Any]], scores: np.ndarray) -> float:
    chosen = [i for i, it in enumerate(items) if it["media"] == "video" and it["kind"] in ("real", "sbi")]
    return auc([items[i]["label"] for i in chosen], scores[chosen])


def compare(models: list[Path], root: Path, split: str, max_members: int = 3) -> list[dict[str, Any]]:
    """Every single model and every ensemble of up to `max_members`, best validation SBI video AUC first."""
    names = [load_manifest(m)[0].name for m in models]
    tables = {n: json.loads(_cache(root, n, split).read_text()) for n in names}
    items = tables[names[0]]
    for n in names[1:]:
        if [it["path"] for it in tables[n]] != [it["path"] for it in items]:
            raise ValueError(f"{n}: scored on a different index; rescore it")
    scores = {n: np.asarray([it["video_score"] for it in tables[n]], dtype=np.float64) for n in names}
    rows = []
    for k in range(1, min(max_members, len(names)) + 1):
        for combo in itertools.combinations(names, k):
            mean = np.mean([scores[n] for n in combo], axis=0)
            rows.append({"members": list(combo), "val_sbi_video_auc": round(_sbi_auc(items, mean), 4)})
    return sorted(rows, key=lambda r: -float(r["val_sbi_video_auc"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="score a split with one model and cache the scores")
    s.add_argument("--model", type=Path, required=True)
    s.add_argument("--split", default="val")
    s.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    s.add_argument("--aggregation", default="confident", choices=get_args(Aggregation))
    c = sub.add_parser("compare", help="rank models and ensembles by validation SBI video AUC")
    c.add_argument("--model", type=Path, nargs="+", required=True)
    c.add_argument("--split", default="val")
    c.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    c.add_argument("--max-members", type=int, default=3)
    c.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "score":
        print(
            json.dumps(
                {"scores": str(score_model(args.model, args.root, args.split, aggregation=args.aggregation))}
            )
        )
        return 0
    rows = compare(args.model, args.root, args.split, args.max_members)
    if args.json:
        sys.stdout.write(json.dumps(rows) + "\n")
    else:
        for r in rows:
            sys.stdout.write(f"{r['val_sbi_video_auc']:.4f}  {' + '.join(r['members'])}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
