"""The request mix: what a moderation gateway is sent, as real media files generated once.

Kinds and default weights: short clips 0.45 (2-3 s 640x360 H.264, with and without a face), long clips 0.10
(the 10-s 1280x720 benchmark clip), images 0.25 (JPEG and PNG, face and no face), reposts 0.10 (a
byte-identical re-upload of a clip already sent in the same run, as re-shares of a viral clip are) and bad
files 0.10 (random bytes, an mp4 cut in half with its index lost, an empty file). Every file comes from
`devtools/media_factory.py` (deterministic bytes), is written once into the cache directory (temporary name,
then an atomic rename, so concurrent runs can share the cache) and is reused by later runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devtools import media_factory as mf

__all__ = [
    "DEFAULT_CACHE_DIR",
    "DEFAULT_WEIGHTS",
    "KINDS",
    "MediaFile",
    "build_media",
    "parse_mix",
]

KINDS: tuple[str, ...] = ("short_clip", "long_clip", "image", "repost", "bad")
"""Request kinds; a repost has no file of its own (it re-sends a clip chosen from those sent before)."""

DEFAULT_WEIGHTS: dict[str, float] = {
    "short_clip": 0.45,
    "long_clip": 0.10,
    "image": 0.25,
    "repost": 0.10,
    "bad": 0.10,
}

DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "loadtest-media"

_VERSION = "v1"  # bump when a recipe changes, so a stale cache is not reused


@dataclass(frozen=True)
class MediaFile:
    name: str
    kind: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class _Recipe:
    name: str
    kind: str
    content_type: str
    make: Callable[[Path, Path], Path]  # (destination, cache dir) -> destination


def _short(seconds: float, photo: str | None) -> Callable[[Path, Path], Path]:
    def make(dest: Path, _cache: Path) -> Path:
        if photo is None:
            return mf.make_face_free_clip(dest, seconds=seconds, width=640, height=360)
        return mf.make_face_clip(dest, seconds=seconds, width=640, height=360, photo=photo)

    return make


def _image(photo: str) -> Callable[[Path, Path], Path]:
    def make(dest: Path, _cache: Path) -> Path:
        return mf.make_image(dest, photo)

    return make


def _truncated(dest: Path, cache: Path) -> Path:
    # Half of the 2-s face clip: its `moov` index is at the end, so the upload cannot be opened.
    return mf.make_truncated(_ensure(cache, _RECIPES_BY_NAME["short_face_2s.mp4"]), dest, 0.5)


_RECIPES: tuple[_Recipe, ...] = (
    _Recipe("short_face_2s.mp4", "short_clip", "video/mp4", _short(2.0, "astronaut")),
    _Recipe("short_face_3s.mp4", "short_clip", "video/mp4", _short(3.0, "grace_hopper")),
    _Recipe("short_noface_2.5s.mp4", "short_clip", "video/mp4", _short(2.5, None)),
    _Recipe("long_sample_10s_720p.mp4", "long_clip", "video/mp4", lambda d, _c: mf.make_sample_clip(d)),
    _Recipe("image_face.jpg", "image", "image/jpeg", _image("astronaut")),
    _Recipe("image_face.png", "image", "image/png", _image("grace_hopper")),
    _Recipe("image_scene.jpg", "image", "image/jpeg", _image("scene")),
    _Recipe("bad_random.mp4", "bad", "video/mp4", lambda d, _c: mf.make_random_bytes(d, 65_536, seed=7)),
    _Recipe("bad_truncated.mp4", "bad", "video/mp4", _truncated),
    _Recipe("bad_empty.mp4", "bad", "video/mp4", lambda d, _c: mf.make_empty(d)),
)
_RECIPES_BY_NAME = {r.name: r for r in _RECIPES}


def _ensure(cache: Path, recipe: _Recipe) -> Path:
    """The recipe's file in the cache, generated first if missing."""
    path = cache / recipe.name
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    # Same suffix as the target: media_factory picks the container and image format from it.
    tmp = cache / f".tmp-{os.getpid()}-{recipe.name}"
    try:
        recipe.make(tmp, cache)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def build_media(cache_dir: Path = DEFAULT_CACHE_DIR) -> dict[str, list[MediaFile]]:
    """Every file of the mix, loaded in memory (sending never touches the disk), grouped by kind."""
    cache = cache_dir / _VERSION
    out: dict[str, list[MediaFile]] = {}
    for recipe in _RECIPES:
        data = _ensure(cache, recipe).read_bytes()
        out.setdefault(recipe.kind, []).append(MediaFile(recipe.name, recipe.kind, recipe.content_type, data))
    return out


def parse_mix(text: str) -> dict[str, float]:
    """`short_clip=0.5,bad=0.2` -> weights; kinds left out keep their default weight (0 removes one)."""
    weights = dict(DEFAULT_WEIGHTS)
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, sep, value = item.partition("=")
        kind = kind.strip()
        if not sep or kind not in KINDS:
            raise ValueError(f"bad mix item {item!r}; expected KIND=WEIGHT with KIND in {', '.join(KINDS)}")
        weight = float(value)
        if weight < 0:
            raise ValueError(f"negative weight for {kind}")
        weights[kind] = weight
    if sum(weights.values()) <= 0:
        raise ValueError("the mix has no positive weight")
    return weights
