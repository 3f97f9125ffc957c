"""MesoNet: the Keras HDF5 import, the landmark-aligned crop, and landmarks on tracked frames.

The published weights are read from `../shared/weights/mesonet` relative to the repository root; its README
states the architecture, the crop and four sample outputs. Tests that need the weights skip, naming that path,
where it is absent (the product never reads it). The reference side here is written from the README alone:
a float64 numpy forward that reads the HDF5 arrays itself and assigns them in the order Keras' `load_weights`
does (its own convolution, pooling and layer mapping, none of the importer's), and a transcription of the
crop that rotates a reflect-padded frame and cuts the square out of it.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from service.faces import Detection, RetinaFaceDetector, crop_face, keyframe_positions, track_faces

ROOT = Path(__file__).resolve().parents[1]
MESONET = ROOT.parent / "shared" / "weights" / "mesonet"
ABSENT = f"the published MesoNet weights are not at {MESONET} (../shared/weights/mesonet from the repo root)"
needs_weights = pytest.mark.skipif(not (MESONET / "weights").is_dir(), reason=ABSENT)
FILES = ("Meso4_DF", "Meso4_F2F", "MesoInception_DF", "MesoInception_F2F")
# The README's table: P(real) of the four sample crops after a plain 256 x 256 resize.
README_P_REAL = {
    "df/df00204.jpg": {"Meso4_DF": 0.051, "Meso4_F2F": 0.816},
    "df/df01254.jpg": {"Meso4_DF": 0.035, "Meso4_F2F": 0.715},
    "real/real00240.jpg": {"Meso4_DF": 0.990, "Meso4_F2F": 0.881},
    "real/real00772.jpg": {"Meso4_DF": 0.999, "Meso4_F2F": 0.955},
}


# --- landmarks on tracked frames --------------------------------------------------------------------------


def _det(x: float, landmarks: bool = True) -> Detection:
    lm = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], np.float32) + np.float32(x)
    return Detection(box=(x, 100.0, x + 100.0, 220.0), score=0.99, landmarks=lm if landmarks else None)


def test_tracked_frames_carry_landmarks_interpolated_in_time() -> None:
    keys = keyframe_positions(9, 4)  # [0, 4, 8]
    out = track_faces(keys, [[_det(0)], [_det(40)], [_det(80)]], 9, 0.3)
    for f, faces in enumerate(out):
        (face,) = faces
        assert face.landmarks is not None
        np.testing.assert_allclose(face.landmarks, _det(10.0 * f).landmarks, atol=1e-4)  # linear in time
    # the ends hold: a track that starts late / ends early keeps its first / last landmarks
    late = track_faces(keys, [[], [_det(40)], [_det(80)]], 9, 0.3)
    assert [len(f) for f in late] == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    np.testing.assert_array_equal(late[3][0].landmarks, _det(40).landmarks)
    early = track_faces(keys, [[_det(0)], [_det(40)], []], 9, 0.3)
    assert [len(f) for f in early] == [1, 1, 1, 1, 1, 1, 1, 0, 0]
    np.testing.assert_array_equal(early[6][0].landmarks, _det(40).landmarks)
    # no landmarks on one side: none invented in between, the detected frames keep theirs
    mixed = track_faces(keys, [[_det(0)], [_det(40, landmarks=False)], [_det(80)]], 9, 0.3)
    assert mixed[2][0].landmarks is None and mixed[6][0].landmarks is None and mixed[4][0].landmarks is None
    assert mixed[0][0].landmarks is not None and mixed[8][0].landmarks is not None


def _aligned_manifest(tmp: Path) -> Path:
    """The untrained plumbing model declared with the aligned crop recipe."""
    from service.models import UNTRAINED_MANIFEST

    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(UNTRAINED_MANIFEST.parent / "model.onnx", tmp / "model.onnx")
    data = json.loads(UNTRAINED_MANIFEST.read_text())
    (tmp / "model.json").write_text(json.dumps({**data, "name": "aligned-mini", "resize": "aligned"}))
    return tmp / "model.json"


def test_classify_cuts_aligned_crops_from_tracked_landmarks(tmp_path: Path, face_clip: Path) -> None:
    from service.compose import build_pipeline
    from service.config import Settings
    from service.media import load_media

    s = Settings(
        model_paths=[_aligned_manifest(tmp_path)],
        decode_isolation="inline",
        detect_every=4,
        classify_crops="all",  # the tracked faces too: their interpolated landmarks are what is tested
    )
    pipeline = build_pipeline(s, batching=False)
    media = load_media(face_clip, s)
    faces = pipeline.detect(media)
    flat = [f for frame in faces for f in frame]
    assert any(f.tracked for f in flat) and all(f.landmarks is not None for f in flat)
    for f in flat:  # the interpolated nose stays inside the interpolated box
        x1, y1, x2, y2 = f.box
        assert f.landmarks is not None and x1 < f.landmarks[2, 0] < x2 and y1 < f.landmarks[2, 1] < y2
    got = pipeline.classify(media, faces).scores_by_model["aligned-mini"]

    def cut(use_landmarks: bool) -> np.ndarray:
        return np.stack(
            [
                crop_face(
                    media.frames[f.frame], f.box, 0.3, 224, "aligned", f.landmarks if use_landmarks else None
                )
                for f in flat
            ]
        )

    expected = pipeline.backend.predict("aligned-mini", cut(True))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    without = pipeline.backend.predict("aligned-mini", cut(False))  # the box fallback: other pixels
    assert float(np.max(np.abs(without - expected))) > 1e-4


# --- the aligned crop ---------------------------------------------------------------------------------------


def _readme_crop(
    frame: np.ndarray, lm: np.ndarray, size: int = 256, *, turn: float = 1.0, pad_mode: str = "reflect"
) -> tuple[np.ndarray, np.ndarray]:
    """The README's construction: centre = nose tip; side = max(eye distance, eyes-to-mouth midpoints) x 2.2 x
    1.3; rotate so the eye-to-mouth axis is vertical; reflect-pad outside the frame; resize to 256. Here the
    padded frame is rotated about the nose, the square cut around it, then resized (area down, linear up).
    `turn` and `pad_mode` exist to build wrong variants. Returns the crop and the rotated eye/mouth midpoints.
    """
    lm = np.asarray(lm, np.float64)
    eyes, mouth, nose = lm[:2].mean(0), lm[3:].mean(0), lm[2]
    side = max(np.linalg.norm(lm[0] - lm[1]), np.linalg.norm(mouth - eyes)) * 2.2 * 1.3
    angle = math.degrees(math.atan2(mouth[0] - eyes[0], mouth[1] - eyes[1]))  # the axis' tilt off vertical
    pad = math.ceil(side) + 2
    padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode=pad_mode)  # type: ignore[call-overload]
    centre = (float(nose[0] + pad), float(nose[1] + pad))
    rot = cv2.getRotationMatrix2D(centre, -turn * angle, 1.0)
    rotated = cv2.warpAffine(padded, rot, (padded.shape[1], padded.shape[0]), flags=cv2.INTER_LINEAR)
    n = round(side)
    patch = cv2.getRectSubPix(rotated, (n, n), centre)
    out = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA if n > size else cv2.INTER_LINEAR)
    axis = np.array([rot @ [*(p + pad), 1.0] for p in (eyes, mouth)])
    return out, axis


@pytest.fixture(scope="module")
def detector() -> RetinaFaceDetector:
    return RetinaFaceDetector()


def _astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def _case(name: str) -> np.ndarray:
    img = _astronaut()
    if name.startswith("rotated"):
        turn = cv2.getRotationMatrix2D((225.0, 125.0), float(name.split()[1]), 1.0)
        return cv2.warpAffine(img, turn, (512, 512), borderMode=cv2.BORDER_REFLECT_101)
    if name == "cut by the left edge":
        return np.ascontiguousarray(img[:, 215:])
    if name == "cut by the top edge":
        return np.ascontiguousarray(img[85:])
    return img


@pytest.mark.parametrize(
    "case", ["upright", "rotated 35", "rotated -60", "cut by the left edge", "cut by the top edge"]
)
def test_aligned_crop_follows_the_readme_construction(detector: RetinaFaceDetector, case: str) -> None:
    frame = _case(case)
    (det,) = detector.detect([frame], 640)[0]
    assert det.landmarks is not None
    ours = crop_face(frame, det.box, 0.0, 256, "aligned", det.landmarks).astype(np.float64)
    ref, (eyes, mouth) = _readme_crop(frame, det.landmarks)
    assert abs(eyes[0] - mouth[0]) < 1e-6 and eyes[1] < mouth[1]  # the transcription itself is upright
    diff = float(np.mean(np.abs(ours - ref)))
    assert diff < 2.0, diff  # two resamplings in the transcription against one: about 1 grey level
    # the comparison can fail: wrong turn, scale or padding are far off where they matter
    wrong = {"no 1.3 factor": _readme_crop(frame, det.landmarks / 1.3 + det.landmarks[2] * (1 - 1 / 1.3))[0]}
    if case.startswith("rotated"):
        wrong["turned the other way"] = _readme_crop(frame, det.landmarks, turn=-1.0)[0]
    if case.startswith("cut"):
        wrong["zero padding"] = _readme_crop(frame, det.landmarks, pad_mode="constant")[0]
    for what, crop in wrong.items():
        assert float(np.mean(np.abs(ours - crop))) > 5 * diff, what
    # and, independently of both, the detector finds the face upright and centred in our crop
    (again,) = detector.detect([ours.astype(np.uint8)], 256)[0]
    assert again.landmarks is not None
    eye_dx, eye_dy = again.landmarks[1] - again.landmarks[0]
    assert abs(math.degrees(math.atan2(eye_dy, eye_dx))) < 10
    assert np.all(np.abs(again.landmarks[2] - 128) < 30)


def test_aligned_crop_is_exact_on_an_axis_aligned_square() -> None:
    """Side exactly 256 and pixel-centred: the crop is the reflect-padded frame's pixels, no interpolation."""
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    cx, cy = 100.5, 150.5  # square from x = -27 to 228, y = 23 to 278
    half_eyes = 256 / 2.86 / 2
    lm = np.array(
        [
            [cx - half_eyes, cy - 20],
            [cx + half_eyes, cy - 20],
            [cx, cy],
            [cx - 20, cy + 30],
            [cx + 20, cy + 30],
        ]
    )
    crop = crop_face(frame, (0, 0, 1, 1), 0.0, 256, "aligned", lm)
    padded = np.pad(frame, ((0, 0), (27, 0), (0, 0)), mode="reflect")  # numpy's reflect: edge not repeated
    np.testing.assert_array_equal(crop, padded[23:279, 0:256])


