"""Importing published weights: the service must compute what the reference code computes.

Reference architectures are rebuilt here as their repositories define them (random weights, no download),
saved in the reference checkpoint layouts, imported with `dfguard models import`, and served by the service's
own ONNX Runtime backend. The reference side preprocesses with transcriptions of the reference functions
(selimsef/dfdc_deepfake_challenge `kernel_utils.py`; mapooon/SelfBlendedImages `src/inference/preprocess.py`),
so crops, normalisation and network are checked end to end. CI checks one B7 on a few crops; the 7-model
figures come from `python -m bench.models`.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.training

from service.cli import main as cli_main  # noqa: E402
from service.faces import crop_face  # noqa: E402
from service.inference import OnnxRuntimeBackend  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


# --- transcriptions of the reference preprocessing ----------------------------------------------------------


def _dfdc_crop(frame: np.ndarray, box: tuple[float, ...], size: int = 380) -> np.ndarray:
    """kernel_utils.py 240-242 (crop), 288-302 (isotropically_resize_image), 279-285 (put_to_center)."""
    xmin, ymin, xmax, ymax = (int(b) for b in box)
    w, h = xmax - xmin, ymax - ymin
    p_h, p_w = h // 3, w // 3
    crop = frame[max(ymin - p_h, 0) : ymax + p_h, max(xmin - p_w, 0) : xmax + p_w]
    ch, cw = crop.shape[:2]
    if max(cw, ch) != size:
        if cw > ch:
            scale = size / cw
            ch, cw = ch * scale, size
        else:
            scale = size / ch
            cw, ch = cw * scale, size
        interp = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
        crop = cv2.resize(crop, (int(cw), int(ch)), interpolation=interp)
    crop = crop[:size, :size]
    out = np.zeros((size, size, 3), dtype=np.uint8)
    sw, sh = (size - crop.shape[1]) // 2, (size - crop.shape[0]) // 2
    out[sh : sh + crop.shape[0], sw : sw + crop.shape[1], :] = crop
    return out


def _sbi_crop(frame: np.ndarray, box: tuple[float, ...], size: int = 380) -> np.ndarray:
    """preprocess.py crop_face(crop_by_bbox=True, phase='test') then cv2.resize(dsize=(380, 380))."""
    h_img, w_img = len(frame), len(frame[0])
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    w0, w1, h0, h1 = w / 4 * 0.5, w / 4 * 0.5, h / 4 * 0.5, h / 4 * 0.5
    y0n, y1n = max(0, int(y0 - h0)), min(h_img, int(y1 + h1) + 1)
    x0n, x1n = max(0, int(x0 - w0)), min(w_img, int(x1 + w1) + 1)
    return cv2.resize(frame[y0n:y1n, x0n:x1n], dsize=(size, size))


def _dfdc_tensor(crops: np.ndarray) -> torch.Tensor:
    """kernel_utils.py 317-329: float, permute to NCHW, /255 then torchvision Normalize(mean, std)."""
    x = torch.tensor(crops).float().permute((0, 3, 1, 2))
    for i in range(len(x)):
        x[i] = (x[i] / 255.0 - torch.from_numpy(MEAN)[:, None, None]) / torch.from_numpy(STD)[:, None, None]
    return x


def _frame() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def _boxes() -> list[tuple[float, float, float, float]]:
    rng = np.random.default_rng(0)
    boxes = [(177.3, 55.9, 272.1, 176.2), (0.4, 3.2, 120.7, 150.9), (400.2, 380.8, 511.6, 511.9)]
    for _ in range(20):  # faces of many sizes, some against the frame's edges
        x, y = rng.uniform(-20, 480, 2)
        w = rng.uniform(20, 300)
        boxes.append((float(x), float(y), float(x + w), float(y + w * rng.uniform(0.8, 1.4))))
    return boxes


@pytest.mark.parametrize("recipe", ["dfdc", "sbi"])
def test_service_crops_equal_the_reference_recipes(recipe: str) -> None:
    frame = _frame()
    for box in _boxes():
        if recipe == "dfdc":
            ours, ref = crop_face(frame, box, 1 / 3, 380, "area_cubic"), _dfdc_crop(frame, box)
        else:
            ours, ref = crop_face(frame, box, 1 / 8, 380, "stretch"), _sbi_crop(frame, box)
        np.testing.assert_array_equal(ours, ref, err_msg=str(box))


# --- reference architectures, as their repositories define them -----------------------------------------


class DeepFakeClassifier(torch.nn.Module):  # type: ignore[misc]
    """training/zoo/classifiers.py 141-154 with encoder tf_efficientnet_b7_ns."""

    def __init__(self) -> None:
        import timm

        super().__init__()
        self.encoder = timm.create_model("tf_efficientnet_b7_ns", pretrained=False, drop_path_rate=0.2)
        self.avg_pool = torch.nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = torch.nn.Dropout(0.0)
        self.fc = torch.nn.Linear(2560, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encoder.forward_features(x)
        x = self.avg_pool(x).flatten(1)
        return self.fc(self.dropout(x))  # type: ignore[no-any-return]


class Detector(torch.nn.Module):  # type: ignore[misc]
    """SelfBlendedImages src/inference/model.py (from_name: the same network without the download)."""

    def __init__(self) -> None:
        from efficientnet_pytorch import EfficientNet

        super().__init__()
        self.net = EfficientNet.from_name("efficientnet-b4", num_classes=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def _spread_head(linear: torch.nn.Linear, features: torch.Tensor) -> None:
    """Scale a random head so its outputs spread over (0, 1) instead of saturating: a parity check on outputs
    stuck at 0 or 1 would prove nothing."""
    with torch.no_grad():
        centred = features - features.mean(0)
        linear.weight.mul_(1.5 / ((centred @ linear.weight.T).std() + 1e-12))
        linear.bias.copy_(-(features.mean(0) @ linear.weight.T))


@pytest.fixture(scope="module")
def crops_b7() -> np.ndarray:
    frame = _frame()
    return np.stack([_dfdc_crop(frame, b) for b in _boxes()[:3]])


@pytest.fixture(scope="module")
def imported_b7(tmp_path_factory: pytest.TempPathFactory, crops_b7: np.ndarray) -> tuple[Path, np.ndarray]:
    """One random B7 saved as the winner's training script saves it, imported via the CLI."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    ref = DeepFakeClassifier().eval()
    with torch.no_grad():
        feats = ref.avg_pool(ref.encoder.forward_features(_dfdc_tensor(crops_b7))).flatten(1)
    _spread_head(ref.fc, feats)
    with torch.no_grad():
        expected = torch.sigmoid(ref(_dfdc_tensor(crops_b7)).squeeze(1)).numpy()
    tmp = tmp_path_factory.mktemp("b7")
    ckpt = tmp / "final_111_DeepFakeClassifier_tf_efficientnet_b7_ns_0_36"
    state = {f"module.{k}": v for k, v in ref.state_dict().items()}  # trained under DataParallel
    torch.save({"state_dict": state, "epoch": 36}, ckpt)
    del ref
    argv = ["models", "import", "--family", "dfdc", "--threads", "1", "--out", str(tmp / "models")]
    assert cli_main([*argv, str(ckpt)]) == 0
    (manifest,) = (tmp / "models").glob("*/model.json")
    return manifest, expected


