"""Collect faces from packaged photos and photo folders into an identity-disjoint train / val / test set.

`python -m training.collect [--out DIR] [--folder SPEC.json ...] [--photos DIR ...]` fetches the package
sources (`training.sources`), reads the folders a user names, finds faces with the service's own detector (so
training sees the boxes serving will see), keeps clear ones (score >= 0.9, shorter side >= 40 px, a face-like
landmark layout) and writes each face with generous context as a PNG plus `faces.json`: source, package,
licence, box and the 5 landmarks of every face; `collect.json` reports the duplicates found and the counts.

Leaks: the same picture often ships in two sources (a demo photo of one package is a sample of another), so
duplicates are found perceptually across all sources *before* splitting: two faces whose crops hash within a
few bits (pHash) and correlate almost perfectly are one picture; the larger copy is kept and both photos are
merged into one splitting group. Identity: photos known to show the same person (package rules and a folder's
`same_person`) are merged too; otherwise a photo is the unit of splitting and every face of a photo goes to
the same split. That cannot rule out one person in two unrelated photos; the test split is small, which is why
evaluation reports bootstrap intervals. Rendered (computer-generated) people go to their own `rendered` split:
never training examples, only an evaluation slice.
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
from training.sources import (
    SOURCES,
    FolderSpec,
    Kind,
    Photo,
    Source,
    folder_source,
    iter_photos,
    load_folder_specs,
)

__all__ = ["FaceRecord", "collect", "find_duplicates", "load_faces"]

DEFAULT_DIR = Path(".cache/training")
MIN_SCORE = 0.9
MIN_SIDE_PX = 40
CONTEXT = 0.8  # fraction of the face box kept around it on each side in the saved face image
SPLIT_SHARES = {"test": 0.25, "val": 0.15}  # the rest is train; shares of faces, by whole identity groups
RENDERED_SPLIT = "rendered"
# Two face crops are one picture when their 64-bit pHashes differ by at most this many bits and their
# normalised 64x64 grey crops correlate at least this much. Measured on the sources here: copies of one
# picture 0.992-0.9996 (0-4 bits); different shots of one person in one session (same pose, light and
# background) up to 0.937 (10+ bits); tiny blurry faces of different people up to 0.916.
DUP_MAX_BITS = 8
DUP_MIN_CORR = 0.97
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
    group: str  # the unit of splitting: the photo (or merged photos of one person, or one picture's copies)
    split: str
    box: tuple[float, float, float, float]  # in the saved image, pixels
    landmarks: list[tuple[float, float]]  # eyes, nose, mouth corners, in the saved image
    kind: Kind = "real"  # `rendered`: a computer-generated person (evaluation slice only)
    duplicates: tuple[str, ...] = ()  # the same face in other sources' copies of the picture (source:member)


def _group(photo: Photo) -> str:
    """The photo's splitting group before duplicates merge groups: its person if known, else the photo."""
    if photo.person is not None:
        return photo.person
    key = f"{photo.source}:{photo.member}"
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


@dataclass(frozen=True)
class _Candidate:
    """A face found in a photo, before deduplication and splitting."""

    photo: int
    k: int
    box: tuple[float, float, float, float]
    landmarks: npt.NDArray[np.float32]
    signature: tuple[
        tuple[int, npt.NDArray[np.float32]], tuple[int, npt.NDArray[np.float32]]
    ]  # as is, mirrored

    @property
    def side(self) -> float:
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


def _signature(grey: npt.NDArray[np.uint8]) -> tuple[int, npt.NDArray[np.float32]]:
    """pHash and zero-mean unit-norm 64x64 thumbnail of a grey face square."""
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    phash = int.from_bytes(np.packbits(low > np.median(low[1:])).tobytes(), "big")
    thumb = cv2.resize(grey, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)
    thumb -= thumb.mean()
    thumb /= float(np.linalg.norm(thumb)) + 1e-6
    return phash, thumb


