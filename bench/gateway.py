"""Gateway benchmark: a real `dfguard serve` process under concurrent clients, against the bare pipeline.

    python -m bench.gateway --video PATH [--clients 8] [--requests 48] [--json]

Phases, all on 127.0.0.1: (1) the bare pipeline's videos/s in one process (`bench.pipeline` method, fewer
runs); (2) `--clients` closed-loop clients each uploading the clip until `--requests` are answered, after 2
warm-up requests: throughput, p50/p95/p99, status counts; (3) overload: `--overload-clients` clients against a
gateway limited to `workers + max_queue` admitted requests: 429s expected, 5xx never, server RSS before/after.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.common import percentile, platform_info
from loadtest.generator import ServerProcess
from service.compose import build_pipeline
from service.config import Settings


def drive(url: str, video: Path, clients: int, total: int) -> tuple[list[float], Counter[int], float]:
    """`clients` closed-loop clients upload `video` to `/v1/score` until `total` requests are answered:
    the latencies of the 200s, the count of each status, and the wall time (shared with `bench.shadow`)."""
    data = video.read_bytes()

    def one(client: httpx.Client) -> tuple[int, float]:
        t = time.perf_counter()
        r = client.post(f"{url}/v1/score", files={"file": (video.name, data)}, timeout=300)
        return r.status_code, time.perf_counter() - t

    latencies: list[float] = []
    codes: Counter[int] = Counter()
    remaining = [total]

    def worker() -> None:
        with httpx.Client() as client:
            while True:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
                code, dt = one(client)
                codes[code] += 1
                if code == 200:
                    latencies.append(dt)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(worker) for _ in range(clients)]:
            f.result()
    return latencies, codes, time.perf_counter() - started


def run(video: Path, clients: int, requests: int, overload_clients: int) -> dict[str, Any]:
    pipeline = build_pipeline(Settings(), batching=False)  # the bare pipeline, one caller
    for _ in range(2):
        pipeline.score_file(video)
    base = []
    for _ in range(7):
        t = time.perf_counter()
        pipeline.score_file(video)
        base.append(time.perf_counter() - t)
    pipeline_vps = 1 / statistics.median(base)

    server = ServerProcess({})
    try:
        drive(server.url, video, 2, 2)  # warm-up
        lat, codes, wall = drive(server.url, video, clients, requests)
        ok = codes[200]
        steady = {
            "videos_per_s": round(ok / wall, 3),
            "ratio_to_pipeline": round((ok / wall) / pipeline_vps, 3),
            "p50_ms": round(percentile(lat, 50) * 1000, 1),
            "p95_ms": round(percentile(lat, 95) * 1000, 1),
            "p99_ms": round(percentile(lat, 99) * 1000, 1),
            "p99_over_p50": round(percentile(lat, 99) / percentile(lat, 50), 2),
            "status_counts": {str(k): v for k, v in sorted(codes.items())},
            "server_5xx": sum(v for k, v in codes.items() if k >= 500),
            "server_rss_mb": round(server.rss_mb() or 0.0, 1),
        }
    finally:
        server.stop()

    limited = {"DFG_WORKERS": "2", "DFG_MAX_QUEUE": "4"}
    server = ServerProcess(limited)
    try:
        drive(server.url, video, 2, 2)
        rss_before = server.rss_mb() or 0.0
        lat, codes, wall = drive(server.url, video, overload_clients, overload_clients * 6)
        rss_after = server.rss_mb() or 0.0
        overload = {
            "clients": overload_clients,
            "settings": limited,
            "status_counts": {str(k): v for k, v in sorted(codes.items())},
            "server_5xx": sum(v for k, v in codes.items() if k >= 500),
            "accepted_p50_ms": round(percentile(lat, 50) * 1000, 1) if lat else None,
            "server_rss_mb_before": round(rss_before, 1),
            "server_rss_mb_after": round(rss_after, 1),
        }
    finally:
        server.stop()
    return {
        **steady,
        "pipeline_videos_per_s": round(pipeline_vps, 3),
        "overload": overload,
        "parameters": {
            "video": str(video),
            "clients": clients,
            "requests": requests,
            "pipeline_runs": len(base),
            "settings": "defaults (DFG_* unset)",
        },
        "platform": platform_info(),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", type=Path, required=True)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--overload-clients", type=int, default=24)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out = run(args.video, args.clients, args.requests, args.overload_clients)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
