"""`python -m bench.backbones --json`: what each pretrained backbone costs to train and to serve on this CPU.

For every backbone of `training.backbones` (and today's `mobilenetv3_small_100` for reference), at each input
size, with no block frozen and with the first half of the blocks frozen:
* training throughput, images/s: batches of 32 uint8 crops through `Classifier.forward_logits`, BCE loss,
  backward and an AdamW step, torch with `--threads` threads; after `--warmup` steps, `--steps` timed steps,
  measured `--repeats` times (the machine is shared: the spread between repeats is the noise);
* serving: the classifier exported to ONNX (opset 17, the service's exporter), ONNX Runtime with `--threads`
  threads, ms per crop on batches of 32 (median of `--runs` runs after one warm-up), and the file size;
* parameters, total and trainable.
Weights are the converted ones when `.cache/pretrained/<model>.pt` exists (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import platform_info

__all__ = ["run"]

WEIGHTS = {
    "faceres": "faceres-deep",
    "mobilefacenet": "mobilefacenet",
    "mobileface": "mobileface",
    "centernet-mnv3": "centernet",
}
BASELINE = "mobilenetv3_small_100"


def _classifier(arch: str, freeze_half: bool, weights_dir: Path) -> tuple[Any, int]:
    from training.backbones import ARCHS
    from training.model import build_classifier

    if arch not in ARCHS:
        return build_classifier(arch), 0
    blocks = len(ARCHS[arch].build(0.0).blocks)
    freeze = blocks // 2 if freeze_half else 0
    path = weights_dir / f"{WEIGHTS[arch]}.pt"
    return build_classifier(arch, weights=path if path.exists() else None, freeze_blocks=freeze), freeze


def _train_rates(model: Any, size: int, batch: int, warmup: int, steps: int, repeats: int) -> list[float]:
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    y = torch.tensor([0.0, 1.0]).repeat(batch // 2)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step() -> None:
        loss = F.binary_cross_entropy_with_logits(model.forward_logits(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()

    for _ in range(warmup):
        step()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(round(batch * steps / (time.perf_counter() - t0), 2))
    return rates


def _onnx(model: Any, size: int, batch: int, runs: int, threads: int) -> tuple[list[float], int]:
    from service.faces.detector import ort_session
    from service.models.export import export_onnx

    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="bench-backbones-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, size, path)
        session = ort_session(path, threads)
        session.run(["output"], {"input": crops})
        per_crop = []
        for _ in range(runs):
            t0 = time.perf_counter()
            session.run(["output"], {"input": crops})
            per_crop.append(round((time.perf_counter() - t0) * 1000 / batch, 3))
        return per_crop, path.stat().st_size


def run(
    archs: list[str],
    sizes: list[int],
    *,
    threads: int = 2,
    batch: int = 32,
    warmup: int = 2,
    steps: int = 4,
    repeats: int = 2,
    runs: int = 5,
    weights_dir: Path = Path(".cache/pretrained"),
    progress: bool = True,
) -> dict[str, Any]:
    import torch

    from training.backbones import ARCHS

    torch.set_num_threads(threads)
    results = []
    for arch in archs:
        native = ARCHS[arch].native_size if arch in ARCHS else 224
        for size in sorted({*sizes, native}):
            for freeze_half in (False, True) if arch in ARCHS else (False,):
                model, frozen = _classifier(arch, freeze_half, weights_dir)
                rates = _train_rates(model, size, batch, warmup, steps, repeats)
                ms, onnx_bytes = _onnx(model, size, batch, runs, threads)
                row = {
                    "arch": arch,
                    "size": size,
                    "native": size == native,
                    "frozen_blocks": frozen,
                    "blocks": len(model.backbone.blocks) if arch in ARCHS else None,
                    "params": sum(p.numel() for p in model.parameters()),
                    "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                    "train_img_per_s": rates,
                    "train_img_per_s_median": statistics.median(rates),
                    "onnx_ms_per_crop": statistics.median(ms),
                    "onnx_ms_per_crop_runs": ms,
                    "onnx_bytes": onnx_bytes,
                }
                results.append(row)
                if progress:
                    print(json.dumps(row), file=sys.stderr, flush=True)
    return {
        "results": results,
        "parameters": {
            "archs": archs,
            "sizes": sizes,
            "threads": threads,
            "batch": batch,
            "warmup_steps": warmup,
            "timed_steps": steps,
            "repeats": repeats,
            "onnx_runs": runs,
            "optimizer": "AdamW",
            "weights": {a: WEIGHTS.get(a, "random") for a in archs},
        },
        "platform": platform_info() | {"torch": torch.__version__},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=[*WEIGHTS, BASELINE])
    parser.add_argument("--sizes", nargs="+", type=int, default=[112, 128, 160])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args(argv)
    result = run(
        args.archs,
        args.sizes,
        threads=args.threads,
        steps=args.steps,
        repeats=args.repeats,
        runs=args.runs,
        progress=not args.json,
    )
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
