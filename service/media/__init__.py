"""Media stage: bytes on disk -> sampled, upright RGB frames (`SampledMedia`), within limits.

Cheap checks (size, magic bytes) run in the caller; decoding runs in an isolated child process unless
`decode_isolation=inline`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import time
from pathlib import Path

import numpy as np

from service.config import Settings
from service.errors import EmptyMedia, MediaNotFound, MediaTooLarge
from service.media.decode import decode_media, probe_kind
from service.media.isolated import DecodeJob, IsolationLimits, warm_up
from service.media.types import AudioFailure, AudioTrack, MediaHeader, MediaLimits, SampledMedia

__all__ = [
    "AudioFailure",
    "AudioTrack",
    "MediaHeader",
    "MediaLimits",
    "PendingMedia",
    "SampledMedia",
    "check_size",
    "decode_media",
    "file_sha256",
    "isolation_from_settings",
    "load_media",
    "probe_kind",
    "warm_up",
]


def check_size(path: str | Path, max_bytes: int) -> int:
    """Refuse empty and oversized files before any decoding; return the size in bytes."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        raise MediaNotFound(f"cannot read {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise MediaNotFound(f"{path} is not a regular file")
    size = st.st_size
    if size == 0:
        raise EmptyMedia("the media is empty (0 bytes)")
    if size > max_bytes:
        raise MediaTooLarge(f"{size} bytes is over the limit of {max_bytes} bytes")
    return size


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def isolation_from_settings(s: Settings, start_method: str | None = None) -> IsolationLimits:
    """Isolation limits from settings; `start_method` overrides `decode_start_method` (one-shot CLI: fork)."""
    return IsolationLimits(
        timeout_seconds=s.decode_timeout_seconds,
        memory_mb=s.decode_memory_limit_mb,
        start_method=start_method or s.decode_start_method,
    )


class PendingMedia:
    """Media being decoded: inline decodes happen in `result()`, isolated ones run in a child meanwhile."""

    def __init__(self, path: str | Path, settings: Settings, start_method: str | None = None) -> None:
        check_size(path, settings.max_media_bytes)
        probe_kind(path)  # unsupported content fails here, without starting a decoder
        self.path = path
        self.limits = MediaLimits.from_settings(settings)
        self.started = time.perf_counter()
        self.job: DecodeJob | None = None
        if settings.decode_isolation == "process":
            self.job = DecodeJob(path, self.limits, isolation_from_settings(settings, start_method))

    def result(self) -> SampledMedia:
        if self.job is None:
            return decode_media(self.path, self.limits)
        return self.job.result()

    def close(self) -> None:
        if self.job is not None:
            self.job.close()


def load_media(path: str | Path, settings: Settings) -> SampledMedia:
    """Check, sniff and decode the media at `path` as the settings say (isolated by default).

    Returns frames the caller owns (a copy out of the shared buffer); `PendingMedia` avoids the copy.
    """
    pending = PendingMedia(path, settings)
    try:
        media = pending.result()
        if pending.job is None:
            return media
        return dataclasses.replace(media, frames=np.array(media.frames))
    finally:
        pending.close()
