"""`python -m bench.backbones --json`: what each pretrained backbone costs to train and to serve on this CPU.

For every backbone of `training.backbones` (and today's `mobilenetv3_small_100` for reference), at each input
size (plus the native one when it is a crop size, <= 224 px), with no block frozen and with the first half of
the blocks frozen:
* training throughput: batches of 32 uint8 crops through `Classifier.forward_logits`, BCE loss, backward and
  an AdamW step, with torch on each of `--threads` (default 2 and 1); images per second of wall time and per
  second of process CPU time (less sensitive to other load on a shared machine);
* serving: the classifier exported to ONNX (opset 17, the service's exporter) and run by ONNX Runtime with
  the same thread counts, ms per crop on batches of 32, and the file size;
* parameters, total and trainable.
Configurations are measured interleaved, round after round (`--repeats`), so drift in the machine's speed
hits them alike; medians are reported with every round's figure. The load average before and after is
recorded: on the shared 2-core machine, other processes can slow 2-thread runs far more than 1-thread runs.
Weights are the converted ones when `.cache/pretrained/<model>.pt` exists (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
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


class _Config:
    """One (arch, size, frozen) point: its model, optimiser and batch, kept across rounds."""

    def __init__(
        self, arch: str, size: int, native: int, freeze_half: bool, batch: int, weights: Path
    ) -> None:
        import torch

        from training.backbones import ARCHS
        from training.model import build_classifier

        self.arch, self.size, self.native = arch, size, native
        blocks = len(ARCHS[arch].build(0.0).blocks) if arch in ARCHS else None
        self.blocks = blocks
        self.frozen = blocks // 2 if blocks and freeze_half else 0
        path = weights / f"{WEIGHTS.get(arch, '')}.pt"
        kwargs: dict[str, Any] = {"freeze_blocks": self.frozen}
        if arch in ARCHS and path.exists():
            kwargs["weights"] = path
        self.model = build_classifier(arch, **kwargs) if arch in ARCHS else build_classifier(arch)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(trainable, lr=1e-4)
        rng = np.random.default_rng(0)
        self.x = torch.from_numpy(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
        self.y = torch.tensor([0.0, 1.0]).repeat(batch // 2)
        self.train_wall: dict[int, list[float]] = {}
        self.train_cpu: dict[int, list[float]] = {}
        self.onnx_ms: dict[int, list[float]] = {}
        self.onnx_bytes = 0

    def step(self) -> None:
        import torch.nn.functional as F

        self.model.train()
        loss = F.binary_cross_entropy_with_logits(self.model.forward_logits(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.opt.step()

    def row(self) -> dict[str, Any]:
        params = list(self.model.parameters())

        def med(d: dict[int, list[float]]) -> dict[str, float]:
            return {str(t): round(statistics.median(v), 2) for t, v in d.items()}

        return {
            "arch": self.arch,
            "size": self.size,
            "native": self.size == self.native,
            "frozen_blocks": self.frozen,
            "blocks": self.blocks,
            "params": sum(p.numel() for p in params),
            "params_trainable": sum(p.numel() for p in params if p.requires_grad),
            "train_img_per_s": med(self.train_wall),
            "train_img_per_cpu_s": med(self.train_cpu),
            "onnx_ms_per_crop": {str(t): round(statistics.median(v), 3) for t, v in self.onnx_ms.items()},
            "rounds": {
                "train_img_per_s": {str(t): v for t, v in self.train_wall.items()},
                "train_img_per_cpu_s": {str(t): v for t, v in self.train_cpu.items()},
                "onnx_ms_per_crop": {str(t): v for t, v in self.onnx_ms.items()},
            },
            "onnx_bytes": self.onnx_bytes,
        }


def run(
    archs: list[str],
    sizes: list[int],
    *,
    threads: tuple[int, ...] = (2, 1),
    batch: int = 32,
    steps: int = 2,
    repeats: int = 3,
    runs: int = 3,
    weights_dir: Path = Path(".cache/pretrained"),
    progress: bool = True,
) -> dict[str, Any]:
    import torch

    from service.faces.detector import ort_session
    from service.models.export import export_onnx
    from training.backbones import ARCHS

    load_before = os.getloadavg()
    configs = []
    for arch in archs:
        native = ARCHS[arch].native_size if arch in ARCHS else 224
        for size in sorted({*sizes, *([native] if native <= 224 else [])}):
            for freeze_half in (False, True) if arch in ARCHS else (False,):
                configs.append(_Config(arch, size, native, freeze_half, batch, weights_dir))
    for n in threads:  # warm-up: allocator, oneDNN primitives, AdamW state
        torch.set_num_threads(n)
        for c in configs:
            c.step()
    for r in range(repeats):
        for n in threads:
            torch.set_num_threads(n)
            for c in configs:
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(steps):
                    c.step()
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                c.train_wall.setdefault(n, []).append(round(batch * steps / wall, 2))
                c.train_cpu.setdefault(n, []).append(round(batch * steps / cpu, 2))
        if progress:
            print(f"training round {r + 1}/{repeats} done", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-backbones-") as tmp:
        sessions = []
        crops = []
        for i, c in enumerate(configs):
            path = Path(tmp) / f"{i}.onnx"
            export_onnx(c.model, c.size, path)
            c.onnx_bytes = path.stat().st_size
            sessions.append({n: ort_session(path, n) for n in threads})
            crops.append(
                np.random.default_rng(1).integers(0, 256, (batch, c.size, c.size, 3), dtype=np.uint8)
            )
            for s in sessions[-1].values():
                s.run(["output"], {"input": crops[-1]})
        for _ in range(runs):
            for n in threads:
                for c, s, x in zip(configs, sessions, crops, strict=True):
                    t0 = time.perf_counter()
                    s[n].run(["output"], {"input": x})
                    c.onnx_ms.setdefault(n, []).append(round((time.perf_counter() - t0) * 1000 / batch, 3))
    return {
        "results": [c.row() for c in configs],
        "parameters": {
            "archs": archs,
            "sizes": sizes,
            "threads": list(threads),
            "batch": batch,
            "timed_steps_per_round": steps,
            "rounds": repeats,
            "onnx_runs": runs,
            "optimizer": "AdamW",
            "weights": {a: WEIGHTS.get(a, "random") for a in archs},
        },
        "platform": platform_info()
        | {
            "torch": torch.__version__,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=[*WEIGHTS, BASELINE])
    parser.add_argument("--sizes", nargs="+", type=int, default=[112, 128, 160])
    parser.add_argument("--threads", nargs="+", type=int, default=[2, 1])
    parser.add_argument(
        "--steps", type=int, default=2, help="timed training steps per configuration and round"
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--runs", type=int, default=3, help="ONNX Runtime batches per configuration")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args(argv)
    result = run(
        args.archs,
        args.sizes,
        threads=tuple(args.threads),
        steps=args.steps,
        repeats=args.repeats,
        runs=args.runs,
        progress=not args.json,
    )
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
