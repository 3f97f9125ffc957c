"""Read a TF.js graph model (`model.json` + `.bin` shards) into numpy: the weights by node name and the graph.

Pure numpy, no TensorFlow and no node: what `training.backbones` needs to rebuild a network in PyTorch.

Format facts this reader relies on (tfjs-converter 2.x-4.x "graph-model"):
* `modelTopology.node` lists the GraphDef nodes (op, inputs, attrs in their JSON protobuf form: lists as
  `{"list": {"i": [...]}}`, strings base64-encoded). Inputs may carry an output index (`name:1`) or mark a
  control dependency (`^name`).
* `weightsManifest` is a list of groups, each with shard `paths` and weight `specs`. The shards of all groups,
  concatenated in manifest order, hold the weights back to back in spec order: the layout
  `tf.io.fromMemory(modelTopology, weightSpecs, weightData)` takes.
* A quantised weight stores `quantization.dtype` values: float16 (IEEE half) or uint8/uint16 with
  `value = q * scale + min`. TF.js computes that in double precision and stores float32; so does this reader,
  which makes dequantised values bit-identical to the ones the JavaScript runtime uses.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "Activation",
    "AttrValue",
    "ConvUnit",
    "Node",
    "TfjsFormatError",
    "TfjsGraph",
    "conv_units",
    "dequantize",
    "load_graph",
    "read_weights",
]

AttrValue = int | float | bool | str | tuple[int, ...] | tuple[float, ...] | tuple[str, ...] | None
Activation = Literal["none", "relu", "relu6", "prelu", "hswish", "hsigmoid"]

_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
    "bool": np.dtype("u1"),
    "float16": np.dtype("<f2"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
}
_CONV_OPS = {"Conv2D", "DepthwiseConv2dNative", "_FusedConv2D", "FusedDepthwiseConv2dNative"}


class TfjsFormatError(ValueError):
    """The model.json or its shards do not hold what the TF.js graph-model format promises (or a pattern the
    converter does not know)."""


@dataclass(frozen=True)
class Node:
    """One GraphDef node: inputs without output index or control marks (`control` lists those)."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: Mapping[str, AttrValue]
    control: tuple[str, ...] = ()

    def ints(self, key: str, default: tuple[int, ...] = ()) -> tuple[int, ...]:
        value = self.attrs.get(key, default)
        if not isinstance(value, tuple) or not all(isinstance(v, int) for v in value):
            raise TfjsFormatError(f"{self.name}: attr {key} is not an int list: {value!r}")
        return tuple(int(v) for v in value)

    def text(self, key: str, default: str = "") -> str:
        value = self.attrs.get(key, default)
        if not isinstance(value, str):
            raise TfjsFormatError(f"{self.name}: attr {key} is not a string: {value!r}")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.attrs.get(key, ())
        if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
            raise TfjsFormatError(f"{self.name}: attr {key} is not a string list: {value!r}")
        return tuple(str(v) for v in value)


