"""Decoding in an isolated child process: same results as inline, errors cross over, crashes and limits."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest

from devtools import media_factory as mf
from service.config import Settings
from service.errors import (
    CorruptMedia,
    DecodeFailed,
    EmptyMedia,
    MediaError,
    MediaNotFound,
    MediaTooLarge,
    MediaTooLong,
    NoVideoStream,
    ResolutionTooHigh,
    UnsupportedAudio,
    UnsupportedMedia,
)
from service.media import AudioTrack, MediaLimits, SampledMedia, load_media
from service.media.isolated import DecodeJob, IsolationLimits

W, H = 640, 360
UHD_FRAMES = 15  # 0.5 s at 30 fps
INLINE = Settings(decode_isolation="inline")


def _assert_same(isolated: SampledMedia, inline: SampledMedia) -> None:
    assert isolated.header == inline.header
    assert isolated.indices == inline.indices
    assert isolated.times == inline.times
    assert isolated.scale == inline.scale
    assert isolated.frames.shape == inline.frames.shape
    assert isolated.frames.dtype == inline.frames.dtype
    np.testing.assert_array_equal(isolated.frames, inline.frames)
    assert type(isolated.audio) is type(inline.audio)
    if isinstance(isolated.audio, AudioTrack) and isinstance(inline.audio, AudioTrack):
        np.testing.assert_array_equal(isolated.audio.pcm, inline.audio.pcm)
        assert (isolated.audio.codec, isolated.audio.partial) == (inline.audio.codec, inline.audio.partial)


def _decode_error(path: Path, settings: Settings) -> MediaError:
    with pytest.raises(MediaError) as info:
        load_media(path, settings)
    return info.value


def _helper_processes() -> set[int]:
    """The forkserver and resource tracker multiprocessing keeps for the whole session (not leaks)."""
    helpers = set()
    for child in psutil.Process().children():
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "forkserver" in cmdline or "resource_tracker" in cmdline:
            helpers.add(child.pid)
    return helpers


_BEFORE: set[int] = set()  # children alive before this module ran (session servers such as the Kafka broker)


@pytest.fixture(scope="module", autouse=True)
def _children_before() -> None:
    _BEFORE.update(p.pid for p in psutil.Process().children(recursive=True))


def _leftover_children() -> list[psutil.Process]:
    helpers = _helper_processes()
    left = []
    for child in psutil.Process().children(recursive=True):
        if child.pid in helpers or child.pid in _BEFORE:
            continue
        try:
            if child.status() == psutil.STATUS_ZOMBIE and child.ppid() in helpers:
                continue  # dead decoder the forkserver has not reaped yet: gone for good
        except psutil.NoSuchProcess:
            continue
        left.append(child)
    return left


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media_isolation")


@pytest.fixture(scope="module")
def clip(media_dir: Path) -> Path:
    return mf.make_face_clip(media_dir / "clip.mp4", seconds=2.0, width=W, height=H)


@pytest.fixture(scope="module")
def image(media_dir: Path) -> Path:
    return mf.make_image(media_dir / "face.jpg", photo="grace_hopper", exif_orientation=6)


@pytest.fixture(scope="module")
def large_clip(media_dir: Path) -> Path:
    """10 s of 1280x720: long enough to still be decoding when a test kills or times out the child."""
    return mf.make_face_clip(
        media_dir / "large.mp4", seconds=10.0, width=1280, height=720, preset="ultrafast"
    )


@pytest.fixture(scope="module")
def uhd_clip(media_dir: Path) -> Path:
    """A 4K clip: its decoder needs a few hundred MB beyond the interpreter."""
    return mf.make_face_clip(media_dir / "uhd.mp4", seconds=0.5, width=3840, height=2160, preset="ultrafast")


# --------------------------------------------------------------------------------------------- results


@pytest.mark.parametrize("which", ["clip", "image"])
def test_isolated_result_equals_inline_result(request: pytest.FixtureRequest, which: str) -> None:
    path: Path = request.getfixturevalue(which)
    inline = load_media(path, INLINE)
    isolated = load_media(path, Settings())
    _assert_same(isolated, inline)
    assert isolated.frames.shape[0] == (32 if which == "clip" else 1)


def test_decode_job_result_equals_inline_and_reaps_the_child(clip: Path) -> None:
    inline = load_media(clip, INLINE)
    job = DecodeJob(clip, MediaLimits(), IsolationLimits())
    try:
        media = job.result()
        _assert_same(media, inline)
        assert not job.proc.is_alive()  # reaped (killed if it had not exited yet) once the result is in
        assert job.proc.exitcode is not None
    finally:
        job.close()


def test_concurrent_jobs_do_not_mix_up_frames(clip: Path, image: Path, large_clip: Path) -> None:
    paths = [clip, image, large_clip, clip]
    expected = [load_media(p, INLINE) for p in paths]
    jobs = [DecodeJob(p, MediaLimits(), IsolationLimits()) for p in paths]
    try:
        for job, want in zip(jobs, expected, strict=True):
            _assert_same(job.result(), want)
    finally:
        for job in jobs:
            job.close()


@pytest.mark.parametrize("method", ["forkserver", "fork"])
def test_start_methods(clip: Path, image: Path, method: str) -> None:
    settings = Settings(decode_start_method=method)  # type: ignore[arg-type]
    speech = mf.make_audio_only(clip.with_name(f"audio_{method}.m4a"), seconds=0.5)
    for path in (clip, image, speech):
        _assert_same(load_media(path, settings), load_media(path, INLINE))
    hostile = mf.make_audio_only(clip.with_name(f"audio_{method}.wav"), seconds=0.2, sample_rate=384_000)
    err = _decode_error(hostile, settings)
    assert type(err) is UnsupportedAudio


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("make", "settings_kw", "cls"),
    [
        (lambda d, c: mf.make_corrupt_frames(c, d / "garbage.mp4"), {}, CorruptMedia),
        (lambda d, c: mf.make_truncated(c, d / "cut.mp4"), {}, CorruptMedia),
        (
            lambda d, c: mf.make_audio_only(d / "audio.mp4", seconds=1.0),
            {"audio_enabled": False},
            NoVideoStream,
        ),
        (
            lambda d, c: mf.make_audio_only(d / "audio.webm", seconds=1.0),
            {"audio_enabled": False},
            NoVideoStream,
        ),
        (
            lambda d, c: mf.make_audio_only(d / "a.wav", seconds=0.2, sample_rate=384_000),
            {},
            UnsupportedAudio,
        ),
        (
            lambda d, c: mf.make_audio_only(d / "a.wav", seconds=2.0),
            {"max_duration_seconds": 1},
            MediaTooLong,
        ),
        (lambda d, c: c, {"max_frame_pixels": W * H - 1}, ResolutionTooHigh),
        (lambda d, c: c, {"max_duration_seconds": 1}, MediaTooLong),
        # Refused in the caller, before any child starts:
        (lambda d, c: mf.make_empty(d / "empty.mp4"), {}, EmptyMedia),
        (lambda d, c: mf.make_random_bytes(d / "random.mp4"), {}, UnsupportedMedia),
        (lambda d, c: mf.make_text(d / "text.mp4"), {}, UnsupportedMedia),
        (lambda d, c: c, {"max_media_bytes": 1000}, MediaTooLarge),
        (lambda d, c: d / "missing.mp4", {}, MediaNotFound),
    ],
    ids=[
        "corrupt-frames",
        "truncated",
        "audio-mp4-audio-off",
        "audio-webm-audio-off",
        "audio-rate",
        "audio-duration",
        "pixels",
        "duration",
        "empty",
        "random",
        "text",
        "bytes",
        "missing",
    ],
)
def test_errors_cross_the_process_boundary_unchanged(
    media_dir: Path,
    clip: Path,
    make: Callable[[Path, Path], Path],
    settings_kw: dict[str, object],
    cls: type[MediaError],
) -> None:
    path = make(media_dir, clip)
    inline = _decode_error(path, Settings(decode_isolation="inline", **settings_kw))  # type: ignore[arg-type]
    isolated = _decode_error(path, Settings(**settings_kw))  # type: ignore[arg-type]
    assert type(inline) is cls
    assert type(isolated) is cls
    assert isolated.code == cls.code
    assert isolated.message == inline.message


# --------------------------------------------------------------------------------------------- failures


def test_decoder_crash_is_decode_failed_and_service_keeps_serving(large_clip: Path, clip: Path) -> None:
    job = DecodeJob(large_clip, MediaLimits(), IsolationLimits())
    try:
        os.kill(job.proc.pid, signal.SIGSEGV)
        started = time.perf_counter()
        with pytest.raises(DecodeFailed) as info:
            job.result()
        assert time.perf_counter() - started < 5
        assert info.value.code == "decode_failed"
        assert "crash" in info.value.message
        assert job.proc.exitcode == -signal.SIGSEGV
    finally:
        job.close()
    # The same process goes on decoding.
    _assert_same(load_media(clip, Settings()), load_media(clip, INLINE))


def test_time_limit_is_decode_failed_within_bounded_time(large_clip: Path, clip: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(DecodeFailed) as info:
        load_media(large_clip, Settings(decode_timeout_seconds=0.05))
    assert time.perf_counter() - started < 5
    assert info.value.code == "decode_failed"
    assert "time limit" in info.value.message

    job = DecodeJob(large_clip, MediaLimits(), IsolationLimits(timeout_seconds=0.05))
    try:
        with pytest.raises(DecodeFailed, match="time limit"):
            job.result()
        assert not job.proc.is_alive()  # killed, not left running
    finally:
        job.close()
    assert load_media(clip, Settings(decode_timeout_seconds=30)).frames.shape[0] == 32


@pytest.mark.parametrize("memory_mb", [64, 128])
def test_memory_limit_is_decode_failed_and_service_keeps_serving(
    uhd_clip: Path, clip: Path, memory_mb: int
) -> None:
    with pytest.raises(DecodeFailed) as info:
        load_media(uhd_clip, Settings(decode_memory_limit_mb=memory_mb))
    assert info.value.code == "decode_failed"
    # The process keeps working, and the same clip decodes with the default limit.
    media = load_media(uhd_clip, Settings())
    assert (media.header.width, media.header.height) == (3840, 2160)
    assert media.frames.shape == (UHD_FRAMES, 1080, 1920, 3)
    assert not media.header.partial
    assert media.scale == pytest.approx(2.0)
    assert load_media(clip, Settings()).frames.shape[0] == 32


def test_any_too_small_memory_limit_is_decode_failed_never_corrupt_or_partial(uhd_clip: Path) -> None:
    def outcome(mb: int) -> str:
        try:
            media = load_media(uhd_clip, Settings(decode_memory_limit_mb=mb))
        except MediaError as exc:
            return type(exc).__name__
        return "partial" if media.header.partial or media.frames.shape[0] < UHD_FRAMES else "ok"

    # Coarse steps up to the first limit that decodes completely, then every 5 MB just below it.
    seen: dict[int, str] = {}
    for mb in range(64, 4000, 25):
        seen[mb] = outcome(mb)
        if seen[mb] != "DecodeFailed":
            break
    threshold = max(seen)
    if seen[threshold] == "ok":
        for mb in range(max(64, threshold - 50), threshold, 5):
            seen[mb] = outcome(mb)
            if seen[mb] not in ("DecodeFailed", "ok"):
                break
    wrong = {mb: o for mb, o in sorted(seen.items()) if o not in ("DecodeFailed", "ok")}
    assert not wrong, f"memory limits whose failure was misreported: {wrong}"


def test_isolated_load_media_does_not_leak_frame_buffers(clip: Path) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    load_media(clip, Settings())
    gc.collect()
    before = open_fds()
    for _ in range(5):
        load_media(clip, Settings())
    gc.collect()
    assert open_fds() - before <= 1


def test_no_decoder_processes_are_left_behind() -> None:
    """Runs last in this module: every child started above is gone (forkserver and tracker excepted)."""
    deadline = time.monotonic() + 5
    while _leftover_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _leftover_children() == []
    assert [p for p in mp.active_children() if p.name == "dfguard-decoder"] == []
