"""Values that leave the media stage: limits going in, sampled frames coming out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from service.config import Settings

MediaKindT = Literal["video", "image"]


@dataclass(frozen=True)
class MediaLimits:
    """The subset of settings the decoder needs (picklable: it crosses into the decoder process)."""

    frames_per_video: int = 32
    max_duration_seconds: float = 30 * 60
    max_frame_pixels: int = 7680 * 4320
    max_decoded_frames: int = 200_000
    max_working_side: int = 1920
    seek_above_seconds: float = 120.0
    decode_threads: int = 2

    @classmethod
    def from_settings(cls, s: Settings) -> MediaLimits:
        return cls(
            frames_per_video=s.frames_per_video,
            max_duration_seconds=s.max_duration_seconds,
            max_frame_pixels=s.max_frame_pixels,
            max_decoded_frames=s.max_decoded_frames,
            max_working_side=s.max_working_side,
            seek_above_seconds=s.seek_above_seconds,
            decode_threads=s.decode_threads,
        )


@dataclass(frozen=True)
class MediaHeader:
    """What the decoder learnt about the media, independent of the pixels."""

    kind: MediaKindT
    container: str
    width: int
    height: int
    duration_s: float | None
    rotation: int = 0
    partial: bool = False
    frames_decoded: int = 0
    decode_errors: int = 0


@dataclass(frozen=True)
class SampledMedia:
    """Sampled, upright RGB frames at working resolution, plus where they came from.

    `frames[i]` is the frame at stream index `indices[i]`, time `times[i]`. `scale` maps working-resolution
    pixels back to the upright full-resolution picture (`full = working * scale`).
    """

    header: MediaHeader
    frames: npt.NDArray[np.uint8]
    indices: list[int]
    times: list[float]
    scale: float = 1.0
    extra: dict[str, float] = field(default_factory=dict)
