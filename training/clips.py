"""Still photos as short videos: a slow zoom and pan, encoded with H.264 at two quality levels.

No package ships real face video, so evaluation clips animate the stills. Motion makes every frame's face crop
different and the encoder's motion compensation smear blending traces as it does on real uploads; the two CRF
levels stand for FaceForensics++'s light (c23) and heavy (c40-like) compression.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["QUALITIES", "animate", "write_clip"]

RGB = npt.NDArray[np.uint8]
QUALITIES: dict[str, int] = {"c23": 23, "c35": 35}  # name -> libx264 CRF


def animate(img: RGB, rng: np.random.Generator, *, frames: int = 30, side: int = 360) -> list[RGB]:
    """`frames` frames of `img` (longest side `side`, even dims) under a random slow zoom and pan."""
    h, w = img.shape[:2]
    s = side / max(h, w)
    ow, oh = (round(w * s) // 2) * 2, (round(h * s) // 2) * 2
    z0, z1 = rng.uniform(1.0, 1.06), rng.uniform(1.06, 1.14)
    if rng.random() < 0.5:
        z0, z1 = z1, z0
    px, py = rng.uniform(-0.04, 0.04, 2)
    out = []
    for t in np.linspace(0.0, 1.0, frames):
        z = z0 + (z1 - z0) * t
        cx, cy = w / 2 + px * w * t, h / 2 + py * h * t
        m = np.array([[z * s, 0, ow / 2 - z * s * cx], [0, z * s, oh / 2 - z * s * cy]], dtype=np.float32)
        f = cv2.warpAffine(img, m, (ow, oh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        out.append(np.asarray(f, dtype=np.uint8))
    return out


def write_clip(frames: list[RGB], path: Path, crf: int, fps: int = 15) -> Path:
    """Encode RGB frames as H.264 (yuv420p) in MP4; bit-exact for the same frames and CRF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream("libx264", rate=Fraction(fps, 1))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "fast", "threads": "1"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
