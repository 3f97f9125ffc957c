"""`dfguard score` as a user runs it: a real process, JSON on stdout, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools import media_factory as mf

DFGUARD = str(Path(sys.executable).with_name("dfguard"))


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DFGUARD, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_score_json_document(face_clip: Path) -> None:
    proc = _run("score", "--json", str(face_clip))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) >= {
        "media",
        "frames_sampled",
        "faces_detected",
        "crops_scored",
        "score",
        "decision",
        "reasons",
        "model",
        "thresholds",
        "aggregation",
        "timings_ms",
        "frames",
        "audio",
    }
    assert doc["audio"] is None  # the clip has no audio track
    assert set(doc["media"]) == {"sha256", "kind", "duration_s", "width", "height"}
    assert set(doc["timings_ms"]) == {"decode", "detect", "classify", "audio", "total"}
    assert set(doc["model"]) == {"name", "version"}
    face = doc["frames"][0]["faces"][0]
    assert len(face["box"]) == 4 and {"detector_score", "score"} <= set(face)
    assert doc["media"]["sha256"] == __import__("hashlib").sha256(face_clip.read_bytes()).hexdigest()
    assert proc.stdout.count("\n") == 1  # exactly one JSON object


def test_score_human_output(face_clip: Path) -> None:
    proc = _run("score", str(face_clip))
    assert proc.returncode == 0
    assert "model dfguard-default" in proc.stdout and "32 frames sampled" in proc.stdout


def test_score_human_output_of_an_audio_file(tmp_path: Path) -> None:
    proc = _run("score", str(mf.make_audio_only(tmp_path / "tone.flac", seconds=1.5)))
    assert proc.returncode == 0, proc.stderr
    first, second, third = proc.stdout.splitlines()
    assert first.endswith("ALLOW (score n/a; no_speech_found)")
    assert second.startswith("  audio, 1.5 s;")
    assert third.startswith("  speech: NO DECISION (score n/a; no_speech_found); 0.0 s of speech, 0 window")


def test_settings_come_from_dfg_environment(face_clip: Path) -> None:
    proc = _run("score", "--json", str(face_clip), env={"DFG_FRAMES_PER_VIDEO": "8"})
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["frames_sampled"] == 8


Maker = Callable[[Path], Path]

BAD_INPUTS: list[tuple[str, Maker, str]] = [
    ("empty", lambda d: mf.make_empty(d / "empty.mp4"), "empty_media"),
    ("random", lambda d: mf.make_random_bytes(d / "random.mp4"), "unsupported_media"),
    ("text", lambda d: mf.make_text(d / "text.mp4"), "unsupported_media"),
    (
        "truncated",
        lambda d: mf.make_truncated(
            mf.make_face_clip(d / "t.mp4", seconds=0.5, width=320, height=240), d / "tr.mp4"
        ),
        "corrupt_media",
    ),
    (
        "corrupt",
        lambda d: mf.make_corrupt_frames(
            mf.make_face_clip(d / "c.mp4", seconds=0.5, width=320, height=240), d / "co.mp4"
        ),
        "corrupt_media",
    ),
    (
        "audio_over_rate_limit",
        lambda d: mf.make_audio_only(d / "audio.wav", seconds=0.2, sample_rate=384_000),
        "unsupported_audio",
    ),
    ("missing", lambda d: d / "does-not-exist.mp4", "media_not_found"),
]


@pytest.mark.parametrize(("name", "make", "code"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_exit_2_typed_error(tmp_path: Path, name: str, make: Maker, code: str) -> None:
    path = make(tmp_path)
    proc = _run("score", "--json", str(path))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert json.loads(proc.stdout) == {
        "error": {"code": code, "message": json.loads(proc.stdout)["error"]["message"]}
    }
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("env", "code"),
    [
        ({"DFG_MAX_MEDIA_BYTES": "1000"}, "media_too_large"),
        ({"DFG_MAX_FRAME_PIXELS": "10000"}, "resolution_too_high"),
        ({"DFG_MAX_DURATION_SECONDS": "1"}, "media_too_long"),
        ({"DFG_DECODE_TIMEOUT_SECONDS": "0.001"}, "decode_failed"),
    ],
)
def test_limits_exit_2_typed_error(face_clip: Path, env: dict[str, str], code: str) -> None:
    proc = _run("score", "--json", str(face_clip), env=env)
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"]["code"] == code


def test_png_named_mp4_is_scored_as_an_image(tmp_path: Path) -> None:
    proc = _run("score", "--json", str(mf.make_png_named_mp4(tmp_path / "photo.mp4")))
    assert proc.returncode == 0
    doc = json.loads(proc.stdout)
    assert doc["media"]["kind"] == "image" and doc["faces_detected"] == 1


def test_invalid_settings_are_an_internal_error_not_a_traceback(face_clip: Path) -> None:
    proc = _run(
        "score", "--json", str(face_clip), env={"DFG_REVIEW_THRESHOLD": "0.9", "DFG_FLAG_THRESHOLD": "0.5"}
    )
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error"]["code"] == "internal_error"
    assert "Traceback" not in proc.stderr


def test_db_upgrade_and_current(tmp_path: Path) -> None:
    from devtools.records import make_legacy_database
    from service.store import migrate

    head = migrate.head()
    fresh = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    proc = _run("db", "current", "--url", fresh)
    assert proc.returncode == 3 and f"no revision (head is {head})" in proc.stdout, proc
    proc = _run("db", "upgrade", "--url", fresh)
    assert proc.returncode == 0 and proc.stdout.endswith(f"empty -> {head} (head)\n"), proc
    proc = _run("db", "current", "--url", fresh)
    assert proc.returncode == 0 and proc.stdout.endswith(f": {head} (head)\n"), proc
    legacy = f"sqlite:///{tmp_path / 'legacy.sqlite3'}"
    make_legacy_database(legacy).dispose()  # made before migrations existed
    proc = _run("db", "upgrade", "--url", legacy)
    assert proc.returncode == 0 and "adopted as 0001" in proc.stdout, proc
    proc = _run("db", "upgrade", env={"DFG_DATABASE_URL": "postgresql+psycopg://u:pw@127.0.0.1:1/db"})
    assert proc.returncode == 1 and proc.stdout == "", proc
    assert "store_unavailable" in proc.stderr and "u:***@" in proc.stderr and "Traceback" not in proc.stderr
