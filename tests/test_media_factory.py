"""Sanity checks that devtools/media_factory.py writes files with the promised properties."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageOps

from devtools import media_factory as mf

W, H, SECONDS = 320, 240, 0.5  # small, quick clips: 15 frames at 30 fps


def _decode_rgb(path: Path) -> list[tuple[np.ndarray, int]]:
    """All video frames as (coded RGB array, frame.rotation)."""
    with av.open(str(path)) as container:
        return [(f.to_ndarray(format="rgb24"), f.rotation) for f in container.decode(video=0)]


def _upright(arr: np.ndarray, rotation: int) -> np.ndarray:
    return np.rot90(arr, k=rotation // 90)


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _inside(inner: tuple[int, int, int, int], outer: tuple[int, int, int, int], slack: int = 4) -> bool:
    return (
        inner[0] >= outer[0] - slack
        and inner[1] >= outer[1] - slack
        and inner[2] <= outer[2] + slack
        and inner[3] <= outer[3] + slack
    )


def test_face_photos_are_rgb_and_documented() -> None:
    photos = mf.face_photos()
    assert set(photos) == {"astronaut", "grace_hopper"}
    for name, arr in photos.items():
        assert arr.dtype == np.uint8
        assert arr.ndim == 3
        assert arr.shape[2] == 3
        assert min(arr.shape[:2]) >= 256
        assert "licence" in mf.PHOTO_SOURCES[name]
        assert name in mf.PHOTO_FACE_BOXES
    scene = mf.face_free_scene(640, 360)
    assert scene.shape == (360, 640, 3)
    assert scene.dtype == np.uint8
    assert np.array_equal(scene, mf.face_free_scene(640, 360))


def test_face_clip_mp4_properties_and_face_position(tmp_path: Path) -> None:
    kwargs: mf.ClipKwargs = {"width": 640, "height": 360, "seconds": 1.0, "fps": 30}
    path = mf.make_face_clip(tmp_path / "face.mp4", **kwargs)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert container.format.name.startswith("mov,mp4")
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.width, stream.height) == (640, 360)
        assert stream.average_rate == 30
        assert not container.streams.audio
    frames = _decode_rgb(path)
    assert len(frames) == 30
    photo = mf._scaled_photo("astronaut", round(360 * 0.45))
    first, last = mf.face_box_at(0.0, **kwargs), mf.face_box_at(29 / 30, **kwargs)
    assert last[0] - first[0] > 30, "the face should move"
    for i in (0, 29):
        x1, y1, x2, y2 = mf.face_box_at(i / 30, **kwargs)
        assert _mean_abs_diff(frames[i][0][y1:y2, x1:x2], photo) < 10


@pytest.mark.parametrize(
    ("suffix", "codec"), [(".mov", "h264"), (".mkv", "h264"), (".webm", "vp8"), (".avi", "mpeg4")]
)
def test_clip_containers(tmp_path: Path, suffix: str, codec: str) -> None:
    path = mf.make_face_clip(tmp_path / f"clip{suffix}", width=W, height=H, seconds=SECONDS)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == codec
    frames = _decode_rgb(path)
    assert len(frames) == 15
    assert frames[0][0].shape == (240, 320, 3)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm"])
@pytest.mark.parametrize("rotate", [0, 90, 180, 270])
def test_rotation_metadata_round_trip(tmp_path: Path, suffix: str, rotate: int) -> None:
    path = mf.make_face_clip(tmp_path / f"rot{suffix}", rotate=rotate, width=W, height=H, seconds=SECONDS)
    coded, rotation = _decode_rgb(path)[0]
    assert rotation == mf.AV_ROTATION[rotate]
    assert coded.shape[:2] == ((320, 240) if rotate in (90, 270) else (240, 320))
    reference = mf._render_face_frame(0.0, W, H, "astronaut", 0.45, True)
    assert _mean_abs_diff(_upright(coded, rotation), reference) < 10
    if rotate:  # the other direction (or no rotation) must not match
        wrong = np.rot90(coded, k=-rotation // 90) if rotate != 180 else coded
        assert wrong.shape != reference.shape or _mean_abs_diff(wrong, reference) > 30


def test_rotate_90_writes_phone_style_tkhd_matrix(tmp_path: Path) -> None:
    data = mf.make_face_clip(tmp_path / "r90.mp4", rotate=90, width=W, height=H, seconds=SECONDS).read_bytes()
    tkhd = data.find(b"tkhd")
    assert data[tkhd + 4] == 0  # version 0 layout
    matrix_at = tkhd + 4 + 4 + 4 * 5 + 8 + 2 * 4  # version/flags, times/ids, reserved, layer..volume
    a, b, _u, c, d, _v, _x, _y, _w = struct.unpack(">9i", data[matrix_at : matrix_at + 36])
    assert (a, b, c, d) == (0, 1 << 16, -(1 << 16), 0)  # the matrix an iPhone writes for portrait video


def test_long_gop_clip_has_b_frames_and_one_keyframe(tmp_path: Path) -> None:
    path = mf.make_long_gop_clip(tmp_path / "gop.mp4", width=320, height=240, seconds=2.0, preset="ultrafast")
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 60
    assert sum(f.key_frame for f in frames) == 1
    assert any(f.pict_type == av.video.frame.PictureType.B for f in frames)


def test_face_free_clip_and_audio_track(tmp_path: Path) -> None:
    path = mf.make_face_free_clip(tmp_path / "noface.mp4", audio=True, width=W, height=H, seconds=SECONDS)
    with av.open(str(path)) as container:
        assert container.streams.audio[0].codec_context.name == "aac"
        assert container.streams.video[0].codec_context.name == "h264"
    assert len(_decode_rgb(path)) == 15


def test_detector_agrees_with_face_box(tmp_path: Path) -> None:
    from service.faces import RetinaFaceDetector

    detector = RetinaFaceDetector(threshold=0.5)
    kwargs: mf.ClipKwargs = {"seconds": 1.0, "rotate": 90}
    frames = _decode_rgb(mf.make_face_clip(tmp_path / "det.mp4", **kwargs))
    for i in (0, 29):
        img = np.ascontiguousarray(_upright(*frames[i]))
        faces = detector.detect([img], 640)[0]
        assert len(faces) == 1
        box = tuple(int(v) for v in faces[0].box)
        assert _inside(box, mf.face_box_at(i / 30, **kwargs))
        assert _inside(box, mf.face_box_at(i / 30, tight=True, **kwargs), slack=15)
    free = _decode_rgb(mf.make_face_free_clip(tmp_path / "free.mp4", seconds=0.2))
    assert detector.detect([np.ascontiguousarray(free[0][0])], 640)[0] == []
    multi = np.asarray(Image.open(mf.make_multi_face_image(tmp_path / "two.jpg")))
    assert len(detector.detect([multi], 640)[0]) == 2


def test_audio_only(tmp_path: Path) -> None:
    path = mf.make_audio_only(tmp_path / "audio.mp4")
    with av.open(str(path)) as container:
        assert not container.streams.video
        assert container.streams.audio[0].codec_context.name == "aac"
        assert sum(1 for _ in container.decode(audio=0)) > 10


def test_truncated_and_corrupt(tmp_path: Path) -> None:
    src = mf.make_face_clip(tmp_path / "src.mp4", width=W, height=H, seconds=SECONDS)
    truncated = mf.make_truncated(src, tmp_path / "cut.mp4", keep_fraction=0.5)
    assert truncated.stat().st_size == src.stat().st_size // 2
    with pytest.raises(av.error.InvalidDataError):
        av.open(str(truncated)).close()
    faststart = mf.make_face_clip(tmp_path / "fs.mp4", faststart=True, width=W, height=H, seconds=SECONDS)
    with av.open(str(mf.make_truncated(faststart, tmp_path / "fs_cut.mp4", 0.5))) as container:
        assert container.streams.video[0].frames == 15

    corrupt = mf.make_corrupt_frames(src, tmp_path / "bad.mp4")
    assert corrupt.stat().st_size == src.stat().st_size
    decoded = 0
    with av.open(str(corrupt)) as container:
        stream = container.streams.video[0]
        assert stream.frames == 15  # the index (moov) is intact ...
        for packet in container.demux(stream):
            with contextlib.suppress(av.error.FFmpegError):
                decoded += len(packet.decode())
    assert decoded == 0  # ... but the payload is garbage
    with pytest.raises(ValueError, match="ISO-BMFF"):
        mf.make_corrupt_frames(mf.make_text(tmp_path / "t.txt"), tmp_path / "x.mp4")


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
@pytest.mark.parametrize("orientation", [None, 3, 6, 8])
def test_images_and_exif_orientation(tmp_path: Path, suffix: str, orientation: int | None) -> None:
    path = mf.make_image(tmp_path / f"img{suffix}", "grace_hopper", exif_orientation=orientation)
    reference = mf.face_photos()["grace_hopper"]
    with Image.open(path) as img:
        assert img.format == {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP"}[suffix]
        assert img.getexif().get(0x0112) == orientation
        if orientation in (6, 8):
            assert img.size == (reference.shape[0], reference.shape[1])  # stored sideways
        upright = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    assert upright.shape == reference.shape
    assert _mean_abs_diff(upright, reference) < 5


def test_odd_files(tmp_path: Path) -> None:
    png = mf.make_png_named_mp4(tmp_path / "image.mp4")
    with Image.open(png) as img:
        assert img.format == "PNG"
    assert mf.make_empty(tmp_path / "empty.mp4").stat().st_size == 0
    assert mf.make_text(tmp_path / "text.mp4").read_text(encoding="utf-8").startswith("This is not")
    a = mf.make_random_bytes(tmp_path / "a.bin", 1000, seed=1).read_bytes()
    assert len(a) == 1000
    assert a == mf.make_random_bytes(tmp_path / "b.bin", 1000, seed=1).read_bytes()
    assert a != mf.make_random_bytes(tmp_path / "c.bin", 1000, seed=2).read_bytes()
    multi = mf.make_multi_face_image(tmp_path / "multi.png", width=1280, height=720)
    with Image.open(multi) as img:
        assert img.size == (1280, 720)
    assert all(_inside(box, (0, 0, 1280, 720), slack=0) for box in mf.multi_face_boxes(1280, 720))


def test_clips_are_deterministic(tmp_path: Path) -> None:
    a = mf.make_face_clip(tmp_path / "a.mkv", audio=True, width=W, height=H, seconds=SECONDS).read_bytes()
    b = mf.make_face_clip(tmp_path / "b.mkv", audio=True, width=W, height=H, seconds=SECONDS).read_bytes()
    assert a == b


def test_cli_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sample.mp4"
    assert mf.main(["sample", str(out), "--seconds", "0.5", "--preset", "ultrafast"]) == 0
    assert "wrote" in capsys.readouterr().out
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.frames) == (1280, 720, 15)
        assert stream.average_rate == 30
