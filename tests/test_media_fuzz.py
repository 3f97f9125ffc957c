"""Whatever bytes arrive, the media stage returns frames or raises a MediaError; nothing else."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from devtools import media_factory as mf
from service.config import Settings
from service.errors import MediaError
from service.media import AudioFailure, AudioTrack, MediaLimits, SampledMedia, decode_media, load_media

MAGIC: dict[str, bytes] = {
    "mp4": b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41",
    "mp4-moov": b"\x00\x00\x01\x00moov\x00\x00\x00\x6cmvhd",
    "matroska": bytes.fromhex("1a45dfa3a34286810142f7810142f2810442f381084282886d6174726f736b61"),
    "webm": bytes.fromhex("1a45dfa39f4286810142f7810142f2810442f381084282847765626d"),
    "avi": b"RIFF\x00\x10\x00\x00AVI LIST\x00\x01\x00\x00hdrlavih",
    "webp": b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    "jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "gif": b"GIF89a",
    "wav": b"RIFF\x24\x10\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x80\x3e\x00\x00",
    "flac": b"fLaC\x00\x00\x00\x22",
    "ogg": b"OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00",
    "mp3-id3": b"ID3\x04\x00\x00\x00\x00\x00\x00",
    "mp3-frame": b"\xff\xfb\x90\x64",
    "adts": b"\xff\xf1\x50\x80\x02\x1f\xfc",
}
LIMITS = MediaLimits(audio=True)  # as served: audio tracks and audio-only media are decoded too
ISOLATED = Settings()
FUZZ = settings(
    deadline=None,
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_counter = itertools.count()
Flips = list[tuple[float, int]]


class Seed(bytes):
    """A seed file's bytes with a short repr (hypothesis prints every argument of a failing case)."""

    name: str

    def __new__(cls, path: Path) -> Seed:
        seed = super().__new__(cls, path.read_bytes())
        seed.name = path.name
        return seed

    def __repr__(self) -> str:
        return f"<{self.name}: {len(self)} bytes>"


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media_fuzz")


@pytest.fixture(scope="module")
def small_mp4(fuzz_dir: Path) -> Seed:
    """A real 0.5-s 160x96 H.264 mp4 (about 6 KB): the seed that mutations start from."""
    return Seed(mf.make_face_clip(fuzz_dir / "seed.mp4", seconds=0.5, width=160, height=96))


@pytest.fixture(scope="module", params=["faststart.mp4", "seed.mkv", "seed.webm", "seed.avi"])
def header_first_clip(request: pytest.FixtureRequest, fuzz_dir: Path) -> Seed:
    """Small clips whose index/headers come first, so that mutations of the middle also hit them."""
    name = str(request.param)
    path = mf.make_face_clip(
        fuzz_dir / name, seconds=0.5, width=160, height=96, faststart=name == "faststart.mp4"
    )
    return Seed(path)


@pytest.fixture(scope="module", params=["seed.m4a", "seed.mp3", "seed.wav", "seed.flac", "seed.ogg"])
def audio_seed(request: pytest.FixtureRequest, fuzz_dir: Path) -> Seed:
    """Small audio-only files (0.3 s of a tone): what audio uploads are made of."""
    return Seed(mf.make_audio_only(fuzz_dir / str(request.param), seconds=0.3, sample_rate=16_000))


@pytest.fixture(scope="module")
def small_jpeg(fuzz_dir: Path) -> Seed:
    return Seed(mf.make_image(fuzz_dir / "seed.jpg", photo="scene", quality=50))


def _write(directory: Path, data: bytes) -> Path:
    path = directory / f"input-{next(_counter)}.mp4"
    path.write_bytes(data)
    return path


def _check_inline(path: Path) -> None:
    """decode_media may refuse the input with a MediaError or return well-formed frames; nothing else."""
    try:
        media = decode_media(path, LIMITS)
    except MediaError:
        return
    _check_result(media)


def _check_isolated(path: Path) -> None:
    try:
        media = load_media(path, ISOLATED)
    except MediaError:
        return
    _check_result(media)


def _check_result(media: SampledMedia) -> None:
    assert media.audio is None or isinstance(media.audio, AudioTrack | AudioFailure)
    if isinstance(media.audio, AudioTrack):
        assert media.audio.pcm.dtype == np.int16 and media.audio.pcm.ndim == 1 and len(media.audio.pcm) > 0
        assert len(media.audio.pcm) <= (LIMITS.max_duration_seconds + 1) * media.audio.sample_rate
    if media.header.kind == "audio":
        assert isinstance(media.audio, AudioTrack) and media.frames.shape[0] == 0
        return
    n = media.frames.shape[0]
    assert 1 <= n <= LIMITS.frames_per_video
    assert media.frames.dtype == np.uint8 and media.frames.ndim == 4 and media.frames.shape[3] == 3
    assert max(media.frames.shape[1:3]) <= LIMITS.max_working_side
    assert len(media.indices) == len(media.times) == n
    assert media.header.width > 0 and media.header.height > 0


