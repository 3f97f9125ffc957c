"""The default classifier: a small timm backbone behind the exact input contract the service feeds it.

`Classifier` takes raw uint8 RGB crops (N, S, S, 3), as `service.faces.crop_face` makes them, and normalises
inside the network, so training, the ONNX export and serving share one definition of the pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Classifier", "build_classifier"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Classifier(nn.Module):
    """uint8 NHWC crops -> one logit per crop (`forward_logits`) or a fake probability (`forward`)."""

    mean255: torch.Tensor
    std255: torch.Tensor

    def __init__(self, backbone: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean255", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std255", torch.tensor(std).view(1, 3, 1, 1) * 255.0)
        # Temperature scaling, set by the export (fitted on held-out identities): a constant in the graph, not
        # a weight, so checkpoints carry only what training learns.
        self.temperature = 1.0

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).float()
        x = (x - self.mean255) / self.std255
        out: torch.Tensor = self.backbone(x).reshape(-1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward_logits(x) / self.temperature)


def build_classifier(arch: str, *, drop_rate: float = 0.2, weights: Path | None = None) -> Classifier:
    """A randomly initialised timm `arch` with one output; `weights` (a local state dict file) is loaded into
    the backbone where names and shapes match, so pretrained weights can be dropped in without a download."""
    import timm

    backbone = timm.create_model(arch, pretrained=False, num_classes=1, drop_rate=drop_rate)
    head = cast(Any, backbone).get_classifier()
    if isinstance(
        head, nn.Linear
    ):  # start at p = 0.5: a random head starts confidently wrong on half the pairs
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    if weights is not None:
        state: dict[str, Any] = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        own = backbone.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not usable:
            raise ValueError(f"{weights}: no tensor matches {arch}")
        backbone.load_state_dict(usable, strict=False)
    return Classifier(backbone, IMAGENET_MEAN, IMAGENET_STD)
