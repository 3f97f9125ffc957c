"""Decode uploaded media into a few evenly spaced, upright RGB frames, within limits.

Decisions (measured on 2 cores, see docs/pipeline.md):
- Videos are decoded sequentially and only the sampled frames are converted to RGB; seeking to each sample
  costs 2-8x more when GOPs are long. Videos longer than `seek_above_seconds` are sampled by seeking, where
  decoding every frame would cost more than one GOP per sample.
- Packets whose frame no sample needs are decoded with `skip_frame=NONREF`: non-reference frames are then not
  reconstructed at all (20-30 % faster, sampled pixels identical), reference frames still are.
- Frame threading with two threads beats slice threading on ordinary single-slice H.264.
- Large frames are scaled down to `max_working_side` while converting (faces are cropped to a few hundred
  pixels anyway), which bounds memory: 32 frames of 8K would be 3 GB.
This module runs inside the isolated decoder process (see `isolated.py`) and must not import the rest of
the pipeline.
"""

from __future__ import annotations

import bisect
import dataclasses
import errno
import time
import warnings
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import (
    CorruptMedia,
    DecodeFailed,
    MediaError,
    MediaNotFound,
    MediaTooLong,
    NoVideoStream,
    ResolutionTooHigh,
)
from service.media.audio import AudioOverTime, decode_audio_stream, pictures
from service.media.sniff import SNIFF_BYTES, Sniffed, sniff
from service.media.types import AudioFailure, AudioTrack, MediaHeader, MediaLimits, SampledMedia

Allocator = Callable[[tuple[int, ...]], npt.NDArray[np.uint8]]

_MAX_DECODE_ERRORS = 64  # consecutive broken packets after which the rest of a stream is given up


def _default_alloc(shape: tuple[int, ...]) -> npt.NDArray[np.uint8]:
    return np.empty(shape, dtype=np.uint8)


def decode_media(path: str | Path, limits: MediaLimits, alloc: Allocator = _default_alloc) -> SampledMedia:
    """Sample frames of the media at `path` (content-sniffed) in this process.

    `alloc` provides the output frame buffer once its shape is known, so a caller can place it in shared
    memory. Raises a `MediaError` subclass for anything that is not analysable media.
    """
    started = time.monotonic()
    kind = probe_kind(path)
    try:
        if kind.kind == "image":
            return _decode_image(path, kind, limits, alloc)
        if kind.kind == "audio":
            if not limits.audio:
                raise NoVideoStream("the media is audio only and audio scoring is off (DFG_AUDIO_ENABLED)")
            return _decode_audio_only(path, kind.format, limits)
        media = _decode_video(path, kind, limits, alloc)
        if media.header.kind == "video" and limits.audio:
            # The track as long as the picture (plus a second of slack): speech after the video ends is not
            # what viewers hear with it, and a short clip must not pay for a long track.
            seconds = min(limits.max_duration_seconds, (media.header.duration_s or 0.0) + 1.0)
            deadline = None
            if limits.time_limit_seconds is not None:  # leave a tenth of the limit to hand the frames over
                deadline = started + 0.9 * limits.time_limit_seconds
            audio = _audio_of_video(path, kind.format, limits, seconds, deadline)
            return dataclasses.replace(media, audio=audio)
        return media
    except MemoryError as exc:
        # A damaged header can make FFmpeg refuse a huge allocation (ENOMEM) even with memory to spare; the
        # isolated decoder also lands here when its RLIMIT_AS budget runs out. Either way: this media, not us.
        raise DecodeFailed("the decoder ran out of memory on this media") from exc


# --- images -------------------------------------------------------------------------------------------