def _signatures(
    img: npt.NDArray[np.uint8], box: tuple[float, float, float, float]
) -> tuple[tuple[int, npt.NDArray[np.float32]], tuple[int, npt.NDArray[np.float32]]]:
    """Signatures of the square around a face box, as is and mirrored: the same picture at any size or
    re-encoding, or flipped, gives nearly the same pair."""
    x1, y1, x2, y2 = box
    half = max(x2 - x1, y2 - y1) / 2
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    h, w = img.shape[:2]
    left, top = max(0, int(cx - half)), max(0, int(cy - half))
    right, bottom = min(w, int(cx + half) + 1), min(h, int(cy + half) + 1)
    grey = np.asarray(
        cv2.cvtColor(np.ascontiguousarray(img[top:bottom, left:right]), cv2.COLOR_RGB2GRAY), dtype=np.uint8
    )
    return _signature(grey), _signature(np.ascontiguousarray(grey[:, ::-1]))


def same_picture(a: _Candidate, b: _Candidate) -> bool:
    """One picture: pHashes within DUP_MAX_BITS, thumbnails correlated >= DUP_MIN_CORR (as is or mirrored)."""
    (ha, ta), _ = a.signature
    for hb, tb in b.signature:
        if bin(ha ^ hb).count("1") <= DUP_MAX_BITS and float(np.sum(ta * tb)) >= DUP_MIN_CORR:
            return True
    return False


def find_duplicates(cands: Sequence[_Candidate]) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of faces from different photos that are one picture."""
    return [
        (i, j)
        for i in range(len(cands))
        for j in range(i + 1, len(cands))
        if cands[i].photo != cands[j].photo and same_picture(cands[i], cands[j])
    ]


def _where(photos: Sequence[Photo], c: _Candidate) -> str:
    return f"{photos[c.photo].source}:{photos[c.photo].member}#{c.k}"


class _Groups:
    """Union-find over splitting groups: duplicates and same-person photos end up in one group."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # deterministic: the smaller name represents the group


def collect(
    out: Path, seed: int = 0, *, sources: Sequence[Source] = SOURCES, shares: dict[str, float] | None = None
) -> list[FaceRecord]:
    """Fetch, detect, deduplicate, crop with context and split; writes `out/faces/*.png`, `out/faces.json`
    and `out/collect.json` (duplicates and counts)."""
    detector = RetinaFaceDetector(threshold=MIN_SCORE, max_faces=32, threads=2)
    faces_dir = out / "faces"
    faces_dir.mkdir(parents=True, exist_ok=True)
    for old in faces_dir.glob("*.png"):  # a rerun must not leave faces of an earlier collection behind
        old.unlink()
    photos = list(iter_photos(out / "pkgs", sources))
    cands: list[_Candidate] = []
    for p, photo in enumerate(photos):
        if Path(photo.member).name in NOT_PHOTOS:
            continue
        img = photo.pixels
        (dets,) = detector.detect([img], min(1280, max(img.shape[:2])))
        for k, det in enumerate(dets):
            x1, y1, x2, y2 = det.box
            if min(x2 - x1, y2 - y1) < MIN_SIDE_PX or det.landmarks is None:
                continue
            if not _plausible(det.box, det.landmarks):
                continue
            cands.append(_Candidate(p, k, det.box, det.landmarks, _signatures(img, det.box)))
    groups = _Groups()
    for photo in photos:
        groups.find(_group(photo))
    dropped: dict[int, int] = {}  # candidate -> the candidate kept for its picture
    dup_report = []
    for i, j in find_duplicates(cands):
        a, b = cands[i], cands[j]
        groups.union(_group(photos[a.photo]), _group(photos[b.photo]))
        keep, drop = (i, j) if a.side >= b.side else (j, i)
        while keep in dropped:
            keep = dropped[keep]
        if keep != drop:
            dropped.setdefault(drop, keep)
        dup_report.append({"kept": _where(photos, cands[keep]), "dropped": _where(photos, cands[drop])})
    pending: list[dict[str, object]] = []
    for i, c in enumerate(cands):
        if i in dropped:
            continue
        photo = photos[c.photo]
        img = photo.pixels
        h, w = img.shape[:2]
        x1, y1, x2, y2 = c.box
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        half = max(x2 - x1, y2 - y1) * (0.5 + CONTEXT)
        left, top = max(0, int(cx - half)), max(0, int(cy - half))
        right, bottom = min(w, int(cx + half)), min(h, int(cy + half))
        face_id = f"{photo.source}-{Path(photo.member).stem}-{c.k}".lower().replace("_", "-")
        cv2.imwrite(str(faces_dir / f"{face_id}.png"), img[top:bottom, left:right, ::-1])
        own = _group(photo)
        copies = tuple(
            f"{photos[cands[d].photo].source}:{photos[cands[d].photo].member}"
            for d, kept in dropped.items()
            if kept == i
        )
        pending.append(
            {
                "id": face_id,
                "file": f"faces/{face_id}.png",
                "source": photo.source,
                "package": photo.package,
                "member": photo.member,
                "licence": photo.licence,
                "group": groups.find(own),
                "identity": own if own != f"{photo.source}:{photo.member}" else f"{own}#{c.k}",
                "box": (x1 - left, y1 - top, x2 - left, y2 - top),
                "landmarks": [(float(x) - left, float(y) - top) for x, y in c.landmarks],
                "kind": photo.kind,
                "duplicates": copies,
            }
        )
    counts: dict[str, int] = {}
    for rec in pending:
        if rec["kind"] == "real":
            counts[str(rec["group"])] = counts.get(str(rec["group"]), 0) + 1
    splits = _assign_splits(counts, seed, shares)
    records = [
        FaceRecord(**rec, split=splits.get(str(rec["group"]), RENDERED_SPLIT))  # type: ignore[arg-type]
        for rec in pending
    ]
    (out / "faces.json").write_text(json.dumps([asdict(r) for r in records], indent=1) + "\n")
    report = {
        "photos": len(photos),
        "faces_found": len(cands),
        "duplicates": dup_report,
        **summarise(records),
    }
    (out / "collect.json").write_text(json.dumps(report, indent=1) + "\n")
    return records


