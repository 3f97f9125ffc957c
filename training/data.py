"""Training samples: pairs of a real face crop and its Self-Blended Image, made on the fly and reproducibly.

Sample `i` depends only on (seed, i), so a resumed run sees exactly the samples it would have seen, whatever
the number of loader workers. A pair shares the face, the box jitter, the flip and the photometric draw: the
two crops differ only by the blend, so framing, colour and identity cannot tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from service.faces import crop_face
from training.augment import jitter_box, photometric
from training.blend import self_blend
from training.collect import FaceRecord

__all__ = ["CropSpec", "LoadedFace", "PairDataset", "load_face"]

RGB = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class CropSpec:
    """How faces become model inputs: exactly the manifest's crop margin, input size and resize recipe."""

    size: int
    margin: float
    resize: str = "linear"


@dataclass(frozen=True)
class LoadedFace:
    record: FaceRecord
    image: RGB
    box: tuple[float, float, float, float]
    landmarks: npt.NDArray[np.float32]


def load_face(root: Path, record: FaceRecord, max_face_px: float | None = None) -> LoadedFace:
    """The face image; with `max_face_px`, shrunk once so the face box is at most that wide (cheaper)."""
    bgr = cv2.imread(str(root / record.file), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(root / record.file)
    face = LoadedFace(
        record, np.ascontiguousarray(bgr[..., ::-1]), record.box, np.asarray(record.landmarks, np.float32)
    )
    width = record.box[2] - record.box[0]
    if max_face_px is not None and width > max_face_px:
        face = _scaled(face, max_face_px / width)
    return face


def _scaled(face: LoadedFace, s: float) -> LoadedFace:
    h0, w0 = face.image.shape[:2]
    size = (max(8, round(w0 * s)), max(8, round(h0 * s)))
    img = np.asarray(cv2.resize(face.image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    box = (face.box[0] * s, face.box[1] * s, face.box[2] * s, face.box[3] * s)
    return LoadedFace(face.record, img, box, face.landmarks * s)


def _around(face: LoadedFace, extent: float = 0.65) -> LoadedFace:
    """Only the pixels any crop can reach: the box grown by `extent` of its size (margin plus jitter)."""
    x1, y1, x2, y2 = face.box
    w, h = x2 - x1, y2 - y1
    left, top = max(0, int(x1 - extent * w)), max(0, int(y1 - extent * h))
    right = min(face.image.shape[1], int(x2 + extent * w) + 1)
    bottom = min(face.image.shape[0], int(y2 + extent * h) + 1)
    off = np.array([left, top], np.float32)
    return LoadedFace(
        face.record,
        np.ascontiguousarray(face.image[top:bottom, left:right]),
        (x1 - left, y1 - top, x2 - left, y2 - top),
        face.landmarks - off,
    )


def _rescale(
    face: LoadedFace, rng: np.random.Generator, lo: float, hi: float, cap: float | None = None
) -> LoadedFace:
    """The face resized so its box width is between `lo` and `hi` pixels (faces arrive at many sizes).

    A draw above `cap` is worked on at `cap`: the crop shrinks it to about that size anyway, and blending,
    photometric augmentation and JPEG on the larger picture only cost time (pixels grow with the square).
    """
    w = face.box[2] - face.box[0]
    target = float(rng.uniform(lo, hi))
    return _scaled(face, min(target, cap or target) / max(w, 1.0))


def _flip(face: LoadedFace) -> LoadedFace:
    w = face.image.shape[1]
    x1, y1, x2, y2 = face.box
    lm = face.landmarks.copy()
    lm[:, 0] = w - 1 - lm[:, 0]
    lm = lm[[1, 0, 2, 4, 3]]  # left and right swap places
    return LoadedFace(face.record, np.ascontiguousarray(face.image[:, ::-1]), (w - x2, y1, w - x1, y2), lm)


class PairDataset:
    """Item i -> (2, S, S, 3) uint8 [real, self-blended] crops of one training face."""

    def __init__(self, faces: list[LoadedFace], spec: CropSpec, seed: int, *, augment: bool = True) -> None:
        if not faces:
            raise ValueError("no faces to train on")
        self.faces = faces
        self.spec = spec
        self.seed = seed
        self.augment = augment

    def __len__(self) -> int:
        return 1 << 30  # indexed by global sample number; the sampler decides how many

    def __getitem__(self, i: int) -> RGB:
        rng = np.random.default_rng((self.seed, i))
        face = _around(self.faces[int(rng.integers(len(self.faces)))])
        # The crop shows the box plus `margin` on each side at `size` pixels: a face wider than that output
        # width (with a quarter to spare for the box jitter) is shrunk to it before the costly steps.
        cap = 1.25 * self.spec.size / (1 + 2 * self.spec.margin)
        face = _rescale(face, rng, 50, 170, cap) if self.augment else _rescale(face, rng, 100, 100, cap)
        if self.augment and rng.random() < 0.5:
            face = _flip(face)
        fake, _ = self_blend(face.image, face.landmarks, rng)
        box = jitter_box(face.box, rng) if self.augment else face.box
        out = np.empty((2, self.spec.size, self.spec.size, 3), np.uint8)
        photo_seed = int(rng.integers(1 << 62))
        for k, img in enumerate((face.image, fake)):
            if self.augment:  # the same photometric draw for both, as SBI's paired transforms
                img = photometric(img, np.random.default_rng(photo_seed))
            out[k] = crop_face(img, box, self.spec.margin, self.spec.size, self.spec.resize)  # type: ignore[arg-type]
        return out
