"""Import published detector checkpoints into ONNX + manifest, with the reference implementations' numbers.

Two families are supported, each rebuilt exactly as its reference code builds it (random init, no download),
then loaded strictly from the checkpoint:

* `dfdc`: the DFDC winner (selimsef/dfdc_deepfake_challenge `training/zoo/classifiers.py` DeepFakeClassifier):
  timm `tf_efficientnet_b7_ns` features -> global average pool -> dropout -> linear 2560 -> 1, sigmoid.
  A checkpoint is `{"state_dict": ...}` or the state dict itself, keys possibly prefixed `module.`
  (`predict_folder.py` 24-27). Input: crop margin 1/3, isotropic `area_cubic` resize to 380, zero padding,
  pixels / 255 then ImageNet mean/std (`kernel_utils.py` 13-15, 240-302, 329). Served with the `confident`
  aggregation (the service default, `kernel_utils.confident_strategy`).
* `sbi`: Self-Blended Images (mapooon/SelfBlendedImages `src/inference/model.py`): efficientnet_pytorch
  EfficientNet-B4 with 2 classes under `net.`, checkpoint `{"model": ...}`; input: box grown by 1/8 per side,
  stretched to 380x380, pixels / 255, no mean/std; score softmax[:, 1]. SBI aggregates with the max over faces
  per frame and the mean over frames: serve it with `DFG_AGGREGATION=max_face_mean_frames`.

The third family, `meso` (MesoNet's Keras HDF5 weights), has its own reader and rebuild in
`service.models.mesonet`.

A checkpoint is untrusted input: it is read with `torch.load(..., weights_only=True)` (no pickled code runs)
and must match the architecture key for key. PyTorch, timm and efficientnet_pytorch (the `training` extra) are
imported only here, when a command imports weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from service.models.export import check_parity, export_onnx, write_manifest

if TYPE_CHECKING:
    import torch

__all__ = ["FAMILIES", "Family", "ImportResult", "build_reference", "import_checkpoint", "load_state_dict"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Kind = Literal["dfdc", "sbi"]


@dataclass(frozen=True)
class Family:
    """What the service needs to know about one published model family."""

    kind: Kind
    input_size: int
    crop_margin: float
    resize: Literal["area_cubic", "stretch"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    licence: str
    description: str


FAMILIES: dict[str, Family] = {
    "dfdc": Family(
        "dfdc",
        380,
        1 / 3,
        "area_cubic",
        IMAGENET_MEAN,
        IMAGENET_STD,
        "MIT (selimsef/dfdc_deepfake_challenge); check the terms of the weights you hold",
        "DFDC 1st place DeepFakeClassifier (tf_efficientnet_b7_ns + linear head), imported; aggregate with "
        "`confident`.",
    ),
    "sbi": Family(
        "sbi",
        380,
        1 / 8,
        "stretch",
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0),
        "research use only; commercial use needs an agreement with the authors (mapooon/SelfBlendedImages)",
        "Self-Blended Images EfficientNet-B4 detector, imported; aggregate with `max_face_mean_frames`.",
    ),
}


def _dfdc_classifier(encoder: str = "tf_efficientnet_b7_ns") -> torch.nn.Module:
    import timm
    from torch import nn

    class DeepFakeClassifier(nn.Module):  # classifiers.py 141-154, same attribute names
        def __init__(self) -> None:
            super().__init__()
            backbone: Any = timm.create_model(encoder, pretrained=False, drop_path_rate=0.2)
            self.encoder = backbone
            self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
            self.dropout = nn.Dropout(0.0)
            self.fc = nn.Linear(int(backbone.num_features), 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.encoder.forward_features(x)
            x = self.avg_pool(x).flatten(1)
            out: torch.Tensor = self.fc(self.dropout(x))
            return out

    return DeepFakeClassifier()


def _sbi_detector() -> torch.nn.Module:
    from efficientnet_pytorch import EfficientNet
    from torch import nn

    class Detector(nn.Module):  # src/inference/model.py, same attribute names
        def __init__(self) -> None:
            super().__init__()
            self.net: Any = EfficientNet.from_name("efficientnet-b4", num_classes=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.net(x)
            return out

    return Detector()


def build_reference(kind: Kind) -> torch.nn.Module:
    """The reference architecture with random weights, in eval mode (what its inference code runs)."""
    model = _dfdc_classifier() if kind == "dfdc" else _sbi_detector()
    return model.eval()


def load_state_dict(path: Path, kind: Kind) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors in the reference layout (safe loading: tensors and plain containers only)."""
    import torch

    ckpt: Any = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a state dict checkpoint")
    key = "state_dict" if kind == "dfdc" else "model"
    state = ckpt.get(key, ckpt)
    return {re.sub(r"^module\.", "", k): v for k, v in state.items()}


def _served(model: torch.nn.Module, family: Family) -> torch.nn.Module:
    """`model` behind the service's contract: uint8 NHWC crops in, one fake probability per crop out."""
    import torch
    from torch import nn

    class Served(nn.Module):
        mean: torch.Tensor
        std: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(family.mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(family.std).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.permute(0, 3, 1, 2).float() / 255.0  # the references divide by 255, then normalise
            if family.kind == "dfdc":
                x = (x - self.mean) / self.std
                return torch.sigmoid(self.model(x)).reshape(-1)
            return torch.softmax(self.model(x), dim=1)[:, 1]

    return Served().eval()


@dataclass(frozen=True)
class ImportResult:
    manifest: Path
    onnx: Path
    bytes: int
    parity_max_abs_diff: float


def import_checkpoint(
    checkpoint: Path,
    kind: Kind,
    out_dir: Path,
    *,
    name: str,
    version: str = "imported",
    parity_crops: int = 4,
    threads: int = 2,
) -> ImportResult:
    """One checkpoint as `out_dir/model.onnx` + `model.json`, checked against PyTorch on random crops."""
    import torch

    torch.set_num_threads(threads)
    family = FAMILIES[kind]
    model = build_reference(kind)
    if kind == "sbi":
        cast(Any, model).net.set_swish(
            memory_efficient=False
        )  # the autograd-function Swish has no ONNX export
    model.load_state_dict(load_state_dict(checkpoint, kind), strict=True)
    served = _served(model, family)
    onnx_path = out_dir / "model.onnx"
    export_onnx(served, family.input_size, onnx_path)
    crops = np.random.default_rng(0).integers(
        0, 256, (parity_crops, family.input_size, family.input_size, 3), dtype=np.uint8
    )
    diff = check_parity(served, onnx_path, crops, threads=threads)
    manifest = write_manifest(
        onnx_path,
        name=name,
        version=version,
        trained=True,
        input_size=family.input_size,
        mean=family.mean,
        std=family.std,
        crop_margin=family.crop_margin,
        resize=family.resize,
        description=f"{family.description} Source checkpoint: {checkpoint.name}.",
        licence=family.licence,
    )
    return ImportResult(manifest, onnx_path, onnx_path.stat().st_size, diff)