def summarise(records: Sequence[FaceRecord]) -> dict[str, object]:
    """Faces, identities, groups and sources per split."""
    summary: dict[str, dict[str, object]] = {}
    for split in sorted({r.split for r in records}):
        rows = [r for r in records if r.split == split]
        by_source: dict[str, int] = {}
        for r in rows:
            by_source[r.source] = by_source.get(r.source, 0) + 1
        summary[split] = {
            "faces": len(rows),
            "identities": len({r.identity for r in rows}),
            "groups": len({r.group for r in rows}),
            "sources": by_source,
        }
    return {"faces": len(records), "splits": summary}


def load_faces(root: Path, split: str | None = None) -> list[FaceRecord]:
    """The collected faces (of one split, or all)."""
    rows = json.loads((root / "faces.json").read_text())
    records = [
        FaceRecord(
            **{
                **r,
                "box": tuple(r["box"]),
                "landmarks": [tuple(p) for p in r["landmarks"]],
                "duplicates": tuple(r.get("duplicates", ())),
            }
        )
        for r in rows
    ]
    return [r for r in records if split is None or r.split == split]


def _sources(args: argparse.Namespace) -> list[Source]:
    chosen = [] if args.no_packages else list(SOURCES)
    for spec_file in args.folder:
        chosen += [folder_source(spec) for spec in load_folder_specs(spec_file)]
    for folder in args.photos:
        chosen.append(
            folder_source(
                FolderSpec(
                    name=folder.name.lower().replace("_", "-") or "photos",
                    path=folder,
                    origin="a local folder named on the command line",
                    licence=args.photos_licence,
                )
            )
        )
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--folder", type=Path, action="append", default=[], help="a folder spec (JSON, training/folders/)"
    )
    parser.add_argument(
        "--photos", type=Path, action="append", default=[], help="a folder of real photos, one person each"
    )
    parser.add_argument("--photos-licence", default="user-supplied; terms not recorded")
    parser.add_argument("--no-packages", action="store_true", help="only the named folders")
    args = parser.parse_args(argv)
    records = collect(args.out, args.seed, sources=_sources(args))
    print(json.dumps({**summarise(records), "manifest": str(args.out / "faces.json")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
