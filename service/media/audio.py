"""Decode an audio stream into 16 kHz mono 16-bit PCM, within limits (runs inside the isolated decoder).

The whole track is resampled with FFmpeg's resampler (through PyAV) to what the voice-activity detector and
the anti-spoofing model take. Bounds are checked on the stream's header and again on every decoded frame,
since a hostile stream can change its rate or channel count mid-way; a stream over them is refused with
`unsupported_audio` rather than decoded. Like `decode.py`, this module must not import the rest of the
pipeline.
"""

from __future__ import annotations

import contextlib
import errno
import time
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np

from service.errors import CorruptMedia, MediaTooLong, UnsupportedAudio, UnsupportedMedia
from service.media.types import AudioTrack, MediaLimits

__all__ = ["RATE", "AudioOverTime", "decode_audio_stream", "pictures"]

RATE = 16_000
_MAX_DECODE_ERRORS = 64  # broken packets before a track with nothing decoded yet is called corrupt


def pictures(container: Any) -> list[Any]:
    """The container's video streams that are moving pictures: not a cover image (an `attached_pic`, as
    music and podcast files carry)."""
    return [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]


def _check_format(rate: int, channels: int, limits: MediaLimits) -> None:
    if rate <= 0:
        raise CorruptMedia("the audio stream has no sample rate")
    if rate > limits.max_audio_sample_rate:
        raise UnsupportedAudio(f"audio at {rate} Hz is over the limit of {limits.max_audio_sample_rate} Hz")
    if channels > limits.max_audio_channels:
        raise UnsupportedAudio(f"{channels} audio channels are over the limit of {limits.max_audio_channels}")


class AudioOverTime(Exception):
    """The track was still decoding at its deadline (a video's track: the pictures' result is kept)."""


def decode_audio_stream(
    path: str | Path,
    fmt: str,
    limits: MediaLimits,
    *,
    max_seconds: float,
    strict: bool,
    deadline: float | None = None,
) -> AudioTrack | None:
    """The first audio stream of the media at `path`, opened with demuxer `fmt`.

    Args:
        max_seconds: decode at most this much.
        deadline: `time.monotonic()` past which decoding stops with `AudioOverTime`.
        strict: audio-only media: no audio stream is `corrupt_media`, a video stream beside it (Ogg video)
            `unsupported_media`, a longer track `media_too_long`. Otherwise (a video's track) no audio stream
            is None and a longer track is cut at `max_seconds` and marked partial.
    Raises:
        CorruptMedia, UnsupportedAudio, UnsupportedMedia, MediaTooLong.
    """
    try:
        container = av.open(str(path), format=fmt, metadata_errors="ignore")
    except MemoryError:
        raise
    except av.error.FFmpegError as exc:
        raise CorruptMedia(f"{fmt} container could not be read: {exc.strerror}") from exc
    with container:
        if not container.streams.audio:
            if strict:
                raise CorruptMedia("the media has no audio stream")
            return None
        if strict and pictures(container):
            raise UnsupportedMedia(f"a video stream in an {fmt} file: only its audio could be analysed")
        stream = container.streams.audio[0]
        cc = stream.codec_context
        if cc is None or not cc.name:
            raise CorruptMedia("the audio stream has no usable decoder (unknown codec or damaged header)")
        rate, channels = int(cc.sample_rate or 0), int(cc.channels or 0)
        _check_format(rate, channels, limits)
        if strict and container.duration is not None and container.duration / av.time_base > max_seconds:
            raise MediaTooLong(
                f"{container.duration / av.time_base:.1f} s is over the limit of {max_seconds:.0f} s"
            )
        codec = str(cc.codec.canonical_name or cc.name)  # "mp3", not its decoder's name "mp3float"
        return _Resampled(limits, max_seconds, strict, deadline).run(container, stream, codec, rate, channels)


class _Resampled:
    """Decodes packet by packet, resampling each frame, and keeps the 16 kHz mono chunks."""

    def __init__(self, limits: MediaLimits, max_seconds: float, strict: bool, deadline: float | None) -> None:
        self.limits = limits
        self.deadline = deadline
        self.cap = int(max_seconds * RATE)
        self.strict = strict
        self.chunks: list[np.ndarray] = []
        self.total = 0
        self.errors = 0
        self.partial = False
        self.resampler: Any = None
        self.signature: tuple[Any, ...] | None = None

    def run(self, container: Any, stream: Any, codec: str, rate: int, channels: int) -> AudioTrack:
        cc = stream.codec_context
        try:
            for packet in container.demux(stream):
                if self.deadline is not None and time.monotonic() > self.deadline:
                    raise AudioOverTime(
                        f"the audio track was not decoded in time ({self.total / RATE:.1f} s)"
                    )
                try:
                    frames = cc.decode(packet)
                except MemoryError:
                    raise
                except av.error.FFmpegError as exc:
                    if exc.errno == errno.ENOMEM:
                        raise MemoryError(str(exc)) from exc
                    self.errors += 1
                    if self.errors > _MAX_DECODE_ERRORS and self.total == 0:
                        raise CorruptMedia(
                            f"no audio could be decoded ({self.errors} decode errors)"
                        ) from None
                    continue
                if not self._take(frames):
                    break
            else:
                self._flush(cc)
        except (MediaTooLong, CorruptMedia, UnsupportedAudio, MemoryError, AudioOverTime):
            raise
        except av.error.FFmpegError:
            self.errors += 1
            self.partial = True  # the demuxer gave up: damaged after this point
        if self.resampler is not None and self.total <= self.cap:
            self._keep(self.resampler.resample(None))
        if self.total == 0:
            raise CorruptMedia(f"no audio could be decoded ({self.errors} decode errors)")
        pcm = np.concatenate(self.chunks)[: self.cap].astype(np.int16, copy=False)
        return AudioTrack(
            pcm=pcm,
            source_sample_rate=rate,
            channels=channels,
            codec=codec,
            partial=self.partial or self.errors > 0,
            decode_errors=self.errors,
        )

    def _flush(self, cc: Any) -> None:
        # EOFError: the demuxer's final empty packet already drained the decoder
        with contextlib.suppress(av.error.EOFError):
            self._take(cc.decode(None))

    def _take(self, frames: list[Any]) -> bool:
        """Resample `frames`; False once the cap is reached (for a strict track: refused instead)."""
        for frame in frames:
            _check_format(int(frame.sample_rate or 0), len(frame.layout.channels), self.limits)
            signature = (frame.format.name, frame.layout.name, frame.sample_rate)
            if signature != self.signature:  # mid-stream change: flush the old resampler, start a new one
                if self.resampler is not None:
                    self._keep(self.resampler.resample(None))
                self.resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
                self.signature = signature
            self._keep(self.resampler.resample(frame))
            if self.total > self.cap:
                if self.strict:
                    raise MediaTooLong(
                        f"the audio runs over the limit of {self.cap / RATE:.0f} s (past its stated duration)"
                    )
                self.partial = True
                return False
        return True

    def _keep(self, frames: list[Any]) -> None:
        for out in frames:
            arr = out.to_ndarray().reshape(-1)
            self.chunks.append(arr)
            self.total += len(arr)