def _decode_image(path: str | Path, kind: Sniffed, limits: MediaLimits, alloc: Allocator) -> SampledMedia:
    try:
        with warnings.catch_warnings():
            # dfguard's pixel limit below is the one that applies, not Pillow's bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path, formats=[kind.format])
        with img:
            w, h = img.size
            if w * h > limits.max_frame_pixels:
                raise ResolutionTooHigh(
                    f"{w}x{h} is over the limit of {limits.max_frame_pixels} pixels per frame"
                )
            if w <= 0 or h <= 0:
                raise CorruptMedia("image has no pixels")
            img.load()
            upright = ImageOps.exif_transpose(img) or img
            rgb = upright.convert("RGB")
    except MemoryError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own check, before dfguard's limit can run
        raise ResolutionTooHigh(f"image is over the pixel limit: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptMedia(f"{kind.format.lower()} image could not be decoded: {exc}") from exc
    full_w, full_h = rgb.size
    scale = _working_scale(full_w, full_h, limits.max_working_side)
    if scale > 1.0:
        rgb = rgb.resize((round(full_w / scale), round(full_h / scale)), Image.Resampling.BILINEAR)
    arr = np.asarray(rgb)
    out = alloc((1, *arr.shape))
    out[0] = arr
    header = MediaHeader(
        kind="image",
        container=kind.format.lower(),
        width=full_w,
        height=full_h,
        duration_s=None,
        frames_decoded=1,
    )
    return SampledMedia(header=header, frames=out, indices=[0], times=[0.0], scale=scale)


# --- audio --------------------------------------------------------------------------------------------


def _decode_audio_only(path: str | Path, fmt: str, limits: MediaLimits) -> SampledMedia:
    """Audio-only media: no frames, the track."""
    track = decode_audio_stream(path, fmt, limits, max_seconds=limits.max_duration_seconds, strict=True)
    if track is None:  # strict decoding raises instead; kept for the type
        raise CorruptMedia("the media has no audio stream")
    header = MediaHeader(
        kind="audio",
        container=fmt,
        width=0,
        height=0,
        duration_s=round(track.duration_s, 6),
        partial=track.partial,
        decode_errors=track.decode_errors,
    )
    frames = np.empty((0, 1, 1, 3), dtype=np.uint8)
    return SampledMedia(header=header, frames=frames, indices=[], times=[], audio=track)


def _audio_of_video(
    path: str | Path, fmt: str, limits: MediaLimits, seconds: float, deadline: float | None
) -> AudioTrack | AudioFailure | None:
    """A video's audio track (None: it has none); one that cannot be decoded in time or at all is reported,
    not fatal (the faces are still scored)."""
    try:
        return decode_audio_stream(path, fmt, limits, max_seconds=seconds, strict=False, deadline=deadline)
    except AudioOverTime as exc:
        return AudioFailure(DecodeFailed.code, f"{exc}; the pictures were analysed")
    except MemoryError:
        return AudioFailure(DecodeFailed.code, "the decoder ran out of memory on the audio track")
    except MediaError as exc:
        return AudioFailure(exc.code, exc.message)
    except av.error.FFmpegError as exc:
        return AudioFailure(CorruptMedia.code, f"the audio track could not be read: {exc.strerror}")


# --- videos -------------------------------------------------------------------------------------------


def _working_scale(width: int, height: int, max_side: int) -> float:
    longest = max(width, height)
    return longest / max_side if longest > max_side else 1.0


def _sample_times(start: float, duration: float, n: int) -> list[float]:
    """Centres of n equal slices of the duration (avoids the fade-in first and fade-out last frame)."""
    return [start + duration * (k + 0.5) / n for k in range(n)]


def _stream_duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return float(container.duration / av.time_base)
    return None


def _demux_duration(path: str | Path, fmt: str) -> tuple[float, float] | None:
    """Start and duration from packet timestamps, for containers that do not state a duration."""
    first = last = None
    with av.open(str(path), format=fmt) as c:
        moving = pictures(c)
        if not moving:
            return None
        s = moving[0]
        tb = s.time_base
        if tb is None:
            return None
        for pkt in c.demux(s):
            if pkt.pts is None:
                continue
            t = float(pkt.pts * tb)
            first = t if first is None else min(first, t)
            last = t if last is None else max(last, t)
    if first is None or last is None:
        return None
    return first, last - first


def _upright(rgb: npt.NDArray[np.uint8], rotation: int) -> npt.NDArray[np.uint8]:
    """Apply a display-matrix rotation (degrees counter-clockwise, as PyAV reports it)."""
    k = (rotation // 90) % 4
    return np.rot90(rgb, k=k) if k else rgb


def _open_video(path: str | Path, kind: Sniffed) -> Any:
    try:
        return av.open(str(path), format=kind.format, metadata_errors="ignore")
    except MemoryError:
        raise
    except av.error.InvalidDataError as exc:
        # strerror, not str(exc): the latter names the file, a server-side temporary path for uploads
        raise CorruptMedia(f"{kind.format} container could not be opened: {exc.strerror}") from exc
    except av.error.FFmpegError as exc:
        raise CorruptMedia(f"{kind.format} container could not be read: {exc.strerror}") from exc


def _decode_video(path: str | Path, kind: Sniffed, limits: MediaLimits, alloc: Allocator) -> SampledMedia:
    container = _open_video(path, kind)
    with container:
        if not container.streams:
            raise CorruptMedia("the container holds no streams")
        moving = pictures(container)
        if not moving:
            if limits.audio and container.streams.audio:
                return _decode_audio_only(path, kind.format, limits)  # m4a, Opus in WebM
            raise NoVideoStream(
                "the media has no video stream"
                + ("" if limits.audio else " (audio scoring is off: DFG_AUDIO_ENABLED)")
                if container.streams.audio
                else "the media has neither a video nor an audio stream"
            )
        stream = moving[0]
        cc = stream.codec_context
        if cc is None:
            raise CorruptMedia("the video stream has no usable decoder (unknown codec or damaged header)")
        width, height = int(cc.width or 0), int(cc.height or 0)
        if width <= 0 or height <= 0:
            raise CorruptMedia("the video stream has no frame size")
        if width * height > limits.max_frame_pixels:
            raise ResolutionTooHigh(
                f"{width}x{height} is over the limit of {limits.max_frame_pixels} pixels per frame"
            )
        rate = stream.average_rate or stream.guessed_rate or Fraction(30)
        fps = float(rate) if float(rate) > 0 else 30.0
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        duration = _stream_duration(container, stream)
        if duration is None or duration <= 0:
            span = _demux_duration(path, kind.format)
            if span is None:
                raise CorruptMedia("the video stream holds no timed packets")
            start, duration = span[0], span[1] + 1.0 / fps
        if duration > limits.max_duration_seconds:
            raise MediaTooLong(f"{duration:.1f} s is over the limit of {limits.max_duration_seconds:.0f} s")

        cc.thread_type = "FRAME" if limits.decode_threads > 1 else "NONE"
        cc.thread_count = limits.decode_threads
        sampler = _Sampler(
            targets=_sample_times(start, duration, limits.frames_per_video),
            interval=1.0 / fps,
            start=start,
            end=start + duration,
            limits=limits,
            alloc=alloc,
            full_size=(width, height),
        )
        if duration > limits.seek_above_seconds:
            sampler.run_seeking(container, stream)
        else:
            sampler.run_sequential(container, stream)
        return sampler.result(kind.format, duration)


class _Sampler:
    """Picks the decoded frame nearest each target time and converts only those frames."""

    def __init__(
        self,
        targets: list[float],
        interval: float,
        start: float,
        end: float,
        limits: MediaLimits,
        alloc: Allocator,
        full_size: tuple[int, int],
    ) -> None:
        self.targets = targets
        self.tol = interval / 2
        self.interval = interval
        self.start = start
        self.end = end
        self.limits = limits
        self.alloc = alloc
        self.next_target = 0
        self.decoded = 0
        self.errors = 0
        self.rotation = 0
        self.full_size = full_size
        self.scale = 1.0
        self.out: npt.NDArray[np.uint8] | None = None
        self.count = 0
        self.indices: list[int] = []
        self.times: list[float] = []
        self.last_frame: Any = None
        self.last_time = 0.0
        self.work_size = full_size
        self.last_taken = False
        self.truncated = False

    # A packet is needed when a target lies within half a frame interval of its presentation time.
    def _needed(self, t: float) -> bool:
        i = bisect.bisect_left(self.targets, t - self.tol - 1e-9)
        return i < len(self.targets) and self.targets[i] <= t + self.tol

    def _done(self) -> bool:
        return self.next_target >= len(self.targets)

    def _take(self, frame: Any, t: float) -> None:
        if self.out is None:
            self.rotation = int(frame.rotation or 0) % 360
            w, h = frame.width, frame.height
            self.scale = _working_scale(w, h, self.limits.max_working_side)
            ww, wh = (round(w / self.scale), round(h / self.scale)) if self.scale > 1 else (w, h)
            shape = (wh, ww) if self.rotation in (0, 180) else (ww, wh)
            self.work_size = (ww, wh)
            self.out = self.alloc((len(self.targets), shape[0], shape[1], 3))
        ww, wh = self.work_size
        if frame.width * frame.height > self.limits.max_frame_pixels:
            raise ResolutionTooHigh(f"a frame of {frame.width}x{frame.height} is over the pixel limit")
        try:
            rgb = frame.to_ndarray(format="rgb24", width=ww, height=wh)
        except av.error.FFmpegError as exc:
            # The frame decoded, so its data is fine: failing to convert it is a resource failure (threads or
            # memory under the decoder's limits), not corrupt media.
            raise DecodeFailed(f"a decoded frame could not be converted: {exc}") from exc
        up = _upright(rgb, self.rotation)
        if up.shape != self.out.shape[1:]:  # mid-stream size change: fit into the first frame's shape
            up = _fit(up, self.out.shape[1], self.out.shape[2])
        self.out[self.count] = up
        self.count += 1
        self.indices.append(max(0, round((t - self.start) / self.interval)))
        self.times.append(round(t, 6))

    def _on_frame(self, frame: Any, time_base: Fraction) -> None:
        self.decoded += 1
        if self.decoded > self.limits.max_decoded_frames:
            self.truncated = True
            raise _StopDecoding
        t = float(frame.pts * time_base) if frame.pts is not None else (self.decoded - 1) * self.interval
        if t - self.end > self.limits.max_duration_seconds:
            raise MediaTooLong("the video runs past its stated duration and over the duration limit")
        take = False
        while not self._done() and self.targets[self.next_target] <= t + self.tol:
            take = True
            self.next_target += 1
        self.last_frame, self.last_time = frame, t
        self.last_taken = take
        if take:
            self._take(frame, t)

    def _decode_packet(self, stream: Any, packet: Any) -> None:
        cc = stream.codec_context
        if packet.pts is not None and packet.size:
            t = float(packet.pts * stream.time_base)
            cc.skip_frame = "DEFAULT" if self._needed(t) else "NONREF"
        try:
            frames = cc.decode(packet)
        except MemoryError:
            raise  # out of memory is a limit, not broken data (av.error.MemoryError is an FFmpegError too)
        except av.error.FFmpegError as exc:
            if exc.errno == errno.ENOMEM:
                raise MemoryError(str(exc)) from exc
            self.errors += 1
            if self.errors > _MAX_DECODE_ERRORS and self.count == 0:
                raise _StopDecoding from None
            return
        for frame in frames:
            if frame.is_corrupt:
                self.errors += 1
            self._on_frame(frame, stream.time_base)
            if self._done():
                raise _StopDecoding

    def run_sequential(self, container: Any, stream: Any) -> None:
        try:
            for packet in container.demux(stream):
                self._decode_packet(stream, packet)
        except _StopDecoding:
            return
        except MemoryError:
            raise
        except av.error.FFmpegError:
            self.errors += 1  # demuxer gave up: the file is damaged after this point
            self.truncated = True
        self._flush(stream)

    def run_seeking(self, container: Any, stream: Any) -> None:
        tb = stream.time_base
        try:
            while not self._done():
                target = self.targets[self.next_target]
                container.seek(int(max(0.0, target) / tb), stream=stream, backward=True, any_frame=False)
                stream.codec_context.flush_buffers()
                before = self.next_target
                for packet in container.demux(stream):
                    self._decode_packet(stream, packet)
                    if self.next_target > before:
                        break
                else:
                    self._flush(stream)
                    if self.next_target == before:  # nothing at or after this target: stream ended early
                        self.truncated = True
                        break
        except _StopDecoding:
            return
        except MemoryError:
            raise
        except av.error.FFmpegError:
            self.errors += 1
            self.truncated = True

    def _flush(self, stream: Any) -> None:
        try:
            stream.codec_context.skip_frame = "DEFAULT"
            for frame in stream.codec_context.decode(None):
                self._on_frame(frame, stream.time_base)
                if self._done():
                    return
        except _StopDecoding:
            return
        except av.error.EOFError:
            pass  # the demuxer's final empty packet already drained the decoder
        except MemoryError:
            raise
        except av.error.FFmpegError:
            self.errors += 1
        # Targets left after the last frame: if the stream really ended where it said, the last frame is the
        # nearest one to them; otherwise the file was cut short.
        if self.last_frame is not None and not self._done():
            if self.last_time >= self.end - 2 * self.interval:
                if not self.last_taken:
                    self._take(self.last_frame, self.last_time)
                self.next_target = len(self.targets)
            else:
                self.truncated = True

    def result(self, container_name: str, duration: float) -> SampledMedia:
        if self.out is None or self.count == 0:
            raise CorruptMedia(f"no frame of the video could be decoded ({self.errors} decode errors)")
        fw, fh = self.full_size
        width, height = (fw, fh) if self.rotation in (0, 180) else (fh, fw)
        header = MediaHeader(
            kind="video",
            container=container_name,
            width=width,
            height=height,
            duration_s=round(duration, 6),
            rotation=self.rotation,
            partial=self.truncated or (self.errors > 0 and not self._done()),
            frames_decoded=self.decoded,
            decode_errors=self.errors,
        )
        return SampledMedia(
            header=header,
            frames=self.out[: self.count],
            indices=self.indices,
            times=self.times,
            scale=self.scale,
        )


class _StopDecoding(Exception):
    """Internal: every sample is taken (or a limit ended the work)."""


def _fit(img: npt.NDArray[np.uint8], h: int, w: int) -> npt.NDArray[np.uint8]:
    import cv2

    return np.asarray(cv2.resize(np.ascontiguousarray(img), (w, h), interpolation=cv2.INTER_LINEAR))


def probe_kind(path: str | Path) -> Sniffed:
    """Sniff a file without decoding it (cheap; for callers that only need the kind)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        raise MediaNotFound(f"cannot read {path}: {exc.strerror}") from exc
    return sniff(head)


__all__ = ["decode_media", "probe_kind"]
