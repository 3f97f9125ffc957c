"""Face detection on real photos, tracking between key frames, and cropping geometry."""

from __future__ import annotations

import numpy as np
import pytest

from devtools import media_factory as mf
from service.faces import (
    Detection,
    RetinaFaceDetector,
    crop_face,
    expand_box,
    iou,
    keyframe_positions,
    track_faces,
)


@pytest.fixture(scope="module")
def detector() -> RetinaFaceDetector:
    return RetinaFaceDetector()


def _photo_face_box(name: str, img: np.ndarray) -> tuple[float, float, float, float]:
    fx1, fy1, fx2, fy2 = mf.PHOTO_FACE_BOXES[name]
    h, w = img.shape[:2]
    return (fx1 * w, fy1 * h, fx2 * w, fy2 * h)


@pytest.mark.parametrize("name", mf.FACE_PHOTOS)
@pytest.mark.parametrize("side", [320, 640])
def test_detects_the_face_where_it_is(detector: RetinaFaceDetector, name: str, side: int) -> None:
    img = mf.face_photos()[name]
    dets = detector.detect([img], side)[0]
    assert len(dets) == 1
    assert dets[0].score > 0.9
    assert iou(dets[0].box, _photo_face_box(name, img)) > 0.5
    assert dets[0].landmarks is not None and dets[0].landmarks.shape == (5, 2)


def test_no_face_in_a_face_free_scene(detector: RetinaFaceDetector) -> None:
    assert detector.detect([mf.face_free_scene(1280, 720)], 640) == [[]]


def test_batch_equals_single(detector: RetinaFaceDetector) -> None:
    img = np.ascontiguousarray(mf.face_photos()["astronaut"])
    single = detector.detect([img], 320)[0]
    batch = detector.detect([img, img[:, ::-1].copy(), img], 320)
    assert [d.box for d in batch[0]] == [d.box for d in single]
    assert [d.box for d in batch[2]] == [d.box for d in single]
    assert len(batch[1]) == 1  # mirrored face still found


def test_keyframe_positions() -> None:
    assert keyframe_positions(32, 4) == [0, 4, 8, 12, 16, 20, 24, 28, 31]
    assert keyframe_positions(1, 4) == [0]
    assert keyframe_positions(8, 4) == [0, 4, 7]
    assert keyframe_positions(0, 4) == []


def _det(x: float, score: float = 0.99) -> Detection:
    return Detection(box=(x, 100.0, x + 100.0, 220.0), score=score)


def test_tracking_interpolates_between_detections() -> None:
    keys = keyframe_positions(9, 4)  # [0, 4, 8]
    out = track_faces(keys, [[_det(0)], [_det(40)], [_det(80)]], 9, 0.3)
    xs = [faces[0].box[0] for faces in out]
    assert xs == pytest.approx([0, 10, 20, 30, 40, 50, 60, 70, 80])
    assert [f[0].tracked for f in out] == [False, True, True, True, False, True, True, True, False]
    assert {f[0].track_id for f in out} == {0}


def test_tracking_bridges_one_missed_detection() -> None:
    keys = [0, 4, 8]
    out = track_faces(keys, [[_det(0)], [], [_det(40)]], 9, 0.3)
    assert all(len(f) == 1 for f in out)
    assert out[4][0].box[0] == pytest.approx(20) and out[4][0].tracked
    assert {f[0].track_id for f in out} == {0}


def test_tracking_keeps_two_faces_apart_and_ends_vanished_tracks() -> None:
    keys = [0, 4, 8]
    dets = [[_det(0), _det(500)], [_det(10), _det(510)], [_det(20)]]
    out = track_faces(keys, dets, 9, 0.3)
    assert [len(f) for f in out] == [2, 2, 2, 2, 2, 2, 2, 1, 1]  # second face covers up to the midpoint
    ids = {f.track_id for frame in out for f in frame}
    assert len(ids) == 2
    for frame in out:
        for f in frame:
            assert (f.box[0] < 300) == (f.track_id == out[0][0].track_id)


def test_expand_box_and_clip() -> None:
    assert expand_box((100, 100, 200, 300), 0.3, 1000, 1000) == (70, 40, 230, 360)
    assert expand_box((0, 0, 100, 100), 0.5, 120, 120) == (0, 0, 120, 120)


@pytest.mark.parametrize("resize", ["linear", "area_cubic"])
def test_crop_is_isotropic_and_padded(resize: str) -> None:
    frame = np.full((400, 600, 3), 200, np.uint8)
    crop = crop_face(frame, (100, 100, 300, 200), 0.0, 224, resize)  # type: ignore[arg-type]
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    # a 200x100 face keeps its 2:1 aspect: 224x112 content, zero bands above and below
    rows = np.flatnonzero(crop[:, 112, 0])
    assert rows[0] == 56 and rows[-1] == 56 + 112 - 1
    assert np.all(crop[:56] == 0) and np.all(crop[56 + 112 :] == 0)


def test_crop_of_degenerate_box_is_black() -> None:
    frame = np.full((50, 50, 3), 255, np.uint8)
    assert not crop_face(frame, (60, 60, 70, 70), 0.0, 64).any()
