"""Where the face photos come from: images inside registry packages, and folders of photos a user points at.

Nothing else is reachable (no hubs, no dataset downloads), so each package source names a package, the command
that fetches it (npm, pip, apt), the images inside it and the licence we can state for them. A source whose
package cannot be fetched is skipped with a note, never silently replaced. A folder source (`FolderSpec`, a
JSON file: `training/folders/*.json`) describes a local folder the same way, plus what packages cannot say:
whether its people are real or rendered, and which files show the same person.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "SOURCES",
    "FolderSpec",
    "Kind",
    "Photo",
    "Source",
    "folder_source",
    "iter_photos",
    "load_folder_specs",
]

Kind = Literal["real", "rendered"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

RGB = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Photo:
    """One photo: where it came from, under which terms, its pixels (RGB uint8), whether its people are real,
    and the person it shows when the source says so (photos of one person share `person`)."""

    source: str
    package: str
    member: str
    licence: str
    pixels: RGB
    kind: Kind = "real"
    person: str | None = None


@dataclass(frozen=True)
class Source:
    name: str
    package: str
    licence: str
    read: Callable[[Path], Iterator[tuple[str, bytes]]]
    kind: Kind = "real"
    same_person: tuple[tuple[str, str], ...] = ()  # (member-name prefix, person): files that show one person

    def person(self, member: str) -> str | None:
        name = Path(member).name
        for prefix, person in self.same_person:
            if name.startswith(prefix):
                return f"{self.name}:{person}"
        return None


class FolderSpec(BaseModel):
    """A local folder of photos as a training source (JSON). Its files stay where they are: they are read at
    collection time and never copied into the product."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="Source name in faces.json.")
    path: Path = Field(description="The folder; a relative path is taken from the current directory.")
    origin: str = Field(description="Where the files come from (repository and commit, URL, owner).")
    licence: str = Field(description="The terms as stated, and what follows for their use.")
    kind: Kind = Field("real", description="`rendered`: computer-generated people, never real examples.")
    same_person: dict[str, str] = Field(
        default_factory=dict, description="File-name prefix -> person: files that show the same person."
    )


def load_folder_specs(path: Path) -> list[FolderSpec]:
    """The folder specs of one JSON file (an object or a list of objects)."""
    data = json.loads(path.read_text())
    return [FolderSpec.model_validate(d) for d in (data if isinstance(data, list) else [data])]


def folder_source(spec: FolderSpec) -> Source:
    """A `Source` reading every image of `spec.path` (sorted, not recursive); missing folder: OSError."""

    def read(_: Path) -> Iterator[tuple[str, bytes]]:
        root = spec.path.resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"folder {spec.path} does not exist")
        for f in sorted(root.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                yield f"{spec.path.name}/{f.name}", f.read_bytes()

    return Source(
        spec.name,
        f"folder {spec.path} ({spec.origin})",
        spec.licence,
        read,
        kind=spec.kind,
        same_person=tuple(sorted(spec.same_person.items(), key=lambda kv: -len(kv[0]))),
    )


def _run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)


def _npm_face_api(cache: Path) -> Iterator[tuple[str, bytes]]:
    tgz = cache / "vladmandic-face-api-1.7.15.tgz"
    if not tgz.exists():
        _run(["npm", "pack", "@vladmandic/face-api@1.7.15"], cache)
    with tarfile.open(tgz) as tar:
        for m in tar.getmembers():
            if m.name.startswith("package/demo/sample") and m.name.endswith(".jpg"):
                f = tar.extractfile(m)
                if f is not None:
                    yield m.name, f.read()


def _pypi_insightface(cache: Path) -> Iterator[tuple[str, bytes]]:
    whl = cache / "insightface-2.1-py3-none-any.whl"
    if not whl.exists():
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:"]
        _run([*pip, "insightface==2.1", "-d", str(cache)], cache)
    with zipfile.ZipFile(whl) as z:
        for name in sorted(z.namelist()):
            if name.startswith("insightface/data/images/") and name.endswith((".jpg", ".png")):
                yield name, z.read(name)


def _debian_opencv_doc(cache: Path) -> Iterator[tuple[str, bytes]]:
    debs = sorted(cache.glob("opencv-doc_*_all.deb"))
    if not debs:
        _run(["apt-get", "download", "opencv-doc"], cache)
        debs = sorted(cache.glob("opencv-doc_*_all.deb"))
    out = cache / "opencv-doc"
    if not out.exists():
        _run(["dpkg-deb", "-x", str(debs[-1]), str(out)], cache)
    root = out / "usr/share/doc/opencv-doc/examples/data"
    for path in sorted(root.glob("*")):
        if path.suffix.lower() in (".jpg", ".png"):
            yield str(path.relative_to(out)), path.read_bytes()


def _skimage_astronaut(_: Path) -> Iterator[tuple[str, bytes]]:
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="PNG")  # type: ignore[no-untyped-call]
    yield "skimage.data.astronaut()", buf.getvalue()


def _matplotlib_grace_hopper(_: Path) -> Iterator[tuple[str, bytes]]:
    from matplotlib import cbook

    yield (
        "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
        Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes(),
    )


SOURCES: tuple[Source, ...] = (
    Source(
        "face-api",
        "npm @vladmandic/face-api 1.7.15",
        "package MIT; the demo photos' origin is not stated (research use only)",
        _npm_face_api,
    ),
    Source(
        "insightface",
        "PyPI insightface 2.1",
        "package MIT; the sample images' origin is not stated (research use only)",
        _pypi_insightface,
    ),
    Source(
        "opencv-doc",
        "Debian opencv-doc (4.6.0)",
        "package Apache-2.0/BSD-3; sample images as shipped by OpenCV, rights of the pictured not stated",
        _debian_opencv_doc,
    ),
    Source(
        "skimage",
        "PyPI scikit-image",
        "public domain (NASA photograph of Eileen Collins)",
        _skimage_astronaut,
    ),
    Source(
        "matplotlib",
        "PyPI matplotlib",
        "public domain (U.S. Navy photograph of Grace Hopper)",
        _matplotlib_grace_hopper,
    ),
)


def iter_photos(cache: Path, sources: Sequence[Source] = SOURCES) -> Iterator[Photo]:
    """Every photo of every source that could be fetched; failures are reported on stderr and skipped."""
    cache = cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    for src in sources:
        try:
            items = list(src.read(cache))
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"collect: source {src.name} unavailable: {exc}", file=sys.stderr)
            continue
        for member, data in items:
            with Image.open(io.BytesIO(data)) as im:
                pixels = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8)
            yield Photo(
                src.name, src.package, member, src.licence, pixels, kind=src.kind, person=src.person(member)
            )