def test_aligned_crop_of_degenerate_landmarks_is_black_and_bounded() -> None:
    frame = np.full((64, 64, 3), 200, np.uint8)
    assert not crop_face(frame, (0, 0, 10, 10), 0.0, 32, "aligned", np.full((5, 2), np.nan)).any()
    assert not crop_face(frame, (0, 0, 10, 10), 0.0, 32, "aligned", np.full((5, 2), 7.0)).any()
    huge = np.array([[0, 0], [1e7, 0], [5e6, 1], [0, 1e7], [1e7, 1e7]])  # a square of 30 million px a side
    assert crop_face(frame, (0, 0, 10, 10), 0.0, 32, "aligned", huge).shape == (32, 32, 3)


# --- the import -------------------------------------------------------------------------------------------


def _weighted_layers(path: Path) -> list[dict[str, np.ndarray]]:
    """The layers with weights in the file's `layer_names` order: the order in which Keras' `load_weights`
    hands them to the model's weighted layers."""
    import h5py

    out = []
    with h5py.File(path, "r") as f:
        for raw in f.attrs["layer_names"]:
            group = f[raw.decode()]
            names = [n.decode() for n in group.attrs["weight_names"]]
            if names:
                out.append({n.split("/")[-1].split(":")[0]: np.asarray(group[n], np.float64) for n in names})
    return out


