"""The pictures an evidence page shows, as stored: JPEG bytes in document order (no pixels in the JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CropRef", "EvidencePictures"]


@dataclass(frozen=True)
class CropRef:
    """Which kept face a crop row is: `document.frames[frame].faces[face]`."""

    frame: int
    face: int
    track_id: int
    score: float


@dataclass(frozen=True)
class EvidencePictures:
    """`frames[i]` is `document.frames[i]`'s picture; `crops[j]` the j-th kept face as the model saw it (its
    `CropRef` is `document.sensitivity[j]` once overlays are ready); `overlays[j]` that crop with its
    sensitivity map drawn over it (empty until the overlays are ready)."""

    frames: list[bytes]
    crops: list[bytes]
    overlays: list[bytes] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in (*self.frames, *self.crops, *self.overlays))
