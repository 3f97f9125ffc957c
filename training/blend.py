"""How fakes are made here: Self-Blended Images (training) and cross-identity face swaps (evaluation).

Self-Blended Images (Shiohara & Yamasaki, CVPR 2022) blend a face with a colour- and geometry-transformed copy
of itself inside a blurred, randomly deformed face-hull mask: the result carries the traces every face swap
leaves (a blending boundary, colour and sharpness mismatch, slight misalignment) without any identity change,
so a classifier cannot fall back on who is pictured.

Face swaps follow the classic FaceSwap recipe (landmarks, a similarity warp from the source face onto the
target, Reinhard colour transfer in Lab, `cv2.seamlessClone`). They are only used to evaluate: a model trained
on SBI never sees them, so they measure generalisation to a manipulation method not trained on.

Only 5 landmarks (eyes, nose, mouth corners) come with the packaged detector, so the face hull is an ellipse
fitted to them (eyebrows to chin, cheek to cheek) rather than the convex hull of 68 or 81 points of the paper.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["face_hull_mask", "face_swap", "self_blend"]

RGB = npt.NDArray[np.uint8]
Mask = npt.NDArray[np.float32]
Landmarks = npt.NDArray[np.float32]  # (5, 2): left eye, right eye, nose, left mouth, right mouth


def face_hull_mask(shape: tuple[int, ...], lm: Landmarks, scale: float = 1.0) -> Mask:
    """A filled ellipse over the inner face (H, W) in {0, 1}, oriented along the eye-to-mouth axis."""
    lm = np.asarray(lm, dtype=np.float64)
    eyes, mouth = lm[:2].mean(axis=0), lm[3:].mean(axis=0)
    down = mouth - eyes
    d_ee = float(np.hypot(*(lm[1] - lm[0]))) or 1.0
    top, bottom = eyes - 0.75 * down, mouth + 0.95 * down
    centre = (top + bottom) / 2
    axes = (max(1, int(d_ee * 1.0 * scale)), max(1, int(np.hypot(*(bottom - top)) / 2 * scale)))
    angle = float(np.degrees(np.arctan2(down[1], down[0]))) - 90.0
    mask = np.zeros(shape[:2], dtype=np.uint8)
    cv2.ellipse(mask, (int(centre[0]), int(centre[1])), axes, angle, 0, 360, 1, -1)
    return mask.astype(np.float32)


def _random_odd(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi)) | 1


def _deform_mask(mask: Mask, rng: np.random.Generator) -> Mask:
    """SBI's mask variety: random elastic-ish warp, erosion or dilation, then a random double blur."""
    h, w = mask.shape
    side = max(8, int(np.sqrt(mask.sum())))
    grid = rng.normal(0, side * 0.04, (2, 4, 4)).astype(np.float32)
    dx = cv2.resize(grid[0], (w, h), interpolation=cv2.INTER_CUBIC)
    dy = cv2.resize(grid[1], (w, h), interpolation=cv2.INTER_CUBIC)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    out: npt.NDArray[np.float32] = np.asarray(cv2.remap(mask, xs + dx, ys + dy, cv2.INTER_LINEAR), np.float32)
    k = max(1, int(side * rng.uniform(0.02, 0.12)))
    kernel = np.ones((k, k), np.uint8)
    out = np.asarray(cv2.erode(out, kernel) if rng.random() < 0.5 else cv2.dilate(out, kernel), np.float32)
    for _ in range(2):
        ks = _random_odd(rng, max(3, side // 10), max(5, side // 3))
        out = np.asarray(cv2.GaussianBlur(out, (ks, ks), 0), np.float32)
    out = out / max(float(out.max()), 1e-6)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _colour_jitter(img: RGB, rng: np.random.Generator) -> RGB:
    """SBI's source-side transform: RGB shift, hue/saturation/value shift, brightness and contrast."""
    x = img.astype(np.float32)
    x += rng.uniform(-20, 20, 3).astype(np.float32)
    hsv = cv2.cvtColor(np.clip(x, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-0.3, 0.3) * 10) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] + rng.uniform(-30, 30), 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] + rng.uniform(-20, 20), 0, 255)
    x = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    x = (x - 128) * rng.uniform(0.85, 1.15) + 128 + rng.uniform(-15, 15)
    return np.clip(x, 0, 255).astype(np.uint8)


