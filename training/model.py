"""The default classifier: a backbone behind the exact input contract the service feeds it.

`Classifier` takes raw uint8 RGB crops (N, S, S, 3), as `service.faces.crop_face` makes them, and normalises
inside the network, so training, the ONNX export and serving share one definition of the pixels. The backbone
is a timm model (random start) or one of the pretrained TF.js conversions of `training.backbones`
(`faceres`, `mobilefacenet`, `mobileface`), each with the mean/std its original training used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from training.backbones import ARCHS, HeadNorm, TfjsBackbone

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Classifier", "build_classifier", "load_backbone_weights"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Classifier(nn.Module):
    """uint8 NHWC crops -> one logit per crop (`forward_logits`) or a fake probability (`forward`)."""

    mean255: torch.Tensor
    std255: torch.Tensor

    def __init__(self, backbone: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.backbone = backbone
        self.mean, self.std = tuple(mean), tuple(std)  # for the manifest
        self.register_buffer("mean255", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std255", torch.tensor(std).view(1, 3, 1, 1) * 255.0)
        # Temperature scaling, set by the export (fitted on held-out identities): a constant in the graph, not
        # a weight, so checkpoints carry only what training learns.
        self.temperature = 1.0

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC crops -> the float NCHW tensor the backbone takes."""
        return (x.permute(0, 3, 1, 2).float() - self.mean255) / self.std255

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.backbone(self.normalise(x)).reshape(-1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward_logits(x) / self.temperature)


def load_backbone_weights(backbone: TfjsBackbone, arch: str, weights: Path) -> None:
    """Load a converted state dict (`python -m training.pretrained`) into `backbone`; every feature tensor
    must be there with its shape (a partial load would silently train from a half-random start)."""
    state: dict[str, Any] = torch.load(weights, map_location="cpu", weights_only=True)
    if state.get("arch") != arch:
        raise ValueError(f"{weights}: converted for {state.get('arch')!r}, not {arch!r}")
    own = backbone.state_dict()
    tensors: dict[str, torch.Tensor] = state["state_dict"]
    wanted = {k for k in own if k.startswith("blocks.")}
    if set(tensors) != wanted or any(tensors[k].shape != own[k].shape for k in wanted):
        raise ValueError(f"{weights}: tensors do not match the {arch} feature blocks")
    backbone.load_state_dict(tensors, strict=False)


def build_classifier(
    arch: str,
    *,
    drop_rate: float = 0.2,
    weights: Path | None = None,
    freeze_blocks: int = 0,
    head_norm: HeadNorm = "batch",
) -> Classifier:
    """A classifier with one output on backbone `arch`.

    For a pretrained arch (`training.backbones.ARCHS`: `faceres`, `mobilefacenet`, `mobileface`), `weights` is
    the converted state dict (`.cache/pretrained/<model>.pt`; without it the blocks start random, as when a
    trained checkpoint is loaded afterwards), `freeze_blocks` freezes the first N feature blocks and the
    normalisation is the one the original network was trained with. Otherwise `arch` is a randomly
    initialised timm model and `weights` (a local state dict file) is loaded where names and shapes match.
    """
    if arch in ARCHS:
        spec = ARCHS[arch]
        net = spec.build(drop_rate)
        net.use_head_norm(head_norm)
        if weights is not None:
            load_backbone_weights(net, arch, weights)
            if spec.stem_scale != 1.0:  # converted weights only: a trained checkpoint is already rescaled
                with torch.no_grad():
                    next(net.conv_layers()).conv.weight.mul_(spec.stem_scale)
        net.freeze(freeze_blocks)
        std = tuple(s * spec.stem_scale for s in spec.std)
        return Classifier(net, spec.mean, std)
    if freeze_blocks:
        raise ValueError(f"freeze_blocks needs a pretrained arch ({', '.join(ARCHS)}), not {arch}")
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
