"""In-process decoding (`decode_media`, `load_media` with inline isolation) of real generated media."""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from devtools import media_factory as mf
from service.config import Settings
from service.errors import (
    CorruptMedia,
    EmptyMedia,
    MediaError,
    MediaNotFound,
    MediaTooLarge,
    MediaTooLong,
    NoVideoStream,
    ResolutionTooHigh,
    UnsupportedMedia,
)
from service.media import MediaLimits, SampledMedia, decode_media, load_media

W, H, FPS, SECONDS, SAMPLES = 640, 360, 30, 2.0, 32
INLINE = Settings(decode_isolation="inline")
CONTAINER_NAMES = {"mp4": "mov", "mov": "mov", "mkv": "matroska", "webm": "matroska", "avi": "avi"}

Frame = npt.NDArray[np.uint8]


def _mad(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic]) -> float:
    """Mean absolute difference of two equally shaped uint8 images."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _rendered(t: float, width: int = W, height: int = H) -> Frame:
    """The factory's upright picture of a default make_face_clip at time t (the encoder's input)."""
    return mf._render_face_frame(t, width, height, "astronaut", 0.45, True)


def _full_decode(path: Path) -> dict[int, Frame]:
    """Every frame of the first video stream, plain PyAV decode (no skip_frame), keyed by frame index."""
    out: dict[int, Frame] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        for frame in container.decode(stream):
            index = round(float((frame.pts - start) * stream.time_base) * FPS)
            out[index] = frame.to_ndarray(format="rgb24")
    return out


def _assert_evenly_sampled(media: SampledMedia, duration: float, n: int = SAMPLES) -> None:
    indices, times = media.indices, media.times
    assert len(indices) == len(times) == media.frames.shape[0] == n
    assert all(b > a for a, b in itertools.pairwise(indices)), indices
    assert indices == [round(t * FPS) for t in times]
    half_frame = 0.5 / FPS + 1e-6
    assert times[0] == pytest.approx(duration / (2 * n), abs=half_frame)
    assert times[-1] == pytest.approx(duration * (2 * n - 1) / (2 * n), abs=half_frame)
    for k, t in enumerate(times):  # the frame nearest the centre of each of n equal slices
        assert abs(t - duration * (k + 0.5) / n) <= half_frame, (k, t)


def _raises_exactly(cls: type[MediaError], fn: Callable[[], object]) -> MediaError:
    with pytest.raises(MediaError) as info:
        fn()
    err = info.value
    assert type(err) is cls, f"expected {cls.__name__}, got {type(err).__name__}: {err}"
    assert err.code == cls.code
    assert err.message
    return err


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media_decode")


@pytest.fixture(scope="module")
def clip(media_dir: Path) -> Path:
    return mf.make_face_clip(media_dir / "clip.mp4", seconds=SECONDS, width=W, height=H)


@pytest.fixture(scope="module", params=sorted(CONTAINER_NAMES))
def container_clip(request: pytest.FixtureRequest, media_dir: Path) -> Path:
    return mf.make_face_clip(media_dir / f"container.{request.param}", seconds=SECONDS, width=W, height=H)


@pytest.fixture(scope="module")
def long_gop_clip(media_dir: Path) -> Path:
    return mf.make_long_gop_clip(media_dir / "long_gop.mp4", seconds=SECONDS, width=W, height=H)


@pytest.fixture(scope="module")
def long_gop_full(long_gop_clip: Path) -> dict[int, Frame]:
    return _full_decode(long_gop_clip)


@pytest.fixture(scope="module", params=[90, 180, 270])
def rotated_clip(request: pytest.FixtureRequest, media_dir: Path) -> tuple[int, Path]:
    rotate = int(request.param)
    path = mf.make_face_clip(
        media_dir / f"rot{rotate}.mp4", seconds=SECONDS, width=W, height=H, rotate=rotate
    )
    return rotate, path


# --------------------------------------------------------------------------------------------- videos


def test_every_container_decodes_evenly_spread_distinct_frames(container_clip: Path) -> None:
    media = decode_media(container_clip, MediaLimits())
    header = media.header
    assert header.kind == "video"
    assert header.container == CONTAINER_NAMES[container_clip.suffix[1:]]
    assert (header.width, header.height) == (W, H)
    assert header.duration_s == pytest.approx(SECONDS, abs=1 / FPS)
    assert header.rotation == 0
    assert not header.partial
    assert header.decode_errors == 0
    assert 0 < header.frames_decoded <= SECONDS * FPS
    assert media.frames.dtype == np.uint8
    assert media.frames.shape == (SAMPLES, H, W, 3)
    assert media.scale == 1.0
    _assert_evenly_sampled(media, SECONDS)
    # Each sample shows the picture the encoder was given at that time (lossy codecs: small error).
    for frame, t in zip(media.frames, media.times, strict=True):
        assert _mad(frame, _rendered(t)) < 8.0


@pytest.mark.parametrize("threads", [1, 2])
def test_skipping_non_reference_frames_keeps_sampled_pixels_identical(
    long_gop_clip: Path, long_gop_full: dict[int, Frame], threads: int
) -> None:
    media = decode_media(long_gop_clip, MediaLimits(decode_threads=threads))
    _assert_evenly_sampled(media, SECONDS)
    assert len(long_gop_full) == SECONDS * FPS
    # Some B-frames were really skipped (otherwise this test would prove nothing) ...
    assert media.header.frames_decoded < len(long_gop_full)
    # ... and every sampled frame is bit-identical to the same frame of a plain full decode.
    for frame, index in zip(media.frames, media.indices, strict=True):
        np.testing.assert_array_equal(frame, long_gop_full[index], err_msg=f"frame {index}")


def test_seek_mode_returns_the_same_frames_as_sequential_mode(
    long_gop_clip: Path, long_gop_full: dict[int, Frame]
) -> None:
    sequential = decode_media(long_gop_clip, MediaLimits())
    seeking = decode_media(long_gop_clip, MediaLimits(seek_above_seconds=0.5))
    assert seeking.times == sequential.times
    assert seeking.indices == sequential.indices
    np.testing.assert_array_equal(seeking.frames, sequential.frames)
    assert not seeking.header.partial
    assert (seeking.header.width, seeking.header.height) == (W, H)
    for frame, index in zip(seeking.frames, seeking.indices, strict=True):
        np.testing.assert_array_equal(frame, long_gop_full[index])


def test_rotated_clip_is_decoded_upright(rotated_clip: tuple[int, Path]) -> None:
    rotate, path = rotated_clip
    media = decode_media(path, MediaLimits())
    header = media.header
    assert (header.width, header.height) == (W, H)  # the displayed size, not the coded one
    assert header.rotation == mf.expected_av_rotation(rotate) % 360
    assert media.frames.shape == (SAMPLES, H, W, 3)
    _assert_evenly_sampled(media, SECONDS)
    for frame, t in zip(media.frames[::4], media.times[::4], strict=True):
        upright = _rendered(t)
        close = _mad(frame, upright)
        assert close < 8.0
        assert _mad(frame, np.rot90(upright, 2)) > 3 * close  # the orientation is what makes it match
        # The face photo sits where face_box_at says, in upright coordinates.
        x1, y1, x2, y2 = mf.face_box_at(t, width=W, height=H)
        assert _mad(frame[y1:y2, x1:x2], upright[y1:y2, x1:x2]) < 10.0


def test_rotated_clip_downscaled_to_working_size_stays_upright(media_dir: Path) -> None:
    path = mf.make_face_clip(media_dir / "rot90_small.mp4", seconds=1.0, width=W, height=H, rotate=90)
    media = load_media(path, Settings(decode_isolation="inline", max_working_side=256))
    assert (media.header.width, media.header.height) == (W, H)
    assert media.scale == pytest.approx(W / 256)
    assert media.frames.shape[1:] == (144, 256, 3)
    small = cv2.resize(_rendered(media.times[3]), (256, 144), interpolation=cv2.INTER_AREA)
    assert _mad(media.frames[3], small) < 8.0


def test_working_side_smaller_than_frame_downscales_but_header_keeps_full_size(clip: Path) -> None:
    full = load_media(clip, INLINE)
    small = load_media(clip, Settings(decode_isolation="inline", max_working_side=256))
    assert small.scale == pytest.approx(W / 256) and small.scale > 1
    assert small.frames.shape == (SAMPLES, 144, 256, 3)
    assert (small.header.width, small.header.height) == (W, H)
    assert small.indices == full.indices
    assert small.times == full.times
    for a, b in zip(small.frames, full.frames, strict=True):
        assert _mad(a, cv2.resize(b, (256, 144), interpolation=cv2.INTER_AREA)) < 4.0


def test_truncated_faststart_clip_decodes_its_first_part_as_partial(media_dir: Path) -> None:
    whole = mf.make_face_clip(media_dir / "faststart.mp4", seconds=SECONDS, width=W, height=H, faststart=True)
    cut = mf.make_truncated(whole, media_dir / "faststart_cut.mp4", keep_fraction=0.5)
    reference = decode_media(whole, MediaLimits())
    assert not reference.header.partial
    media = decode_media(cut, MediaLimits())
    assert media.header.partial
    assert media.header.duration_s == pytest.approx(SECONDS, abs=1 / FPS)  # from the intact index
    assert 0 < len(media.indices) < SAMPLES
    assert media.frames.shape[0] == len(media.indices) == len(media.times)
    # What decoded is the beginning of the same samples, pixel for pixel.
    n = len(media.indices)
    assert media.indices == reference.indices[:n]
    assert media.times == reference.times[:n]
    np.testing.assert_array_equal(media.frames, reference.frames[:n])


# --------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize(
    ("suffix", "container", "max_mad"), [("png", "png", 0.0), ("jpg", "jpeg", 4.0), ("webp", "webp", 4.0)]
)
def test_images_decode_as_one_frame(media_dir: Path, suffix: str, container: str, max_mad: float) -> None:
    path = mf.make_image(media_dir / f"face.{suffix}", photo="grace_hopper")
    photo = mf.face_photos()["grace_hopper"]
    media = decode_media(path, MediaLimits())
    header = media.header
    assert header.kind == "image"
    assert header.container == container
    assert (header.height, header.width) == photo.shape[:2]
    assert header.duration_s is None
    assert media.indices == [0] and media.times == [0.0] and media.scale == 1.0
    assert media.frames.shape == (1, *photo.shape)
    assert _mad(media.frames[0], photo) <= max_mad


def test_exif_orientation_6_is_applied(media_dir: Path) -> None:
    path = mf.make_image(media_dir / "exif6.jpg", photo="grace_hopper", exif_orientation=6)
    photo = mf.face_photos()["grace_hopper"]  # 512 wide, 600 high
    with Image.open(path) as stored:
        assert stored.size == (photo.shape[0], photo.shape[1])  # stored on its side
    media = decode_media(path, MediaLimits())
    assert (media.header.width, media.header.height) == (photo.shape[1], photo.shape[0])
    assert media.frames.shape == (1, *photo.shape)
    assert _mad(media.frames[0], photo) < 4.0


def test_png_named_mp4_is_sniffed_as_an_image(media_dir: Path) -> None:
    path = mf.make_png_named_mp4(media_dir / "image.mp4")
    media = load_media(path, INLINE)
    assert media.header.kind == "image"
    assert media.header.container == "png"
    np.testing.assert_array_equal(media.frames[0], mf.face_photos()["astronaut"])


def test_multi_face_image_keeps_both_faces(media_dir: Path) -> None:
    path = mf.make_multi_face_image(media_dir / "two_faces.jpg", width=1280, height=720)
    media = decode_media(path, MediaLimits())
    assert (media.header.width, media.header.height) == (1280, 720)
    frame = media.frames[0]
    scene = mf.face_free_scene(1280, 720)
    boxes = mf.multi_face_boxes(1280, 720)
    assert len(boxes) == 2
    mask = np.zeros((720, 1280), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        mask[y1:y2, x1:x2] = True
        assert _mad(frame[y1:y2, x1:x2], scene[y1:y2, x1:x2]) > 20.0  # a photo, not the background
    assert float(np.abs(frame[~mask].astype(np.int16) - scene[~mask]).mean()) < 4.0


def test_image_over_working_side_is_downscaled(media_dir: Path) -> None:
    path = mf.make_image(media_dir / "big.png", photo="scene")  # 768x512
    media = load_media(path, Settings(decode_isolation="inline", max_working_side=256))
    assert (media.header.width, media.header.height) == (768, 512)
    assert media.scale == pytest.approx(3.0)
    assert media.frames.shape == (1, 171, 256, 3)


# --------------------------------------------------------------------------------------------- bad input


def test_zero_bytes_is_empty_media(media_dir: Path) -> None:
    path = mf.make_empty(media_dir / "empty.mp4")
    _raises_exactly(EmptyMedia, lambda: decode_media(path, MediaLimits()))
    _raises_exactly(EmptyMedia, lambda: load_media(path, INLINE))


@pytest.mark.parametrize("maker", [mf.make_random_bytes, mf.make_text], ids=["random", "text"])
def test_non_media_is_unsupported(media_dir: Path, maker: Callable[[Path], Path]) -> None:
    path = maker(media_dir / f"not_media_{maker.__name__}.mp4")
    _raises_exactly(UnsupportedMedia, lambda: decode_media(path, MediaLimits()))
    _raises_exactly(UnsupportedMedia, lambda: load_media(path, INLINE))


def test_truncated_mp4_without_index_is_corrupt(clip: Path, media_dir: Path) -> None:
    path = mf.make_truncated(clip, media_dir / "cut.mp4", keep_fraction=0.5)
    _raises_exactly(CorruptMedia, lambda: load_media(path, INLINE))


@pytest.mark.parametrize("fill", ["random", "zeros"])
def test_undecodable_frames_are_corrupt(clip: Path, media_dir: Path, fill: str) -> None:
    path = mf.make_corrupt_frames(clip, media_dir / f"garbage_{fill}.mp4", fill=fill)  # type: ignore[arg-type]
    with av.open(str(path)) as container:  # the container itself is intact
        assert container.streams.video[0].frames == SECONDS * FPS
    _raises_exactly(CorruptMedia, lambda: load_media(path, INLINE))


@pytest.mark.parametrize("suffix", ["mp4", "m4a", "mkv", "webm"])
def test_audio_only_has_no_video_stream_with_audio_off(media_dir: Path, suffix: str) -> None:
    path = mf.make_audio_only(media_dir / f"audio.{suffix}", seconds=1.0)
    off = Settings(decode_isolation="inline", audio_enabled=False)
    _raises_exactly(NoVideoStream, lambda: load_media(path, off))


def test_file_over_byte_limit_is_too_large(clip: Path) -> None:
    size = clip.stat().st_size
    _raises_exactly(
        MediaTooLarge, lambda: load_media(clip, Settings(decode_isolation="inline", max_media_bytes=size - 1))
    )
    assert load_media(clip, Settings(decode_isolation="inline", max_media_bytes=size)).frames.shape[0] == 32


def test_frames_over_pixel_limit_are_refused(clip: Path, media_dir: Path) -> None:
    image = mf.make_image(media_dir / "pixels.png")  # 512x512
    _raises_exactly(
        ResolutionTooHigh,
        lambda: load_media(clip, Settings(decode_isolation="inline", max_frame_pixels=W * H - 1)),
    )
    _raises_exactly(
        ResolutionTooHigh,
        lambda: load_media(image, Settings(decode_isolation="inline", max_frame_pixels=512 * 512 - 1)),
    )
    assert load_media(clip, Settings(decode_isolation="inline", max_frame_pixels=W * H)).frames.shape[0] == 32
    assert (
        load_media(image, Settings(decode_isolation="inline", max_frame_pixels=512 * 512)).frames.shape[0]
        == 1
    )


def test_clip_over_duration_limit_is_too_long(clip: Path) -> None:
    _raises_exactly(
        MediaTooLong, lambda: load_media(clip, Settings(decode_isolation="inline", max_duration_seconds=1))
    )


def test_missing_path_or_directory_is_not_found(media_dir: Path) -> None:
    _raises_exactly(MediaNotFound, lambda: load_media(media_dir / "no_such_file.mp4", INLINE))
    _raises_exactly(MediaNotFound, lambda: load_media(media_dir, INLINE))


# --------------------------------------------------------------------------------------------- known bugs


def _with_sample_entry(src: Path, dst: Path, fourcc: bytes) -> Path:
    """Copy of an mp4 whose video sample entry (first entry of `stsd`) claims codec `fourcc`."""
    data = bytearray(src.read_bytes())
    at = data.index(b"stsd") + 16  # box type, version/flags, entry count, entry size -> entry format
    assert data[at : at + 4] == b"avc1"
    data[at : at + 4] = fourcc
    dst.write_bytes(bytes(data))
    return dst


def _png_claiming_size(src: Path, dst: Path, width: int, height: int) -> Path:
    """Copy of a PNG whose IHDR (CRC fixed) claims width x height."""
    data = bytearray(src.read_bytes())
    assert data[12:16] == b"IHDR"
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    dst.write_bytes(bytes(data))
    return dst


def test_unknown_video_codec_is_a_media_error(clip: Path, media_dir: Path) -> None:
    path = _with_sample_entry(clip, media_dir / "unknown_codec.mp4", b"zzzz")
    with pytest.raises(MediaError):
        decode_media(path, MediaLimits())


def test_mp4_cut_inside_its_index_is_a_media_error(clip: Path, media_dir: Path) -> None:
    data = clip.read_bytes()
    moov = data.index(b"moov") - 4  # the index is at the end (no faststart): an upload cut short loses it
    path = media_dir / "cut_in_moov.mp4"
    outcomes: dict[int, str] = {}
    for keep in range(moov, len(data), 4):
        path.write_bytes(data[:keep])
        try:
            decode_media(path, MediaLimits())
            outcomes[keep] = "ok"
        except MediaError as exc:
            outcomes[keep] = type(exc).__name__
    assert "CorruptMedia" in outcomes.values()


def test_clean_short_clip_reports_no_decode_errors(media_dir: Path) -> None:
    path = mf.make_face_clip(media_dir / "one_second.mp4", seconds=1.0, width=W, height=H)
    media = decode_media(path, MediaLimits())
    assert media.frames.shape[0] == FPS  # 32 samples of 30 frames: every frame once
    assert not media.header.partial
    assert media.header.decode_errors == 0


def test_image_declaring_huge_size_is_resolution_too_high(media_dir: Path) -> None:
    small = mf.make_image(media_dir / "small.png", photo="scene")
    path = _png_claiming_size(small, media_dir / "huge.png", 20_000, 20_000)  # 400 MP, a few KB on disk
    _raises_exactly(ResolutionTooHigh, lambda: decode_media(path, MediaLimits()))