def _sharpness_jitter(img: RGB, rng: np.random.Generator) -> RGB:
    if rng.random() < 0.5:
        h, w = img.shape[:2]
        f = rng.uniform(0.5, 0.9)
        small = cv2.resize(img, (max(1, int(w * f)), max(1, int(h * f))), interpolation=cv2.INTER_AREA)
        return np.asarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), np.uint8)
    blur = cv2.GaussianBlur(img, (0, 0), 1.0)
    return np.asarray(cv2.addWeighted(img, 1.6, blur, -0.6, 0), np.uint8)


def _small_shift(img: RGB, rng: np.random.Generator, side: float) -> RGB:
    """SBI's geometric source transform: a slight rescale and translation of the face."""
    h, w = img.shape[:2]
    s = rng.uniform(0.95, 1.05)
    tx, ty = rng.uniform(-0.03, 0.03, 2) * side
    m = np.array([[s, 0, (1 - s) * w / 2 + tx], [0, s, (1 - s) * h / 2 + ty]], dtype=np.float32)
    return np.asarray(cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT), dtype=np.uint8)


def self_blend(img: RGB, lm: Landmarks, rng: np.random.Generator) -> tuple[RGB, Mask]:
    """One Self-Blended Image of `img` (RGB uint8) and the blend mask used (H, W) in [0, 1]."""
    side = float(np.hypot(*(lm[1] - lm[0]))) * 2.5
    source = img.copy()
    if rng.random() < 0.5:
        source = _colour_jitter(source, rng)
    else:
        source = _sharpness_jitter(source, rng)
        if rng.random() < 0.5:
            source = _colour_jitter(source, rng)
    source = _small_shift(source, rng, side)
    mask = _deform_mask(face_hull_mask(img.shape, lm, rng.uniform(0.85, 1.1)), rng)
    mask *= float(rng.choice([0.25, 0.5, 0.75, 1.0, 1.0, 1.0]))
    m3 = mask[..., None]
    out = source.astype(np.float32) * m3 + img.astype(np.float32) * (1 - m3)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), mask


def _reinhard(src: RGB, tgt: RGB, mask: npt.NDArray[np.bool_]) -> RGB:
    """Match the Lab mean and standard deviation of `src` to `tgt` inside `mask` (colour transfer)."""
    s = cv2.cvtColor(src, cv2.COLOR_RGB2LAB).astype(np.float32)
    t = cv2.cvtColor(tgt, cv2.COLOR_RGB2LAB).astype(np.float32)
    sm, ss = s[mask].mean(axis=0), s[mask].std(axis=0) + 1e-3
    tm, ts = t[mask].mean(axis=0), t[mask].std(axis=0) + 1e-3
    out = (s - sm) / ss * ts + tm
    return np.asarray(cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB), dtype=np.uint8)


def face_swap(src: RGB, src_lm: Landmarks, tgt: RGB, tgt_lm: Landmarks) -> RGB:
    """The face of `src` placed on `tgt`: similarity warp on 5 landmarks, colour transfer, Poisson blend."""
    m, _ = cv2.estimateAffinePartial2D(
        np.asarray(src_lm, np.float32), np.asarray(tgt_lm, np.float32), method=cv2.LMEDS
    )
    if m is None:
        raise ValueError("no similarity transform between the two landmark sets")
    h, w = tgt.shape[:2]
    warped = np.asarray(
        cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT), dtype=np.uint8
    )
    hull = face_hull_mask(tgt.shape, tgt_lm, 0.95)
    inner = hull > 0
    if inner.sum() < 16:
        raise ValueError("face hull too small to swap")
    warped = _reinhard(warped, tgt, inner)
    mask = (hull * 255).astype(np.uint8)
    pad = 2  # seamlessClone needs the mask off the image border
    mask[:pad], mask[-pad:], mask[:, :pad], mask[:, -pad:] = 0, 0, 0, 0
    ys, xs = np.nonzero(mask)
    # seamlessClone places the mask's bounding-box centre at `centre`: keep the face where it is.
    centre = (int((xs.min() + xs.max() + 1) // 2), int((ys.min() + ys.max() + 1) // 2))
    return np.asarray(cv2.seamlessClone(warped, tgt, mask, centre, cv2.NORMAL_CLONE), dtype=np.uint8)
