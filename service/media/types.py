"""Values that leave the media stage: limits going in, sampled frames coming out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from service.config import Settings

MediaKindT = Literal["video", "image", "audio"]


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
    audio: bool = False  # decode the audio track too (and accept audio-only media)
    max_audio_sample_rate: int = 192_000
    max_audio_channels: int = 8
    # The decode's wall-clock limit (None: none, inline decoding): a video's audio track may use what is left
    # of it, less a margin, so that a slow hostile track fails the audio alone and the pictures are scored.
    time_limit_seconds: float | None = None

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
            audio=s.audio_enabled,
            max_audio_sample_rate=s.audio_max_sample_rate,
            max_audio_channels=s.audio_max_channels,
            time_limit_seconds=s.decode_timeout_seconds if s.decode_isolation == "process" else None,
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
class AudioTrack:
    """The audio track as 16 kHz mono 16-bit PCM (half the bytes of float32 across the process boundary; the
    sources are at most 16-bit-accurate after their codecs anyway)."""

    pcm: npt.NDArray[np.int16]
    source_sample_rate: int
    channels: int
    codec: str
    partial: bool = False
    decode_errors: int = 0
    sample_rate: int = 16_000

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / self.sample_rate

    def samples(self) -> npt.NDArray[np.float32]:
        """The signal as float32 in [-1, 1), what the models take."""
        return self.pcm.astype(np.float32) / 32768.0


@dataclass(frozen=True)
class AudioFailure:
    """The audio track of a video could not be analysed (the video still is): an error code and message."""

    code: str
    message: str
    source_sample_rate: int = 0
    channels: int = 0
    codec: str = ""


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
    audio: AudioTrack | AudioFailure | None = None  # None: no audio track, or audio not asked for
