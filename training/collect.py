"""Collect real faces from packaged photos into an identity-disjoint train / val / test set.

`python -m training.collect [--out DIR]` fetches the sources (`training.sources`), finds faces with the
service's own detector (so training sees the boxes serving will see), keeps clear ones (score >= 0.9, shorter
side >= 40 px, a face-like landmark layout) and writes each face with generous context as a PNG plus
`faces.json`: source, package, licence, box and the 5 landmarks of every face.

Identity: no package labels who is pictured, so a photo is the unit of splitting. Every face of one photo
goes to the same split, and photos known to show the same person (`SAME_PERSON_PREFIXES`) are merged. That
cannot rule out the same person in two unrelated photos; the test split is small, which is why evaluation
reports bootstrap intervals.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from service.faces import RetinaFaceDetector
from training.sources import SOURCES, Source, iter_photos

__all__ = ["FaceRecord", "collect", "load_faces"]

DEFAULT_DIR = Path(".cache/training")
MIN_SCORE = 0.9
MIN_SIDE_PX = 40
CONTEXT = 0.8  # fraction of the face box kept around it on each side in the saved face image
SPLIT_SHARES = {"test": 0.3, "val": 0.12}  # the rest is train; shares of faces, by whole identity groups
# Detector hits that are no face: OpenCV's sheet of handwritten digits, and a chessboard corner in left03.jpg.
NOT_PHOTOS = {"digits.png", "left03.jpg"}
# OpenCV's stereo-calibration shots (left*.jpg, right*.jpg) all show the same person.
SAME_PERSON_PREFIXES: dict[str, str] = {
    "opencv-doc:usr/share/doc/opencv-doc/examples/data/left": "opencv-doc:calibration-person",
    "opencv-doc:usr/share/doc/opencv-doc/examples/data/right": "opencv-doc:calibration-person",
}


@dataclass(frozen=True)
class FaceRecord:
    """One real face: its image file (face with context), where it came from, and where the face is in it."""

    id: str
    file: str
    source: str
    package: str
    member: str
    licence: str
    identity: str  # the person: one per face, except faces known to be the same person
    group: str  # the unit of splitting: the photo (or merged photos of one person)
    split: str
    box: tuple[float, float, float, float]  # in the saved image, pixels
    landmarks: list[tuple[float, float]]  # eyes, nose, mouth corners, in the saved image


def _group(source: str, member: str) -> str:
    key = f"{source}:{member}"
    for prefix, person in SAME_PERSON_PREFIXES.items():
        if key.startswith(prefix):
            return person
    return key


def _plausible(box: tuple[float, float, float, float], lm: npt.NDArray[np.float32]) -> bool:
    """A face-shaped landmark layout: eyes level-ish and apart, nose below the eyes, mouth below the nose.

    Rejects detector hits on textures (OpenCV's digits sheet) that pass the score threshold.
    """
    x1, y1, x2, y2 = box
    w = x2 - x1
    (lx, ly), (rx, ry), (nx, ny), (_, mly), (_, mry) = lm.tolist()
    eye_dist = float(np.hypot(rx - lx, ry - ly))
    return (
        0.25 * w < eye_dist < 0.75 * w
        and abs(ry - ly) < 0.5 * eye_dist
        and ny > min(ly, ry)
        and (mly + mry) / 2 > ny
        and x1 <= nx <= x2
        and y1 <= ny <= y2
    )


def _assign_splits(
    identities: dict[str, int], seed: int, shares: dict[str, float] | None = None
) -> dict[str, str]:
    """Whole groups (photos) to splits, filling test, then val, to their share of faces (seeded order)."""
    order = sorted(identities, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    total = sum(identities.values())
    out: dict[str, str] = {}
    shares = SPLIT_SHARES if shares is None else shares
    filled = dict.fromkeys(shares, 0)
    for ident in order:
        for split, share in shares.items():
            if filled[split] < share * total:
                out[ident] = split
                filled[split] += identities[ident]
                break
        else:
            out[ident] = "train"
    return out


def collect(
    out: Path, seed: int = 0, *, sources: Sequence[Source] = SOURCES, shares: dict[str, float] | None = None
) -> list[FaceRecord]:
    """Fetch, detect, crop with context and split; writes `out/faces/*.png` and `out/faces.json`."""
    detector = RetinaFaceDetector(threshold=MIN_SCORE, max_faces=32, threads=2)
    faces_dir = out / "faces"
    faces_dir.mkdir(parents=True, exist_ok=True)
    pending: list[dict[str, object]] = []
    for photo in iter_photos(out / "pkgs", sources):
        img = photo.pixels
        h, w = img.shape[:2]
        (dets,) = detector.detect([img], min(1280, max(h, w)))
        for k, det in enumerate(dets):
            x1, y1, x2, y2 = det.box
            if min(x2 - x1, y2 - y1) < MIN_SIDE_PX or det.landmarks is None:
                continue
            if not _plausible(det.box, det.landmarks) or Path(photo.member).name in NOT_PHOTOS:
                continue
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            half = max(x2 - x1, y2 - y1) * (0.5 + CONTEXT)
            left, top = max(0, int(cx - half)), max(0, int(cy - half))
            right, bottom = min(w, int(cx + half)), min(h, int(cy + half))
            face_id = f"{photo.source}-{Path(photo.member).stem}-{k}".lower().replace("_", "-")
            cv2.imwrite(str(faces_dir / f"{face_id}.png"), img[top:bottom, left:right, ::-1])
            pending.append(
                {
                    "id": face_id,
                    "file": f"faces/{face_id}.png",
                    "source": photo.source,
                    "package": photo.package,
                    "member": photo.member,
                    "licence": photo.licence,
                    "group": (group := _group(photo.source, photo.member)),
                    "identity": group if group in SAME_PERSON_PREFIXES.values() else f"{group}#{k}",
                    "box": (x1 - left, y1 - top, x2 - left, y2 - top),
                    "landmarks": [(float(x) - left, float(y) - top) for x, y in det.landmarks],
                }
            )
    counts: dict[str, int] = {}
    for p in pending:
        counts[str(p["group"])] = counts.get(str(p["group"]), 0) + 1
    splits = _assign_splits(counts, seed, shares)
    records = [FaceRecord(**p, split=splits[str(p["group"])]) for p in pending]  # type: ignore[arg-type]
    (out / "faces.json").write_text(json.dumps([asdict(r) for r in records], indent=1) + "\n")
    return records


def load_faces(root: Path, split: str | None = None) -> list[FaceRecord]:
    """The collected faces (of one split, or all)."""
    rows = json.loads((root / "faces.json").read_text())
    records = [
        FaceRecord(**{**r, "box": tuple(r["box"]), "landmarks": [tuple(p) for p in r["landmarks"]]})
        for r in rows
    ]
    return [r for r in records if split is None or r.split == split]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    records = collect(args.out, args.seed)
    summary: dict[str, dict[str, int]] = {}
    for r in records:
        s = summary.setdefault(r.split, {"faces": 0, "identities": 0, "photos": 0})
        s["faces"] += 1
    for split in summary:
        summary[split]["identities"] = len({r.identity for r in records if r.split == split})
        summary[split]["photos"] = len({r.group for r in records if r.split == split})
    print(json.dumps({"faces": len(records), "splits": summary, "manifest": str(args.out / "faces.json")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
