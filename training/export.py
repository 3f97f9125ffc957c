"""`python -m training.export --run DIR --out DIR`: the trained checkpoint as ONNX + manifest, parity-checked.

The manifest records exactly the crop recipe of training (margin, input size, resize, normalisation) from the
run's own config, and the export fails unless ONNX Runtime matches PyTorch within 1e-4 on random crops.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from service.models.export import check_parity, export_onnx, write_manifest
from training.config import TrainConfig
from training.data import CropSpec
from training.model import build_classifier
from training.pretrained import licence_note
from training.train import val_set

__all__ = ["export_run"]


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T minimising the log loss of sigmoid(logit / T) (a log-spaced grid: one parameter)."""
    grid = torch.logspace(-1, 1.5, 200)
    losses = [float(F.binary_cross_entropy_with_logits(logits / t, labels)) for t in grid]
    return float(grid[int(np.argmin(losses))])


def export_run(
    run: Path, out: Path, *, checkpoint: str = "best.pt", crops: int = 16, calibrate: bool = True
) -> dict[str, Any]:
    """Export `run/checkpoint` into `out/model.onnx` + `out/model.json`; returns a summary with the parity.

    With `calibrate`, the temperature is fitted on the validation pairs (held-out identities, as in training)
    and folded into the graph, so the service's thresholds act on calibrated probabilities.
    """
    cfg = TrainConfig.model_validate_json((run / "config.json").read_text())
    state = torch.load(run / checkpoint, map_location="cpu", weights_only=True)
    model = build_classifier(
        cfg.arch, drop_rate=cfg.drop_rate, freeze_blocks=cfg.freeze_blocks, head_norm=cfg.head_norm
    )
    model.load_state_dict(state["model"])
    model.eval()
    temperature = 1.0
    if calibrate:
        x, y = val_set(cfg, CropSpec(cfg.input_size, cfg.crop_margin, cfg.resize))
        with torch.no_grad():
            logits = torch.cat([model.forward_logits(x[i : i + 64]) for i in range(0, len(x), 64)])
        temperature = fit_temperature(logits, y)
        model.temperature = temperature
    start = f"fine-tuned from {cfg.weights.name}" if cfg.weights is not None else "trained from scratch"
    licence = "Proprietary (dfguard); training photos: see MODEL_CARD.md"
    backbone = licence_note(cfg.weights) if cfg.weights is not None else None
    if backbone:  # a pretrained start brings its data's terms along (VGGFace2: non-commercial)
        licence += f"; {backbone}"
    onnx_path = out / "model.onnx"
    export_onnx(model, cfg.input_size, onnx_path)
    rng = np.random.default_rng(0)
    sample = rng.integers(0, 256, (crops, cfg.input_size, cfg.input_size, 3), dtype=np.uint8)
    diff = check_parity(model, onnx_path, sample, threads=1)
    manifest = write_manifest(
        onnx_path,
        name=cfg.name,
        version=cfg.version,
        trained=True,
        input_size=cfg.input_size,
        mean=model.mean,
        std=model.std,
        crop_margin=cfg.crop_margin,
        resize=cfg.resize,
        description=f"{cfg.arch} {start} on Self-Blended Images of packaged real photos "
        f"(training/, step {state['step']}); see MODEL_CARD.md.",
        licence=licence,
    )
    return {
        "onnx": str(onnx_path),
        "manifest": str(manifest),
        "bytes": onnx_path.stat().st_size,
        "step": int(state["step"]),
        "onnx_vs_torch_max_abs_diff": diff,
        "temperature": temperature,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="training run directory")
    parser.add_argument("--out", type=Path, required=True, help="directory for model.onnx and model.json")
    parser.add_argument("--checkpoint", default="best.pt")
    parser.add_argument("--no-calibrate", action="store_true", help="keep temperature 1")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    summary = export_run(args.run, args.out, checkpoint=args.checkpoint, calibrate=not args.no_calibrate)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
