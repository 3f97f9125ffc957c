"""The whole scoring path on real generated media: faces where they are, none where there are none."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools import media_factory as mf
from service.compose import build_pipeline
from service.errors import CorruptMedia
from service.faces import iou
from service.pipeline import Pipeline
from service.schemas import ScoreResult


def test_face_clip_faces_found_where_they_are(pipeline: Pipeline, face_clip: Path) -> None:
    r = pipeline.score_file(face_clip)
    assert r.media.kind == "video" and (r.media.width, r.media.height) == (640, 360)
    assert r.media.duration_s == pytest.approx(2.0, abs=0.05)
    assert r.frames_sampled == 32
    assert r.faces_detected == 32  # one face on every sampled frame
    for frame in r.frames:
        (face,) = frame.faces
        expected = mf.face_box_at(frame.time_s, width=640, height=360, tight=True)
        assert iou(face.box, expected) > 0.5, (frame.index, face.box, expected)
        assert frame.index == round(frame.time_s * 30)
    assert len({f.faces[0].track_id for f in r.frames}) == 1  # one person, one track
    assert r.score is not None and 0.0 <= r.score <= 1.0
    assert r.decision in ("allow", "review", "flag")
    assert "untrained_model" not in r.reasons  # the bundled default is a trained model
    assert r.model.name == "dfguard-default"
    assert r.thresholds.source == "ensemble"  # the bundle's own calibrated thresholds
    assert r.timings_ms.total >= r.timings_ms.decode


def test_face_free_clip_is_allowed_with_no_score(pipeline: Pipeline, face_free_clip: Path) -> None:
    r = pipeline.score_file(face_free_clip)
    assert r.faces_detected == 0
    assert r.score is None
    assert r.decision == "allow"
    assert r.reasons[0] == "no_face_found"


def test_multi_face_image(pipeline: Pipeline, media_dir: Path) -> None:
    path = mf.make_multi_face_image(media_dir / "two.jpg")
    r = pipeline.score_file(path)
    assert r.media.kind == "image" and r.media.duration_s is None
    assert r.frames_sampled == 1 and r.faces_detected == 2
    boxes = [f.box for f in r.frames[0].faces]
    for rect in mf.multi_face_boxes():
        assert any(iou(b, rect) > 0 and b[0] >= rect[0] - 4 and b[2] <= rect[2] + 4 for b in boxes)


def test_rotated_clip_boxes_are_in_the_upright_frame(pipeline: Pipeline, media_dir: Path) -> None:
    path = mf.make_face_clip(media_dir / "rot90.mp4", seconds=1.0, width=640, height=360, rotate=90)
    r = pipeline.score_file(path)
    assert (r.media.width, r.media.height) == (640, 360)
    assert r.faces_detected >= 30
    for frame in r.frames:
        for face in frame.faces:
            expected = mf.face_box_at(frame.time_s, width=640, height=360, rotate=90, tight=True)
            assert iou(face.box, expected) > 0.4


def test_large_frames_are_scored_at_working_size_boxes_in_full_size(media_dir: Path) -> None:
    from service.config import Settings

    settings = Settings(max_working_side=640, frames_per_video=4)
    p = build_pipeline(settings)
    path = mf.make_face_clip(media_dir / "1080.mp4", seconds=0.5, width=1920, height=1080)
    r = p.score_file(path)
    assert (r.media.width, r.media.height) == (1920, 1080)
    for frame in r.frames:
        (face,) = frame.faces
        expected = mf.face_box_at(frame.time_s, width=1920, height=1080, tight=True)
        assert iou(face.box, expected) > 0.5


def test_partially_decoded_is_reported(pipeline: Pipeline, media_dir: Path) -> None:
    full = mf.make_face_clip(media_dir / "fs.mp4", seconds=2.0, width=640, height=360, faststart=True)
    cut = mf.make_truncated(full, media_dir / "cut.mp4", keep_fraction=0.5)
    r = pipeline.score_file(cut)
    assert "partially_decoded" in r.reasons
    assert 0 < r.frames_sampled < 32


def test_result_round_trips_through_json(pipeline: Pipeline, face_clip: Path) -> None:
    r = pipeline.score_file(face_clip)
    assert ScoreResult.model_validate_json(r.model_dump_json()) == r


def test_pipeline_keeps_serving_after_bad_media(pipeline: Pipeline, media_dir: Path, face_clip: Path) -> None:
    bad = mf.make_corrupt_frames(face_clip, media_dir / "corrupt.mp4")
    with pytest.raises(CorruptMedia):
        pipeline.score_file(bad)
    assert pipeline.score_file(face_clip).faces_detected == 32


def test_classifying_detected_crops_only(pipeline: Pipeline, face_clip: Path) -> None:
    """`classify_crops=detected` (the default) scores the key-frame crops only; every face still gets its
    track's score."""
    from service.config import Settings

    assert Settings().classify_crops == "detected"
    every = Settings(classify_crops="all", decode_isolation="inline")
    full = Pipeline(every, pipeline.detector, pipeline.backend).score_file(face_clip)
    sparse = pipeline.score_file(face_clip)
    faces = [f for fr in sparse.frames for f in fr.faces]
    detected = [f for f in faces if not f.tracked]
    assert full.crops_scored == full.faces_detected == 32
    assert sparse.faces_detected == 32 and sparse.crops_scored == len(detected) < 32
    assert all(f.scored == (not f.tracked) for f in faces)
    own = {(fr.index, f.track_id): f.score for fr in full.frames for f in fr.faces}
    for fr in sparse.frames:
        for f in fr.faces:
            if f.scored:  # the same crop as in the full run: the same score
                assert f.score == pytest.approx(own[(fr.index, f.track_id)], abs=1e-5)
            else:  # a tracked face shows one of its track's classified scores
                assert f.score in {d.score for d in detected if d.track_id == f.track_id}
