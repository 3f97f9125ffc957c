"""`python -m training.fakes --split test`: the held-out evaluation media of one split.

For every face of the split: the real photo, Self-Blended versions, and cross-identity swaps whose source is
another person of the same split (so both identities are unseen in training), each as a still (PNG) and as
clips at both compression levels. `index.json` lists every item with its label, kind and the identity of the
person whose face is shown around the manipulation (the bootstrap resamples those). The `rendered` split
(computer-generated people) gets its originals only, as stills and clips of kind `rendered`: a slice to report
decisions on, neither real nor fake.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from training.blend import face_swap, self_blend
from training.clips import QUALITIES, animate, write_clip
from training.collect import load_faces
from training.data import LoadedFace, load_face

__all__ = ["make_eval_set"]


def _save_still(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(img[..., ::-1]))


def make_eval_set(root: Path, split: str, *, per_face: int = 3, seed: int = 1, clips: bool = True) -> Path:
    """Write `root/eval/<split>/` and its `index.json`; returns the index path."""
    faces: list[LoadedFace] = [load_face(root, r) for r in load_faces(root, split)]
    if len(faces) < 2:
        raise ValueError(f"split {split} needs at least two faces for swaps")
    out = root / "eval" / split
    items: list[dict[str, object]] = []
    rendered = all(f.record.kind == "rendered" for f in faces)
    for i, face in enumerate(faces):
        rng = np.random.default_rng((seed, i))
        others = [f for f in faces if f.record.identity != face.record.identity]
        variants: list[tuple[str, int, np.ndarray]] = []
        for _ in range(per_face):
            if rendered:
                variants.append(("rendered", 0, face.image))
                continue
            variants.append(("real", 0, face.image))
            variants.append(("sbi", 1, self_blend(face.image, face.landmarks, rng)[0]))
            src = others[int(rng.integers(len(others)))]
            variants.append(("swap", 1, face_swap(src.image, src.landmarks, face.image, face.landmarks)))
        step = 1 if rendered else 3
        for n, (kind, label, img) in enumerate(variants):
            stem = f"{face.record.id}-{kind}-{n // step}"
            base = {"kind": kind, "label": label, "identity": face.record.identity, "face": face.record.id}
            if kind not in ("real", "rendered") or n // step == 0:  # one still per original (repeats: equal)
                still = out / "stills" / f"{stem}.png"
                _save_still(img, still)
                items.append(
                    {**base, "media": "still", "quality": "png", "path": str(still.relative_to(root))}
                )
            if clips:
                frames = animate(img, np.random.default_rng((seed, i, n)))
                for q, crf in QUALITIES.items():
                    clip = write_clip(frames, out / "clips" / q / f"{stem}.mp4", crf)
                    items.append(
                        {**base, "media": "video", "quality": q, "path": str(clip.relative_to(root))}
                    )
    index = out / "index.json"
    index.write_text(json.dumps(items, indent=1) + "\n")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(".cache/training"))
    parser.add_argument("--split", default="test", choices=["train", "val", "test", "rendered"])
    parser.add_argument("--per-face", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    index = make_eval_set(args.root, args.split, per_face=args.per_face, seed=args.seed)
    items = json.loads(index.read_text())
    counts: dict[str, int] = {}
    for it in items:
        key = f"{it['kind']}/{it['quality']}"
        counts[key] = counts.get(key, 0) + 1
    print(json.dumps({"index": str(index), "items": len(items), "counts": counts}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
