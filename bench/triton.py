"""Triton benchmark: the classifier through a real Triton server vs the embedded backend, same machine.

    python -m bench.triton [--batches 1 4 16 32 64] [--repeats 31] [--json]

Starts the CPU repository (Python-backend members on ONNX Runtime, the only backend the pytriton wheel
bundles) on 127.0.0.1. For each batch size: crops/s, p50 and p99 of `predict_many` (one ensemble call)
through Triton and of the embedded ONNX Runtime backend, interleaved call by call so machine noise hits both
alike, medians over `--repeats` warm calls, and the Triton overhead
(p50 ratio - 1). Then `--concurrency` clients send single-crop requests at once (image scoring) and the
average batch the dynamic batcher reached is read from the member's statistics (inference / execution count).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import percentile, platform_info
from devtools.triton_server import TritonServer
from service.inference import OnnxRuntimeBackend
from service.inference.triton import TritonBackend
from service.models import UNTRAINED_MANIFEST
from service.triton.repo import RepoOptions, build_repo


def _measure_pair(a: Any, b: Any, repeats: int) -> tuple[list[float], list[float]]:
    for _ in range(3):
        a()
        b()
    ta, tb = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t)
    return ta, tb


def _stats(server: TritonServer, model: str) -> tuple[int, int]:
    with urllib.request.urlopen(f"{server.http_url}/v2/models/{model}/stats", timeout=5) as r:
        s = json.load(r)["model_stats"][0]
    return int(s["inference_count"]), int(s["execution_count"])


def run(
    batches: list[int], repeats: int, concurrency: int, rounds: int, threads: int, delay_us: int, shm: bool
) -> dict[str, Any]:
    embedded = OnnxRuntimeBackend([UNTRAINED_MANIFEST], threads=threads)
    (m,) = embedded.models
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        repo = build_repo(
            [UNTRAINED_MANIFEST],
            Path(tmp),
            "cpu",
            RepoOptions(max_batch_size=64, max_queue_delay_microseconds=delay_us, cpu_threads=threads),
        )
        with TritonServer(repo) as server:
            backend = TritonBackend([UNTRAINED_MANIFEST], server.grpc_url, shared_memory=shm)
            rows = []
            for batch in batches:
                crops = rng.integers(0, 256, (batch, m.input_size, m.input_size, 3), dtype=np.uint8)
                t_tr, t_em = _measure_pair(
                    lambda c=crops: backend.predict_many({m.name: c}),
                    lambda c=crops: embedded.predict_many({m.name: c}),
                    repeats,
                )
                rows.append(
                    {
                        "batch": batch,
                        "triton_crops_per_s": round(batch / statistics.median(t_tr), 1),
                        "triton_p50_ms": round(statistics.median(t_tr) * 1000, 2),
                        "triton_p99_ms": round(percentile(t_tr, 99) * 1000, 2),
                        "embedded_crops_per_s": round(batch / statistics.median(t_em), 1),
                        "embedded_p50_ms": round(statistics.median(t_em) * 1000, 2),
                        "embedded_p99_ms": round(percentile(t_em, 99) * 1000, 2),
                        "triton_overhead": round(statistics.median(t_tr) / statistics.median(t_em) - 1, 3),
                    }
                )
            one = rng.integers(0, 256, (1, m.input_size, m.input_size, 3), dtype=np.uint8)
            count0, exec0 = _stats(server, m.name)
            for _ in range(rounds):
                barrier = threading.Barrier(concurrency)

                def client(b: threading.Barrier = barrier) -> None:
                    b.wait()
                    backend.predict_many({m.name: one})

                workers = [threading.Thread(target=client) for _ in range(concurrency)]
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
            count, execs = _stats(server, m.name)
            backend.close()
            startup = server.startup_seconds
    by_batch = {r["batch"]: r for r in rows}
    return {
        "results": rows,
        "triton_overhead_at_16": by_batch.get(16, {}).get("triton_overhead"),
        "average_batch_under_concurrency": round((count - count0) / max(1, execs - exec0), 2),
        "concurrent_requests": concurrency * rounds,
        "server_startup_s": startup,
        "parameters": {
            "batches": batches,
            "repeats": repeats,
            "concurrency": concurrency,
            "rounds": rounds,
            "ort_threads": threads,
            "max_queue_delay_microseconds": delay_us,
            "shared_memory": shm,
            "model": f"{m.name} {m.version}",
            "statistic": "median of warm calls",
        },
        "platform": platform_info(),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    p.add_argument("--repeats", type=int, default=31)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--queue-delay-us", type=int, default=2000, help="dynamic batching max_queue_delay")
    p.add_argument("--shm", action="store_true", help="send crops through system shared memory")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out = run(
        args.batches, args.repeats, args.concurrency, args.rounds, args.threads, args.queue_delay_us, args.shm
    )
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