@dataclass
class TfjsGraph:
    """The nodes (file order) and the dequantised float32/int32 weights of one graph model."""

    nodes: dict[str, Node]
    weights: dict[str, npt.NDArray[Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    _consumers: dict[str, list[Node]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for node in self.nodes.values():
            for name in node.inputs:
                self._consumers.setdefault(name, []).append(node)

    def consumers(self, name: str) -> list[Node]:
        return list(self._consumers.get(name, []))

    def const(self, name: str) -> npt.NDArray[Any]:
        """The value of a Const node (a weight)."""
        if name not in self.weights:
            raise TfjsFormatError(f"{name} is not a constant of this graph")
        return self.weights[name]

    def is_const(self, name: str) -> bool:
        return name in self.weights

    def ops(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes.values():
            counts[node.op] = counts.get(node.op, 0) + 1
        return counts


def _decode_attr(value: Mapping[str, Any]) -> AttrValue:
    if "list" in value:
        lst = value["list"]
        if lst.get("s"):
            return tuple(base64.b64decode(s).decode() for s in lst["s"])
        if lst.get("i"):
            return tuple(int(i) for i in lst["i"])
        if lst.get("f"):
            return tuple(float(f) for f in lst["f"])
        return ()
    if "s" in value:
        return base64.b64decode(value["s"]).decode()
    if "i" in value:
        return int(value["i"])
    if "f" in value:
        return float(value["f"])
    if "b" in value:
        return bool(value["b"])
    if "type" in value:
        return str(value["type"])
    if "shape" in value:
        shape = value["shape"]
        if shape.get("unknownRank"):
            return None
        return tuple(int(d.get("size", -1)) for d in shape.get("dim", []))
    return None  # tensors and functions: the weights carry constants, nothing here needs the rest


def _parse_nodes(topology: Mapping[str, Any]) -> dict[str, Node]:
    nodes: dict[str, Node] = {}
    for raw in topology.get("node", []):
        inputs, control = [], []
        for name in raw.get("input", []):
            if name.startswith("^"):
                control.append(name[1:])
            else:
                inputs.append(name.split(":")[0])
        attrs = {k: _decode_attr(v) for k, v in raw.get("attr", {}).items()}
        nodes[raw["name"]] = Node(raw["name"], raw["op"], tuple(inputs), attrs, tuple(control))
    return nodes


def dequantize(raw: bytes, spec: Mapping[str, Any]) -> npt.NDArray[Any]:
    """One weight's bytes -> its array, exactly as TF.js decodes it (float32 unless the spec says int32)."""
    shape = tuple(int(d) for d in spec["shape"])
    quant = spec.get("quantization")
    stored = quant["dtype"] if quant else spec["dtype"]
    if stored not in _DTYPES:
        raise TfjsFormatError(f"{spec['name']}: unsupported dtype {stored}")
    values = np.frombuffer(raw, dtype=_DTYPES[stored])
    if quant and stored in ("uint8", "uint16"):
        if "scale" not in quant or "min" not in quant:
            raise TfjsFormatError(f"{spec['name']}: {stored} quantisation without scale/min")
        out: npt.NDArray[Any] = values.astype(np.float64) * float(quant["scale"]) + float(quant["min"])
    else:
        out = values
    if spec["dtype"] == "int32":
        out = np.round(out).astype(np.int32) if quant else out.astype(np.int32)
    elif spec["dtype"] == "bool":
        out = out.astype(bool)
    else:
        out = out.astype(np.float32)
    return out.reshape(shape)


def _nbytes(spec: Mapping[str, Any]) -> int:
    quant = spec.get("quantization")
    stored = quant["dtype"] if quant else spec["dtype"]
    if stored not in _DTYPES:
        raise TfjsFormatError(f"{spec['name']}: unsupported dtype {stored}")
    count = int(np.prod([int(d) for d in spec["shape"]], dtype=np.int64))
    return count * _DTYPES[stored].itemsize


def weight_specs(model: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(spec) for group in model["weightsManifest"] for spec in group["weights"]]


def shard_paths(model_json: Path, model: Mapping[str, Any]) -> list[Path]:
    return [model_json.parent / p for group in model["weightsManifest"] for p in group["paths"]]


def read_weights(model_json: Path) -> dict[str, npt.NDArray[Any]]:
    """Every weight of `model_json` by node name, dequantised (float32 or int32 arrays)."""
    model = json.loads(model_json.read_text())
    data = b"".join(p.read_bytes() for p in shard_paths(model_json, model))
    out: dict[str, npt.NDArray[Any]] = {}
    offset = 0
    for spec in weight_specs(model):
        n = _nbytes(spec)
        if offset + n > len(data):
            raise TfjsFormatError(f"{model_json}: shards end inside weight {spec['name']}")
        out[spec["name"]] = dequantize(data[offset : offset + n], spec)
        offset += n
    if offset != len(data):
        raise TfjsFormatError(f"{model_json}: {len(data) - offset} bytes after the last weight")
    return out


def load_graph(model_json: Path) -> TfjsGraph:
    """The graph and weights of a TF.js graph model."""
    model = json.loads(model_json.read_text())
    if model.get("format") not in (None, "graph-model"):
        raise TfjsFormatError(f"{model_json}: format {model.get('format')!r} is not a graph model")
    meta = {k: v for k, v in model.items() if k not in ("modelTopology", "weightsManifest")}
    return TfjsGraph(_parse_nodes(model["modelTopology"]), read_weights(model_json), meta)


# ---- conv units: each convolution with what the graph folds and fuses around it ----


@dataclass
class ConvUnit:
    """One Conv2D/DepthwiseConv2dNative with its bias, scale and activation, in PyTorch terms.

    `weight` is OIHW (depthwise: (C * multiplier, 1, kh, kw)); `padding` is "SAME", "VALID" or explicit
    ((top, bottom), (left, right)) from the op or a preceding Pad; `output` names the graph node whose value
    equals this unit's output (the activation's last node).
    """

    name: str
    depthwise: bool
    weight: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float32] | None
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: str | tuple[tuple[int, int], tuple[int, int]]
    activation: Activation
    alpha: npt.NDArray[np.float32] | None
    act_scale: float  # the 1/6 of hswish / hsigmoid as the graph stores it
    input: str
    output: str
    notes: list[str] = field(default_factory=list)

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weight.shape[2]), int(self.weight.shape[3])


def _other_const(graph: TfjsGraph, node: Node, name: str) -> npt.NDArray[np.float32] | None:
    """The constant operand of a binary op whose other operand is `name`, else None."""
    if len(node.inputs) != 2 or name not in node.inputs:
        return None
    other = node.inputs[1] if node.inputs[0] == name else node.inputs[0]
    return graph.const(other).astype(np.float32) if graph.is_const(other) else None


def _scalar(value: npt.NDArray[np.float32] | None) -> float | None:
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _only_consumer(graph: TfjsGraph, name: str) -> Node:
    users = graph.consumers(name)
    if len(users) != 1:
        raise TfjsFormatError(f"{name}: expected one consumer, found {len(users)}")
    return users[0]


def _prelu_after(graph: TfjsGraph, name: str) -> tuple[npt.NDArray[np.float32], str] | None:
    """PReLU written out in elementwise ops, reading `name`; returns (alpha, output node) or None.

    Two spellings occur: relu(x) + m * (x - |x|) (TF-slim nets; alpha = 2m, exact since 2m * x == m * 2x)
    and max(0, x) + g * min(0, x) (MXNet exports; alpha = g).
    """
    users = graph.consumers(name)
    ops = sorted(u.op for u in users)
    if ops in (["Abs", "Relu", "Sub"], ["Abs", "Add", "Sub"], ["Abs", "AddV2", "Sub"]):
        # relu(x) + m * (x - |x|); with the Relu fused into the producer, the Add reads x itself
        relu = next((u.name for u in users if u.op == "Relu"), name)
        sub = next(u for u in users if u.op == "Sub")
        mul = _only_consumer(graph, sub.name)
        m = _other_const(graph, mul, sub.name)
        adds = graph.consumers(mul.name)
        if mul.op != "Mul" or m is None or len(adds) != 1 or set(adds[0].inputs) != {relu, mul.name}:
            raise TfjsFormatError(f"{name}: unknown relu/abs/sub pattern")
        if relu == name:
            return None if not _fused_relu(graph, name) else (np.zeros(0, np.float32), adds[0].name)
        return (2.0 * m).reshape(-1).astype(np.float32), adds[0].name
    if ops == ["Maximum", "Minimum"]:
        mx = next(u for u in users if u.op == "Maximum")
        mn = next(u for u in users if u.op == "Minimum")
        if _scalar(_other_const(graph, mx, name)) != 0.0 or _scalar(_other_const(graph, mn, name)) != 0.0:
            return None
        mul = _only_consumer(graph, mn.name)
        g = _other_const(graph, mul, mn.name)
        add = _only_consumer(graph, mul.name)
        if (
            mul.op != "Mul"
            or g is None
            or add.op not in ("Add", "AddV2")
            or set(add.inputs) != {mx.name, mul.name}
        ):
            raise TfjsFormatError(f"{name}: unknown max/min pattern")
        return g.reshape(-1).astype(np.float32), add.name
    return None


def _fused_relu(graph: TfjsGraph, name: str) -> bool:
    node = graph.nodes.get(name)
    fused = node.attrs.get("fused_ops", ()) if node is not None else ()
    return isinstance(fused, tuple) and ("Relu" in fused or "Relu6" in fused)


def _hard_after(graph: TfjsGraph, name: str) -> tuple[Activation, str, float] | None:
    """Hard-swish (x / 6) * relu6(x + 3) or hard-sigmoid relu6(x + 3) / 6 reading `name` (TF-slim
    MobileNetV3, constants 3 and 1/6 after grappler), as (activation, output node, the graph's 1/6: float16
    weights store 0.16662598), else None."""
    users = graph.consumers(name)
    add = next(
        (u for u in users if u.op in ("Add", "AddV2") and _scalar(_other_const(graph, u, name)) == 3), None
    )
    relu6 = graph.consumers(add.name) if add is not None else []
    after = graph.consumers(relu6[0].name) if len(relu6) == 1 and relu6[0].op == "Relu6" else []
    if len(after) != 1 or after[0].op != "Mul":
        return None
    sixth = _scalar(_other_const(graph, after[0], relu6[0].name))
    if len(users) == 1 and sixth is not None and np.isclose(sixth, 1 / 6, rtol=1e-3):
        return "hsigmoid", after[0].name, sixth
    scaled = next((u for u in users if u.op == "Mul"), None)
    sixth = _scalar(_other_const(graph, scaled, name)) if scaled is not None else None
    if (
        len(users) == 2
        and scaled is not None
        and sixth is not None
        and np.isclose(sixth, 1 / 6, rtol=1e-3)
        and set(after[0].inputs) == {scaled.name, relu6[0].name}
    ):
        return "hswish", after[0].name, sixth
    return None


def _to_torch_weight(kernel: npt.NDArray[np.float32], depthwise: bool) -> npt.NDArray[np.float32]:
    if depthwise:  # (kh, kw, C, M) -> (C * M, 1, kh, kw); output channel c * M + m in both frameworks
        kh, kw, c, m = kernel.shape
        return np.ascontiguousarray(kernel.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw))
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))  # HWIO -> OIHW