def _mutate(seed: bytes, flips: Flips) -> bytes:
    """Overwrite bytes of the middle of the file (after the first 10 %, before the last 10 %)."""
    data = bytearray(seed)
    lo, hi = len(data) // 10, len(data) - len(data) // 10
    for where, value in flips:
        data[lo + int(where * (hi - lo - 1))] = value
    return bytes(data)


flips_strategy = st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), min_size=1, max_size=24)

# --------------------------------------------------------------------------------------------- in-process


@settings(FUZZ, max_examples=600)
@given(data=st.binary(max_size=4096))
@example(data=b"")
@example(data=b"\x00")
@example(data=b"This is not a video.\n" * 20)
@example(data=bytes(range(256)) * 4)
def test_random_bytes_raise_only_media_errors(fuzz_dir: Path, data: bytes) -> None:
    _check_inline(_write(fuzz_dir, data))


@settings(FUZZ, max_examples=1000)
@given(magic=st.sampled_from(sorted(MAGIC)), tail=st.binary(max_size=4096))
@example(magic="mp4", tail=b"")
@example(magic="matroska", tail=b"")
@example(magic="avi", tail=b"\x00" * 64)
@example(magic="webp", tail=b"")
@example(magic="png", tail=b"\xff" * 16)
@example(magic="jpeg", tail=b"\xff\xd9")
@example(magic="gif", tail=b"\xff\xff\xff\xff")
def test_magic_prefixed_random_bytes_raise_only_media_errors(fuzz_dir: Path, magic: str, tail: bytes) -> None:
    _check_inline(_write(fuzz_dir, MAGIC[magic] + tail))


@settings(FUZZ, max_examples=400)
@given(flips=flips_strategy)
@example(flips=[(0.5, 0)])
@example(flips=[(0.0, 0xFF), (0.25, 0xFF), (0.5, 0xFF), (0.75, 0xFF), (1.0, 0xFF)])
@example(flips=[(i / 23, 0) for i in range(24)])
def test_mutated_mp4_gives_frames_or_a_media_error(fuzz_dir: Path, small_mp4: Seed, flips: Flips) -> None:
    _check_inline(_write(fuzz_dir, _mutate(small_mp4, flips)))


@settings(FUZZ, max_examples=250)
@given(flips=flips_strategy)
@example(flips=[(0.5, 0)])
@example(flips=[(0.02734375, 32)])  # faststart.mp4: an atom size FFmpeg refuses to allocate (ENOMEM)
def test_mutated_headers_give_frames_or_a_media_error(
    fuzz_dir: Path, header_first_clip: Seed, flips: Flips
) -> None:
    _check_inline(_write(fuzz_dir, _mutate(header_first_clip, flips)))


@settings(FUZZ, max_examples=60)
@given(flips=flips_strategy, fraction=st.floats(0.05, 1.0))
@example(flips=[(0.5, 0)], fraction=1.0)
@example(flips=[(0.0, 0xFF), (0.5, 0xFF), (1.0, 0xFF)], fraction=0.5)
def test_mutated_or_cut_audio_gives_a_track_or_a_media_error(
    fuzz_dir: Path, audio_seed: Seed, flips: Flips, fraction: float
) -> None:
    data = _mutate(audio_seed, flips)
    _check_inline(_write(fuzz_dir, data[: max(1, int(fraction * len(data)))]))


@settings(FUZZ, max_examples=150)
@given(flips=flips_strategy)
@example(flips=[(0.5, 0)])
def test_mutated_jpeg_gives_a_frame_or_a_media_error(fuzz_dir: Path, small_jpeg: Seed, flips: Flips) -> None:
    _check_inline(_write(fuzz_dir, _mutate(small_jpeg, flips)))


@settings(FUZZ, max_examples=200)
@given(fraction=st.floats(0.0, 1.0, exclude_max=True))
@example(fraction=0.0)
@example(fraction=0.01)
@example(fraction=0.5)
@example(fraction=0.999)
def test_truncated_mp4_gives_frames_or_a_media_error(
    fuzz_dir: Path, small_mp4: Seed, fraction: float
) -> None:
    _check_inline(_write(fuzz_dir, small_mp4[: 1 + int(fraction * (len(small_mp4) - 1))]))


# --------------------------------------------------------------------------------------------- isolated


@settings(FUZZ, max_examples=100)
@given(magic=st.sampled_from(sorted(MAGIC)), tail=st.binary(max_size=2048))
@example(magic="mp4", tail=b"")
@example(magic="matroska", tail=b"\x00" * 32)
@example(magic="png", tail=b"")
def test_isolated_magic_prefixed_random_bytes_raise_only_media_errors(
    fuzz_dir: Path, magic: str, tail: bytes
) -> None:
    _check_isolated(_write(fuzz_dir, MAGIC[magic] + tail))


@settings(FUZZ, max_examples=40)
@given(flips=flips_strategy)
@example(flips=[(0.5, 0)])
def test_isolated_mutated_mp4_gives_frames_or_a_media_error(
    fuzz_dir: Path, small_mp4: Seed, flips: Flips
) -> None:
    _check_isolated(_write(fuzz_dir, _mutate(small_mp4, flips)))
