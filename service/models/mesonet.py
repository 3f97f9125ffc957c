"""Import the published MesoNet weights (Keras 2 HDF5) into ONNX + manifest, without TensorFlow.

MesoNet (Afchar, Nozick, Yamagishi, Echizen, WIFS 2018; reference code DariusAf/MesoNet, Apache-2.0) ships
`Meso4_*.h5` and `MesoInception_*.h5`: Keras 2 *weights-only* files, one HDF5 group per layer. They are read
with h5py and loaded into a PyTorch rebuild of the reference networks, which is exported like the other
families (`service.models.export`). Keras details reproduced exactly:

* kernels are HWIO (-> OIHW); "same" convolution padding (odd kernels: symmetric, dilated ones included);
* Conv2D(ReLU) -> BatchNormalization(epsilon 1e-3) -> MaxPooling2D(same): with stride = pool size, Keras
  pads bottom/right only when the size is not divisible and the pad never wins the max, which is exactly a
  ceil-mode max-pool (the last window is partial);
* the flatten is in Keras' HWC order (the activations are permuted to NHWC before it);
* dense 16 -> LeakyReLU(0.1) -> dense 1 -> sigmoid; dropout is the identity at inference.

The reference sigmoid is the probability that the face is **real** (labels from folder order, `df` = 0). The
served graph returns the manipulation probability `1 - sigmoid(z)`, computed as `sigmoid(-z)` (the same value,
without the cancellation near 1), so the service's contract (higher = more likely fake) holds.

Layers are matched to the architecture by their Keras creation order (the numeric suffix of `conv2d_N`,
`batch_normalization_N`, `dense_N`) and every array's shape is checked against the architecture, so a file of
another network is refused with a message rather than loaded into the wrong places.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from service.models.export import check_parity, export_onnx, write_manifest

if TYPE_CHECKING:
    import torch

    from service.models.importer import ImportResult

__all__ = [
    "ARCHES",
    "INPUT_SIZE",
    "PUBLISHED",
    "Arch",
    "MesoNetFileError",
    "build_mesonet",
    "detect_arch",
    "find_licence_dir",
    "import_mesonet",
    "read_keras_weights",
]

Arch = Literal["meso4", "mesoinception4"]
ARCHES: tuple[Arch, ...] = ("meso4", "mesoinception4")

SOURCE_REPOSITORY = "https://github.com/DariusAf/MesoNet"
SOURCE_COMMIT = "2144d56"
LICENCE = "Apache-2.0"
LICENCE_FILES = ("LICENSE", "NOTICE")
INPUT_SIZE = 256
BN_EPSILON = 1e-3
LEAKY_SLOPE = 0.1

# sha256 of the four published files -> what they are (README of the weights; the repository's `weights/`).
PUBLISHED: dict[str, str] = {
    "036ed30d04ffd9c7506f825b97c86aa64915f5818931da96817b169aad790af5": "Meso4_DF (the authors' deepfakes)",
    "bcfda015d217b9f8d6557693edbdf9f4e79cfd22672541968dd0e2954462b5d7": "Meso4_F2F (Face2Face)",
    "234586d40058e76ef8b6f27ca4b63c06e31c2a5a69c0d8ba6f30b1468ab7bafa": (
        "MesoInception_DF (the authors' deepfakes)"
    ),
    "d4533ac8a3197dc35c47405d23d99e888c1d0135e267e03540c7451feaccff3f": ("MesoInception_F2F (Face2Face)"),
}

# Meso4's four blocks: (kernel, filters), each followed by batch norm and a max-pool of _POOLS. MesoInception4
# replaces the first two convolutions by inception layers with (a, b, c, d) filters per branch; blocks 3 and 4
# and the head are Meso4's.
_MESO4_BLOCKS = ((3, 8), (5, 8), (5, 16), (5, 16))
_INCEPTION = ((1, 4, 4, 2), (2, 4, 4, 2))
_TAIL = _MESO4_BLOCKS[2:]
_POOLS = (2, 2, 2, 4)
_FEATURES = 8 * 8 * 16
_HIDDEN = 16

# layer -> weight kind (kernel, bias, gamma, ...) -> array
KerasArrays = dict[str, dict[str, npt.NDArray[np.float32]]]


class MesoNetFileError(ValueError):
    """The file is not Keras weights of Meso4 or MesoInception4 (or not the architecture asked for)."""


def read_keras_weights(path: Path) -> KerasArrays:
    """The weighted layers of a Keras 2 HDF5 file: `{layer: {"kernel": ..., "bias": ...}}` as float32.

    Accepts a weights-only file (`save_weights`) and a whole-model file (weights under `model_weights`).
    """
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise MesoNetFileError(f"{path}: not an HDF5 file ({exc})") from exc
    with f:
        root = f.get("model_weights", f)
        if "layer_names" not in root.attrs:
            raise MesoNetFileError(f"{path}: no Keras `layer_names` attribute; not a Keras weights file")
        out: KerasArrays = {}
        for raw in root.attrs["layer_names"]:
            layer = raw.decode() if isinstance(raw, bytes) else str(raw)
            attrs = root[layer].attrs["weight_names"]
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in attrs]
            if not names:
                continue
            arrays: dict[str, npt.NDArray[np.float32]] = {}
            for name in names:
                data = np.asarray(root[layer][name][()])
                if data.dtype.kind != "f" or not np.all(np.isfinite(data)):
                    raise MesoNetFileError(f"{path}: {layer}/{name} is not finite floating-point data")
                arrays[name.rsplit("/", 1)[-1].split(":", 1)[0]] = data.astype(np.float32)
            out[layer] = arrays
    return out


def _by_kind(layers: KerasArrays) -> dict[str, list[str]]:
    """Weighted layer names per Keras layer kind, in creation order (the numeric suffix)."""
    kinds: dict[str, list[tuple[int, str]]] = {"conv2d": [], "batch_normalization": [], "dense": []}
    for name in layers:
        m = re.fullmatch(r"(conv2d|batch_normalization|dense)(?:_(\d+))?", name)
        if m is None:
            raise MesoNetFileError(f"layer {name!r} with weights is not part of MesoNet")
        kinds[m.group(1)].append((int(m.group(2) or 0), name))
    return {k: [n for _, n in sorted(v)] for k, v in kinds.items()}


def detect_arch(layers: KerasArrays) -> Arch:
    """Meso4 (4 convolutions) or MesoInception4 (14 + 2), both with 4 batch norms and 2 dense layers."""
    kinds = _by_kind(layers)
    counts = (len(kinds["conv2d"]), len(kinds["batch_normalization"]), len(kinds["dense"]))
    if counts == (4, 4, 2):
        return "meso4"
    if counts == (16, 4, 2):
        return "mesoinception4"
    raise MesoNetFileError(
        f"{counts[0]} conv2d, {counts[1]} batch_normalization and {counts[2]} dense layers: neither Meso4 "
        "(4, 4, 2) nor MesoInception4 (16, 4, 2)"
    )


@dataclass(frozen=True)
class _Conv:
    kernel: int
    cin: int
    cout: int
    dilation: int = 1


def _conv_specs(arch: Arch) -> list[_Conv]:
    """Every convolution in creation order (inception: branch 1 1x1, then 1x1 + 3x3 for branches 2-4)."""
    specs: list[_Conv] = []
    cin = 3
    if arch == "meso4":
        for k, f in _MESO4_BLOCKS:
            specs.append(_Conv(k, cin, f))
            cin = f
        return specs
    for a, b, c, d in _INCEPTION:
        specs += [_Conv(1, cin, a), _Conv(1, cin, b), _Conv(3, b, b), _Conv(1, cin, c), _Conv(3, c, c, 2)]
        specs += [_Conv(1, cin, d), _Conv(3, d, d, 3)]
        cin = a + b + c + d
    for k, f in _TAIL:
        specs.append(_Conv(k, cin, f))
        cin = f
    return specs


def _bn_channels(arch: Arch) -> list[int]:
    if arch == "meso4":
        return [f for _, f in _MESO4_BLOCKS]
    return [sum(block) for block in _INCEPTION] + [f for _, f in _TAIL]


def _state_dict(layers: KerasArrays, arch: Arch) -> dict[str, npt.NDArray[np.float32]]:
    """The Keras arrays under the PyTorch rebuild's names and layouts, every shape checked."""
    kinds = _by_kind(layers)
    state: dict[str, npt.NDArray[np.float32]] = {}

    def take(layer: str, kind: str, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
        arr = layers[layer].get(kind)
        if arr is None:
            raise MesoNetFileError(f"{layer} has no {kind!r} weights (has {sorted(layers[layer])})")
        if arr.shape != shape:
            raise MesoNetFileError(f"{layer}/{kind} has shape {arr.shape}; {arch} needs {shape}")
        return arr

    for i, (spec, layer) in enumerate(zip(_conv_specs(arch), kinds["conv2d"], strict=True)):
        kernel = take(layer, "kernel", (spec.kernel, spec.kernel, spec.cin, spec.cout))
        state[f"convs.{i}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))  # HWIO -> OIHW
        state[f"convs.{i}.bias"] = take(layer, "bias", (spec.cout,))
    for i, (ch, layer) in enumerate(zip(_bn_channels(arch), kinds["batch_normalization"], strict=True)):
        for keras, torch_name in (
            ("gamma", "weight"),
            ("beta", "bias"),
            ("moving_mean", "running_mean"),
            ("moving_variance", "running_var"),
        ):
            state[f"norms.{i}.{torch_name}"] = take(layer, keras, (ch,))
    d1, d2 = kinds["dense"]
    state["hidden.weight"] = np.ascontiguousarray(take(d1, "kernel", (_FEATURES, _HIDDEN)).T)
    state["hidden.bias"] = take(d1, "bias", (_HIDDEN,))
    state["out.weight"] = np.ascontiguousarray(take(d2, "kernel", (_HIDDEN, 1)).T)
    state["out.bias"] = take(d2, "bias", (1,))
    return state


def build_mesonet(arch: Arch, layers: KerasArrays | None = None) -> torch.nn.Module:
    """The reference network as PyTorch, in eval mode: float NCHW pixels / 255 in, the Keras logit out
    (sigmoid of it = P(real)). With `layers`, loaded strictly from a Keras file's arrays."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    specs = _conv_specs(arch)

    class MesoNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.ModuleList(
                nn.Conv2d(
                    s.cin, s.cout, s.kernel, padding=(s.kernel - 1) * s.dilation // 2, dilation=s.dilation
                )
                for s in specs
            )
            self.norms = nn.ModuleList(nn.BatchNorm2d(c, eps=BN_EPSILON) for c in _bn_channels(arch))
            self.hidden = nn.Linear(_FEATURES, _HIDDEN)
            self.out = nn.Linear(_HIDDEN, 1)

        def _inception(self, x: torch.Tensor, first: int) -> torch.Tensor:
            c = [self.convs[first + j] for j in range(7)]
            return torch.cat(
                [
                    F.relu(c[0](x)),
                    F.relu(c[2](F.relu(c[1](x)))),
                    F.relu(c[4](F.relu(c[3](x)))),
                    F.relu(c[6](F.relu(c[5](x)))),
                ],
                dim=1,
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block, pool in enumerate(_POOLS):
                if arch == "mesoinception4" and block < 2:
                    x = self._inception(x, 7 * block)
                else:
                    x = F.relu(self.convs[block if arch == "meso4" else 12 + block](x))
                x = F.max_pool2d(self.norms[block](x), pool, pool, ceil_mode=True)  # Keras "same" pooling
            x = x.permute(0, 2, 3, 1).flatten(1)  # Keras flattens HWC
            x = F.leaky_relu(self.hidden(x), LEAKY_SLOPE)
            logit: torch.Tensor = self.out(x)
            return logit

    net = MesoNet().eval()
    if layers is not None:
        state = {k: torch.from_numpy(v) for k, v in _state_dict(layers, arch).items()}
        buffers = {k: v for k, v in net.state_dict().items() if k.endswith("num_batches_tracked")}
        net.load_state_dict({**state, **buffers}, strict=True)
    return net


def _served(net: torch.nn.Module) -> torch.nn.Module:
    """uint8 NHWC crops in, the manipulation probability 1 - P(real) per crop out."""
    import torch
    from torch import nn

    class Served(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.permute(0, 3, 1, 2).float() / 255.0  # the reference feeds pixels / 255, nothing else
            return torch.sigmoid(-self.net(x)).reshape(-1)  # = 1 - sigmoid(logit) = 1 - P(real)

    return Served().eval()


def _parity_crops(n: int) -> npt.NDArray[np.uint8]:
    """Smooth random colour fields with a little noise: pixel noise alone drives MesoInception's sigmoid to
    exactly 0 or 1, where a parity check would prove nothing."""
    import cv2

    rng = np.random.default_rng(0)
    fields = rng.uniform(0, 255, (n, 4, 4, 3)).astype(np.float32)
    big = np.stack([cv2.resize(f, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_CUBIC) for f in fields])
    return np.clip(big + rng.normal(0, 8, big.shape), 0, 255).astype(np.uint8)


def find_licence_dir(checkpoint: Path) -> Path | None:
    """The nearest directory at or above the checkpoint (up to two levels) holding both LICENSE and NOTICE:
    the repository layout keeps the weights in `weights/` below them."""
    for d in [checkpoint.resolve().parent, *list(checkpoint.resolve().parents)[1:3]]:
        if all((d / n).is_file() for n in LICENCE_FILES):
            return d
    return None


def _copy_licence(licence_dir: Path | None, checkpoint: Path, out_dir: Path) -> None:
    src = licence_dir or find_licence_dir(checkpoint)
    if src is None or not all((src / n).is_file() for n in LICENCE_FILES):
        raise MesoNetFileError(
            f"MesoNet's Apache-2.0 terms require its LICENSE and NOTICE with every copy: none found beside "
            f"{checkpoint} or above it; pass --licence-dir (the MesoNet repository's root)"
        )
    text = (src / "LICENSE").read_text(errors="replace")
    if "Apache License" not in text or "Version 2.0" not in text:
        raise MesoNetFileError(f"{src / 'LICENSE'} is not the Apache License 2.0 that MesoNet ships")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in LICENCE_FILES:
        shutil.copyfile(src / name, out_dir / name)


def import_mesonet(
    checkpoint: Path,
    out_dir: Path,
    *,
    name: str,
    version: str = "imported",
    arch: Arch | None = None,
    licence_dir: Path | None = None,
    parity_crops: int = 4,
    threads: int = 2,
) -> ImportResult:
    """One MesoNet HDF5 file as `out_dir/model.onnx` + `model.json` + LICENSE + NOTICE, checked against the
    PyTorch rebuild on random crops. `arch`, when given, must be what the file holds."""
    import torch

    from service.models.importer import ImportResult

    torch.set_num_threads(threads)
    layers = read_keras_weights(checkpoint)
    found = detect_arch(layers)
    if arch is not None and arch != found:
        raise MesoNetFileError(f"{checkpoint} holds {found} weights, not {arch}")
    net = build_mesonet(found, layers)
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    _copy_licence(licence_dir, checkpoint, out_dir)
    served = _served(net)
    onnx_path = out_dir / "model.onnx"
    export_onnx(served, INPUT_SIZE, onnx_path)
    crops = _parity_crops(parity_crops)
    diff = check_parity(served, onnx_path, crops, threads=threads)
    what = PUBLISHED.get(sha, "weights that are not one of the four published files")
    manifest = write_manifest(
        onnx_path,
        name=name,
        version=version,
        trained=True,
        input_size=INPUT_SIZE,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        crop_margin=0.0,
        resize="aligned",
        output_meaning="probability that the face is manipulated (fake) = 1 - MesoNet's P(real)",
        description=(
            f"MesoNet {'Meso4' if found == 'meso4' else 'MesoInception4'} (Afchar et al., WIFS 2018), "
            f"{what}, "
            f"imported from Keras HDF5 {checkpoint.name}. Landmark-aligned 256-px crops, pixels / 255. "
            "Published cross-dataset AUCs are 0.5-0.75: expect little on modern fakes."
        ),
        licence=f"{LICENCE} ({SOURCE_REPOSITORY}); LICENSE and NOTICE beside this manifest travel with it",
        source={
            "repository": SOURCE_REPOSITORY,
            "commit": SOURCE_COMMIT,
            "file": checkpoint.name,
            "sha256": sha,
            "licence_files": list(LICENCE_FILES),
        },
    )
    return ImportResult(manifest, onnx_path, onnx_path.stat().st_size, diff)
