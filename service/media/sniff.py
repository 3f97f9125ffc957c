"""Decide what a file is from its first bytes, never from its name.

Forcing the demuxer from the magic bytes also keeps FFmpeg away from demuxers that open other files or
URLs named inside the media (HLS, concat, image2 patterns): only the formats below are ever opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from service.errors import EmptyMedia, UnsupportedMedia

SNIFF_BYTES = 64

_MP4_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"}


@dataclass(frozen=True)
class Sniffed:
    kind: Literal["video", "image", "audio"]
    format: str  # FFmpeg demuxer for videos and audio, Pillow format for images


def sniff(head: bytes) -> Sniffed:
    """Classify media by its magic bytes.

    Raises:
        EmptyMedia: no bytes at all.
        UnsupportedMedia: not one of the image or video formats dfguard analyses.
    """
    if not head:
        raise EmptyMedia("the media is empty (0 bytes)")
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed("image", "JPEG")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed("image", "PNG")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Sniffed("image", "WEBP")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return Sniffed("image", "GIF")
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return Sniffed("video", "avi")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return Sniffed("video", "matroska")  # also WebM
    if len(head) >= 8 and head[4:8] in _MP4_BOXES:
        return Sniffed("video", "mov")  # mp4, mov, m4v, 3gp; also m4a (audio only: the decoder tells)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return Sniffed("audio", "wav")
    if head.startswith(b"fLaC"):
        return Sniffed("audio", "flac")
    if head.startswith(b"OggS"):
        return Sniffed("audio", "ogg")  # Opus or Vorbis (Ogg video, Theora, is not supported)
    if head.startswith(b"ID3") or _mpeg_audio_frame(head):
        return Sniffed("audio", "mp3")
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return Sniffed("audio", "aac")  # ADTS
    raise UnsupportedMedia(
        "not a supported image (jpeg, png, webp, gif), video (mp4, mov, webm, mkv, avi) or audio "
        "(m4a/aac, mp3, wav, flac, ogg/opus)"
    )


def _mpeg_audio_frame(head: bytes) -> bool:
    """An MPEG-1/2 layer III frame header: 11 sync bits, a version and layer III, a valid bitrate and rate."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3
    bitrate, rate = head[2] >> 4, (head[2] >> 2) & 3
    return version != 1 and layer == 1 and bitrate not in (0, 15) and rate != 3
