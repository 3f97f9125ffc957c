"""`python -m bench.models --json`: the imported DFDC-winner ensemble, ONNX Runtime vs PyTorch fp32 eager.

Both run the same N (default 7) `tf_efficientnet_b7_ns` classifiers (random weights: the same work as the
published ones) on the same 32 face crops (380 px, the winner's crop recipe), on the CPU with the same thread
count. PyTorch runs the reference path (normalise outside, eager forward, sigmoid); ONNX Runtime runs the
graphs `dfguard models import` wrote, through the service's backend. Both are warmed up on 2 crops first.
Reported: seconds for the whole ensemble per side, the speed-up, and the largest output difference. A full run
takes about 10 minutes on 2 cores (7 exports included); `--models 1` is the quick look.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.common import platform_info
from service.faces import crop_face

__all__ = ["run"]

MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def _crops(n: int) -> npt.NDArray[np.uint8]:
    from skimage import data

    frame = np.ascontiguousarray(data.astronaut())  # type: ignore[no-untyped-call]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        x, y = rng.uniform(150, 200), rng.uniform(40, 80)
        w = rng.uniform(80, 130)
        out.append(crop_face(frame, (x, y, x + w, y + w * 1.25), 1 / 3, 380, "area_cubic"))
    return np.stack(out)


def run(
    models: int = 7, crops: int = 32, threads: int = 2, work: Path = Path(".cache/bench-models")
) -> dict[str, Any]:
    import torch

    from service.inference import OnnxRuntimeBackend
    from service.models.importer import build_reference, import_checkpoint

    torch.set_num_threads(threads)
    x_u8 = _crops(crops)
    nets, manifests = [], []
    t_import = time.perf_counter()
    for i in range(models):
        torch.manual_seed(i)
        net = build_reference("dfdc")
        ckpt = work / f"b7_{i}.pth"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": net.state_dict()}, ckpt)
        res = import_checkpoint(ckpt, "dfdc", work / f"dfdc-b7-{i}", name=f"dfdc-b7-{i}", parity_crops=1)
        ckpt.unlink()
        nets.append(net)
        manifests.append(res.manifest)
    import_s = time.perf_counter() - t_import

    def torch_scores(batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        x = torch.from_numpy(((batch.transpose(0, 3, 1, 2).astype(np.float32) / 255.0) - MEAN) / STD)
        with torch.no_grad():
            return np.stack([torch.sigmoid(net(x)).reshape(-1).numpy() for net in nets])

    backend = OnnxRuntimeBackend(manifests, threads=threads, max_batch_size=crops)
    names = [m.name for m in backend.models]

    def ort_scores(batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        out = backend.predict_many(dict.fromkeys(names, batch))
        return np.stack([out[n] for n in names])

    torch_scores(x_u8[:2])
    ort_scores(x_u8[:2])
    t0 = time.perf_counter()
    ref = torch_scores(x_u8)
    torch_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = ort_scores(x_u8)
    ort_s = time.perf_counter() - t0
    diff = float(np.max(np.abs(got.astype(np.float64) - ref)))
    return {
        "torch_eager_s": round(torch_s, 2),
        "onnxruntime_s": round(ort_s, 2),
        "speedup": round(torch_s / ort_s, 2),
        "per_model_torch_s": round(torch_s / models, 2),
        "per_model_onnxruntime_s": round(ort_s / models, 2),
        "max_abs_diff": diff,
        "ensemble_mean_max_abs_diff": float(np.max(np.abs(got.mean(axis=0) - ref.mean(axis=0)))),
        "outputs_equal_within_1e-4": diff < 1e-4,
        "reference_output_range": [round(float(ref.min()), 4), round(float(ref.max()), 4)],
        "import_s": round(import_s, 1),
        "parameters": {
            "models": models,
            "crops": crops,
            "input_size": 380,
            "threads": threads,
            "repeats": 1,
            "warmup_crops": 2,
            "dtype": "float32",
            "architecture": "tf_efficientnet_b7_ns + linear",
        },
        "platform": {**platform_info(), "torch": torch.__version__},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=7)
    parser.add_argument("--crops", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(".cache/bench-models"))
    parser.add_argument("--json", action="store_true", help="one JSON object (the default output too)")
    args = parser.parse_args(argv)
    result = run(args.models, args.crops, args.threads, args.work)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result["outputs_equal_within_1e-4"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