def _conv_same(x: np.ndarray, p: dict[str, np.ndarray], dilation: int = 1) -> np.ndarray:
    """Keras Conv2D(padding="same", activation="relu") on NHWC, HWIO kernel, as a sum of shifted matmuls."""
    n, h, w, _ = x.shape
    kh, kw, _, cout = p["kernel"].shape
    th, tw = (kh - 1) * dilation, (kw - 1) * dilation
    xp = np.pad(x, ((0, 0), (th // 2, th - th // 2), (tw // 2, tw - tw // 2), (0, 0)))
    y = np.zeros((n, h, w, cout))
    for i in range(kh):
        for j in range(kw):
            y += xp[:, i * dilation : i * dilation + h, j * dilation : j * dilation + w] @ p["kernel"][i, j]
    return np.maximum(y + p["bias"], 0.0)


def _bn_pool(x: np.ndarray, p: dict[str, np.ndarray], size: int) -> np.ndarray:
    """BatchNormalization(epsilon=1e-3) then MaxPooling2D(size, padding="same"): -inf pad bottom/right."""
    x = (x - p["moving_mean"]) / np.sqrt(p["moving_variance"] + 1e-3) * p["gamma"] + p["beta"]
    n, h, w, c = x.shape
    oh, ow = -(-h // size), -(-w // size)
    padded = np.full((n, oh * size, ow * size, c), -np.inf)
    padded[:, :h, :w] = x
    return padded.reshape(n, oh, size, ow, size, c).max(axis=(2, 4))


def _reference_p_real(path: Path, x: np.ndarray) -> np.ndarray:
    """MesoNet's output (P(real)) on NHWC pixels / 255, float64, from the README's architecture."""
    layers = iter(_weighted_layers(path))
    inception = len(_weighted_layers(path)) == 22
    for block, pool in enumerate((2, 2, 2, 4)):
        if inception and block < 2:
            # Keras orders layers by depth from the output: the first convolutions of branches 2-4 come
            # before branch 1's 1x1 and the 3x3s of branches 2-4 (dilations 1, 2, 3)
            b2a, b3a, b4a, b1, b2b, b3b, b4b = (next(layers) for _ in range(7))
            x = np.concatenate(
                [
                    _conv_same(x, b1),
                    _conv_same(_conv_same(x, b2a), b2b),
                    _conv_same(_conv_same(x, b3a), b3b, 2),
                    _conv_same(_conv_same(x, b4a), b4b, 3),
                ],
                axis=-1,
            )
        else:
            x = _conv_same(x, next(layers))
        x = _bn_pool(x, next(layers), pool)
    hidden, out = next(layers), next(layers)
    y = x.reshape(len(x), -1) @ hidden["kernel"] + hidden["bias"]  # Keras flattens HWC
    y = np.where(y > 0, y, 0.1 * y)
    z = (y @ out["kernel"] + out["bias"])[:, 0]
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def _samples(size: int = 256) -> np.ndarray:
    """The README's four sample crops, plain resize (Pillow's default, bicubic: it reproduces the table)."""
    imgs = [Image.open(MESONET / "test_images" / name).convert("RGB") for name in README_P_REAL]
    return np.stack([np.asarray(im.resize((size, size), Image.Resampling.BICUBIC)) for im in imgs])


def _fields(size: int = 256) -> np.ndarray:
    """Smooth random colour fields: inputs on which every net answers away from 0 and 1."""
    rng = np.random.default_rng(7)
    out = []
    for cells in (4, 4, 4, 16, 16, 16):
        f = cv2.resize(rng.uniform(0, 255, (cells, cells, 3)), (size, size), interpolation=cv2.INTER_CUBIC)
        out.append(np.clip(f + rng.normal(0, 8, f.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The four published files imported through the CLI: file stem -> manifest."""
    if not (MESONET / "weights").is_dir():
        pytest.skip(ABSENT)
    pytest.importorskip("torch")
    pytest.importorskip("h5py")
    from service.cli import main as cli_main

    out = tmp_path_factory.mktemp("meso")
    paths = [str(MESONET / "weights" / f"{name}.h5") for name in FILES]
    assert (
        cli_main(["models", "import", "--family", "meso", "--threads", "1", "--out", str(out), *paths]) == 0
    )
    yield {name: out / f"meso-{name.lower()}" / "model.json" for name in FILES}


@pytest.mark.training
@needs_weights
def test_readme_sample_outputs_through_the_imported_onnx(imported: dict[str, Path]) -> None:
    from service.inference import OnnxRuntimeBackend

    crops = _samples()
    for name in ("Meso4_DF", "Meso4_F2F"):
        backend = OnnxRuntimeBackend([imported[name]], threads=1)
        p_fake = backend.predict(backend.models[0].name, crops)
        expected_real = np.array([row[name] for row in README_P_REAL.values()])
        np.testing.assert_allclose(1.0 - p_fake, expected_real, atol=1e-3, err_msg=name)


@pytest.mark.training
@needs_weights
@pytest.mark.parametrize("name", FILES)
def test_imported_onnx_equals_an_independent_float64_forward(imported: dict[str, Path], name: str) -> None:
    from service.inference import OnnxRuntimeBackend

    crops = np.concatenate([_samples(), _fields()])
    backend = OnnxRuntimeBackend([imported[name]], threads=1)
    p_fake = backend.predict(backend.models[0].name, crops).astype(np.float64)
    p_real = _reference_p_real(MESONET / "weights" / f"{name}.h5", crops.astype(np.float64) / 255.0)
    assert np.sum((p_real > 0.01) & (p_real < 0.99)) >= 2, p_real  # not only saturated outputs
    assert float(np.max(np.abs(p_fake - (1.0 - p_real)))) < 1e-4


@pytest.mark.training
@needs_weights
@pytest.mark.parametrize("name", ["Meso4_DF", "MesoInception_DF"])
def test_same_pooling_on_sizes_that_do_not_divide(name: str) -> None:
    """At 250 px the pools see 125 and 63 (odd): Keras pads bottom/right, and the rebuild must agree."""
    torch = pytest.importorskip("torch")
    from service.models.mesonet import build_mesonet, detect_arch, read_keras_weights

    layers = read_keras_weights(MESONET / "weights" / f"{name}.h5")
    net = build_mesonet(detect_arch(layers), layers)
    x = np.concatenate([_samples(250), _fields(250)]).astype(np.float64) / 255.0
    with torch.no_grad():
        logits = net(torch.from_numpy(x.transpose(0, 3, 1, 2)).float()).numpy()[:, 0]
    p_real = _reference_p_real(MESONET / "weights" / f"{name}.h5", x)
    assert float(np.max(np.abs(1.0 / (1.0 + np.exp(-logits.astype(np.float64))) - p_real))) < 1e-4


@pytest.mark.training
@needs_weights
def test_manifest_records_source_and_licence_files_travel(imported: dict[str, Path], tmp_path: Path) -> None:
    import hashlib

    from service.models.manifest import load_manifest

    for name, path in imported.items():
        m, _ = load_manifest(path)
        assert (m.input_size, m.resize, m.mean, m.std) == (256, "aligned", (0.0,) * 3, (1.0,) * 3)
        assert (
            m.source is not None
            and m.source.commit == "2144d56"
            and "DariusAf/MesoNet" in m.source.repository
        )
        assert (
            m.source.sha256 == hashlib.sha256((MESONET / "weights" / f"{name}.h5").read_bytes()).hexdigest()
        )
        assert m.licence.startswith("Apache-2.0") and m.source.licence_files == ("LICENSE", "NOTICE")
        for f in ("LICENSE", "NOTICE"):
            assert (path.parent / f).read_bytes() == (MESONET / f).read_bytes()
    copy = tmp_path / "copy"
    shutil.copytree(imported["Meso4_DF"].parent, copy)
    (copy / "NOTICE").unlink()
    with pytest.raises(FileNotFoundError, match="NOTICE"):
        load_manifest(copy / "model.json")


@pytest.mark.training
@needs_weights
@pytest.mark.parametrize("target", ["gpu", "cpu"])
def test_triton_repository_for_a_256_px_member(
    imported: dict[str, Path], tmp_path: Path, target: str
) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from service.models import DEFAULT_MODEL
    from service.triton.repo import build_repo

    repo = build_repo([DEFAULT_MODEL, imported["Meso4_DF"]], tmp_path, target)  # type: ignore[arg-type]
    member = text_format.Parse(
        (repo / "meso-meso4_df" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert (
        list(member.input[0].dims) == [256, 256, 3]
        and member.input[0].data_type == model_config_pb2.TYPE_UINT8
    )
    ensemble = text_format.Parse(
        (repo / "ensemble" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert len(ensemble.input) == 2  # its own crops: another size and recipe than the default model's
    for f in ("LICENSE", "NOTICE", "model.json", "model.onnx"):
        assert (repo / "meso-meso4_df" / "1" / f).is_file(), f


# --- files that are not MesoNet ---------------------------------------------------------------------------


def _write_keras(path: Path, layers: list[tuple[str, dict[str, np.ndarray]]]) -> Path:
    """A Keras 2 weights-only HDF5 file (`save_weights` layout)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([name.encode() for name, _ in layers], dtype="S")
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.1.5"
        for name, arrays in layers:
            g = f.create_group(name)
            g.attrs["weight_names"] = np.array([f"{name}/{k}:0".encode() for k in arrays], dtype="S")
            for k, a in arrays.items():
                g.create_dataset(f"{name}/{k}:0", data=a.astype(np.float32))
    return path


def _random_meso4() -> list[tuple[str, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(0)
    layers: list[tuple[str, dict[str, np.ndarray]]] = []
    cin = 3
    for i, (k, f) in enumerate(((3, 8), (5, 8), (5, 16), (5, 16))):
        fan = k * k * cin
        layers.append(
            (
                f"conv2d_{i + 1}",
                {"kernel": rng.normal(0, 1.4 / fan**0.5, (k, k, cin, f)), "bias": rng.normal(0, 0.05, f)},
            )
        )
        bn = {"gamma": rng.uniform(0.5, 1.5, f), "beta": rng.normal(0, 0.1, f)}
        bn |= {"moving_mean": rng.uniform(0, 0.5, f), "moving_variance": rng.uniform(0.05, 0.5, f)}
        layers.append((f"batch_normalization_{i + 1}", bn))
        cin = f
    layers.append(("dense_1", {"kernel": rng.normal(0, 1 / 32, (1024, 16)), "bias": np.zeros(16)}))
    layers.append(("dense_2", {"kernel": rng.normal(0, 1 / 4, (16, 1)), "bias": np.zeros(1)}))
    return layers


@pytest.fixture
def licence_dir(tmp_path: Path) -> Path:
    d = tmp_path / "licence"
    d.mkdir()
    (d / "LICENSE").write_text("Apache License\nVersion 2.0, January 2004\n(stand-in for the test)\n")
    (d / "NOTICE").write_text("stand-in notice\n")
    return d


@pytest.mark.training
def test_a_random_meso4_in_keras_layout_imports_exactly(tmp_path: Path, licence_dir: Path) -> None:
    """The import path without the published files: random weights saved in the Keras layout."""
    pytest.importorskip("torch")
    from service.cli import main as cli_main
    from service.inference import OnnxRuntimeBackend

    layers = _random_meso4()
    crops = _fields()
    # spread the random head so outputs are not stuck at 0 or 1, where a parity check would prove nothing
    p = _reference_p_real(_write_keras(tmp_path / "raw.h5", layers), crops.astype(np.float64) / 255.0)
    z = np.log(p / (1 - p))
    gain = 1.5 / z.std()
    layers[-1] = ("dense_2", {"kernel": layers[-1][1]["kernel"] * gain, "bias": np.array([-z.mean() * gain])})
    h5 = _write_keras(tmp_path / "random_meso4.h5", layers)
    argv = ["models", "import", "--family", "meso", "--arch", "meso4", "--licence-dir", str(licence_dir)]
    assert cli_main([*argv, "--name", "meso-random", "--threads", "1", "--out", str(tmp_path), str(h5)]) == 0
    backend = OnnxRuntimeBackend([tmp_path / "meso-random" / "model.json"], threads=1)
    p_fake = backend.predict("meso-random", crops).astype(np.float64)
    p_real = _reference_p_real(h5, crops.astype(np.float64) / 255.0)
    assert np.ptp(p_real) > 0.05, p_real
    assert float(np.max(np.abs(p_fake - (1.0 - p_real)))) < 1e-4
    assert (
        "not one of the four published files"
        in json.loads((tmp_path / "meso-random" / "model.json").read_text())["description"]
    )


@pytest.mark.training
def test_files_that_are_not_mesonet_are_refused(
    tmp_path: Path, licence_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    from service.cli import main as cli_main
    from service.models.mesonet import MesoNetFileError, import_mesonet

    def refused(h5: Path, match: str, **kw: object) -> None:
        with pytest.raises(MesoNetFileError, match=match):
            import_mesonet(h5, tmp_path / "out", name="x", threads=1, **kw)  # type: ignore[arg-type]

    good = _random_meso4()
    refused(
        _write_keras(tmp_path / "short.h5", good[:-1]), r"1 dense .*neither Meso4", licence_dir=licence_dir
    )
    bad_kernel = [(n, {**a, "kernel": np.zeros((7, 7, 3, 8))} if n == "conv2d_1" else a) for n, a in good]
    refused(
        _write_keras(tmp_path / "k7.h5", bad_kernel),
        r"conv2d_1/kernel has shape \(7, 7, 3, 8\)",
        licence_dir=licence_dir,
    )
    extra = [*good, ("p_re_lu_1", {"alpha": np.zeros(16)})]
    refused(_write_keras(tmp_path / "prelu.h5", extra), "p_re_lu_1", licence_dir=licence_dir)
    no_gamma = [(n, {k: v for k, v in a.items() if k != "gamma"}) for n, a in good]
    refused(_write_keras(tmp_path / "nogamma.h5", no_gamma), "no 'gamma'", licence_dir=licence_dir)
    meso4 = _write_keras(tmp_path / "meso4.h5", good)
    refused(meso4, "holds meso4 weights, not mesoinception4", arch="mesoinception4", licence_dir=licence_dir)
    refused(meso4, "LICENSE and NOTICE")  # nothing beside the file
    (tmp_path / "text.h5").write_text("not hdf5")
    refused(tmp_path / "text.h5", "not an HDF5 file")
    # the CLI says so in one line and exits 2
    assert (
        cli_main(
            ["models", "import", "--family", "meso", "--out", str(tmp_path / "o"), str(tmp_path / "text.h5")]
        )
        == 2
    )
    assert "not an HDF5 file" in capsys.readouterr().err