def test_imported_b7_scores_equal_the_reference_forward(
    imported_b7: tuple[Path, np.ndarray], crops_b7: np.ndarray
) -> None:
    manifest_path, expected = imported_b7
    manifest = json.loads(manifest_path.read_text())
    assert (manifest["input_size"], manifest["resize"]) == (380, "area_cubic")
    assert manifest["crop_margin"] == pytest.approx(1 / 3) and manifest["mean"] == pytest.approx(
        MEAN.tolist()
    )
    backend = OnnxRuntimeBackend([manifest_path], threads=1)
    got = backend.predict(manifest["name"], crops_b7)
    assert np.ptp(expected) > 0.05 and expected.min() > 0.01 and expected.max() < 0.99  # a real check
    assert float(np.max(np.abs(got - expected))) < 1e-4


def test_imported_sbi_b4_scores_equal_the_reference_forward(tmp_path: Path) -> None:
    torch.manual_seed(1)
    torch.set_num_threads(1)
    ref = Detector().eval()
    frame = _frame()
    crops = np.stack([_sbi_crop(frame, b) for b in _boxes()[:2]])
    x = torch.tensor(crops.transpose(0, 3, 1, 2)).float() / 255  # inference_video.py: no mean/std
    with torch.no_grad():
        ref.net.set_swish(memory_efficient=False)
        feats = torch.nn.functional.adaptive_avg_pool2d(ref.net.extract_features(x), 1).flatten(1)
        _spread_head(ref.net._fc, feats)
        expected = ref(x).softmax(1)[:, 1].numpy()
    torch.save({"model": ref.state_dict(), "optimizer": {}, "epoch": 99}, tmp_path / "FFraw.tar")
    argv = [
        "models",
        "import",
        "--family",
        "sbi",
        "--name",
        "sbi-b4",
        "--threads",
        "1",
        "--out",
        str(tmp_path / "m"),
    ]
    assert cli_main([*argv, str(tmp_path / "FFraw.tar")]) == 0
    manifest = json.loads((tmp_path / "m" / "sbi-b4" / "model.json").read_text())
    assert (manifest["resize"], manifest["crop_margin"], manifest["std"]) == (
        "stretch",
        0.125,
        [1.0, 1.0, 1.0],
    )
    got = OnnxRuntimeBackend([tmp_path / "m" / "sbi-b4" / "model.json"], threads=1).predict("sbi-b4", crops)
    assert np.ptp(expected) > 0.02
    assert float(np.max(np.abs(got - expected))) < 1e-4


def test_a_checkpoint_of_another_layout_is_refused(tmp_path: Path) -> None:
    from service.models.importer import import_checkpoint

    torch.save({"state_dict": {"fc.weight": torch.zeros(1, 2560)}}, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="Missing key"):
        import_checkpoint(tmp_path / "bad.pth", "dfdc", tmp_path / "out", name="bad", threads=1)
    torch.save({"state_dict": {"x": torch.nn.Linear(1, 1)}}, tmp_path / "pickled.pth")  # a whole module
    with pytest.raises(Exception, match=r"[Ww]eights only"):
        import_checkpoint(tmp_path / "pickled.pth", "dfdc", tmp_path / "out", name="pickled")


def test_pipeline_serves_an_ensemble_with_an_imported_model(
    imported_b7: tuple[Path, np.ndarray], face_clip: Path
) -> None:
    from service.compose import build_pipeline
    from service.config import Settings
    from service.models import DEFAULT_MODEL

    s = Settings(model_paths=[DEFAULT_MODEL, imported_b7[0]], frames_per_video=2, decode_isolation="inline")
    pipeline = build_pipeline(s)
    r = pipeline.score_file(face_clip)
    names = [m.name for m in pipeline.models]
    assert r.model.name == "+".join(names) and len(names) == 2
    assert r.faces_detected == 2 and r.score is not None and 0 <= r.score <= 1