def _read_unit(graph: TfjsGraph, node: Node) -> ConvUnit:
    if node.text("data_format", "NHWC") != "NHWC":
        raise TfjsFormatError(f"{node.name}: only NHWC graphs are supported")
    depthwise = "Depthwise" in node.op
    kernel = graph.const(node.inputs[1]).astype(np.float32)
    strides, dilations = node.ints("strides", (1, 1, 1, 1)), node.ints("dilations", (1, 1, 1, 1))
    pad = node.text("padding", "VALID")
    padding: str | tuple[tuple[int, int], tuple[int, int]] = pad
    if pad == "EXPLICIT":
        e = node.ints("explicit_paddings")
        padding = ((e[2], e[3]), (e[4], e[5]))
    source = node.inputs[0]
    producer = graph.nodes.get(source)
    notes: list[str] = []
    if producer is not None and producer.op in ("Pad", "PadV2") and graph.is_const(producer.inputs[1]):
        pads = graph.const(producer.inputs[1]).astype(int)
        if pads.shape != (4, 2) or pads[0].any() or pads[3].any() or pad != "VALID":
            raise TfjsFormatError(f"{node.name}: unsupported Pad {pads.tolist()} before {pad} conv")
        if producer.op == "PadV2" and _scalar(graph.const(producer.inputs[2])) != 0.0:
            raise TfjsFormatError(f"{node.name}: non-zero constant padding")
        padding = ((int(pads[1, 0]), int(pads[1, 1])), (int(pads[2, 0]), int(pads[2, 1])))
        source = producer.inputs[0]
    weight = _to_torch_weight(kernel, depthwise)
    bias: npt.NDArray[np.float32] | None = None
    activation: Activation = "none"
    alpha: npt.NDArray[np.float32] | None = None
    act_scale = 1 / 6
    if node.op.startswith("_Fused") or node.op.startswith("Fused"):
        fused = node.texts("fused_ops")
        extra = list(node.inputs[2:])
        for op in fused:
            if op == "BiasAdd":
                bias = graph.const(extra.pop(0)).astype(np.float32).reshape(-1)
            elif op == "Relu":
                activation = "relu"
            elif op == "Relu6":
                activation = "relu6"
            elif op == "Prelu":
                activation, alpha = "prelu", graph.const(extra.pop(0)).astype(np.float32).reshape(-1)
            else:
                raise TfjsFormatError(f"{node.name}: unsupported fused op {op}")
    out = node.name
    while True:  # fold what follows while the chain stays linear
        users = graph.consumers(out)
        if activation != "none":
            break
        hard = _hard_after(graph, out)
        if hard is not None:
            activation, out, act_scale = hard
        elif len(users) == 1 and users[0].op == "Mul" and bias is None:
            scale = _other_const(graph, users[0], out)
            if scale is None:
                break
            weight = weight * scale.reshape(-1, 1, 1, 1)
            out = users[0].name
        elif len(users) == 1 and users[0].op in ("Add", "AddV2", "BiasAdd"):
            b = _other_const(graph, users[0], out)
            if b is None:
                break
            bias = b.reshape(-1) if bias is None else bias + b.reshape(-1)
            out = users[0].name
        elif len(users) == 1 and users[0].op == "Relu6":
            activation, out = "relu6", users[0].name
        elif len(users) == 1 and users[0].op == "Relu":
            activation, out = "relu", users[0].name
            after = graph.consumers(out)
            if len(after) == 1 and after[0].op == "Minimum":
                top = _scalar(_other_const(graph, after[0], out))
                floor = _only_consumer(graph, after[0].name)
                if (
                    top == 6.0
                    and floor.op == "Maximum"
                    and _scalar(_other_const(graph, floor, after[0].name)) == 0
                ):
                    activation, out = "relu6", floor.name
        else:
            prelu = _prelu_after(graph, out)
            if prelu is not None:
                activation, (alpha, out) = "prelu", prelu
            break
    if activation == "relu" and out == node.name and (prelu := _prelu_after(graph, out)) is not None:
        # PReLU applied to a ReLU output is the ReLU: the converter fused the ReLU into the conv but left the
        # PReLU's negative branch reading the fused (already non-negative) output.
        notes.append("prelu after fused relu: negative slope has no effect (graph computes relu)")
        out = prelu[1]
    return ConvUnit(
        name=node.name,
        depthwise=depthwise,
        weight=weight.astype(np.float32),
        bias=None if bias is None else bias.astype(np.float32),
        stride=(strides[1], strides[2]),
        dilation=(dilations[1], dilations[2]),
        padding=padding,
        activation=activation,
        alpha=alpha,
        act_scale=act_scale,
        input=source,
        output=out,
        notes=notes,
    )


def _topological(nodes: Mapping[str, Node]) -> Iterable[Node]:
    done: set[str] = set()
    order: list[Node] = []
    for start in nodes:
        stack = [(start, False)]
        while stack:
            name, expanded = stack.pop()
            if name in done or name not in nodes:
                continue
            if expanded:
                done.add(name)
                order.append(nodes[name])
                continue
            stack.append((name, True))
            stack.extend((i, False) for i in nodes[name].inputs + nodes[name].control if i not in done)
    return order


def _ancestors(graph: TfjsGraph, name: str) -> set[str]:
    seen, stack = {name}, [name]
    while stack:
        node = graph.nodes.get(stack.pop())
        for i in node.inputs if node is not None else ():
            if i not in seen:
                seen.add(i)
                stack.append(i)
    return seen


def conv_units(graph: TfjsGraph, upto: str | None = None) -> list[ConvUnit]:
    """The convolutions of the graph (those `upto` depends on, if given) in topological order, each with its
    folded scale/bias and activation."""
    keep = _ancestors(graph, upto) if upto is not None else set(graph.nodes)
    return [_read_unit(graph, n) for n in _topological(graph.nodes) if n.op in _CONV_OPS and n.name in keep]
