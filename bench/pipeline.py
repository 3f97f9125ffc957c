"""Pipeline benchmark: end-to-end latency of `Pipeline.score_file` against the decode-only floor.

    python -m bench.pipeline --video PATH [--runs 11] [--json]

Method: one process; 2 warm-up runs, then `--runs` measured runs each of (a) decode only, in this process,
with the pipeline's own sampling and decoder settings (the floor) and (b) the whole pipeline as served
(isolated decoder, detection, tracking, crops, classification, decision), interleaved so drift hits both
alike. Figures are medians; `cli_ms` times whole `dfguard score --json` processes (cold start included).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import percentile, platform_info, summary
from service.compose import build_pipeline
from service.config import Settings
from service.media import MediaLimits, PendingMedia, decode_media


def _rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # kB on Linux


def run(
    video: Path, runs: int, warmup: int, cli_runs: int, settings: Settings | None = None
) -> dict[str, Any]:
    settings = settings or Settings()
    limits = MediaLimits.from_settings(settings)
    pipeline = build_pipeline(settings, batching=False)
    for _ in range(warmup):
        decode_media(video, limits)
        pipeline.score_file(video)
    decode_ms: list[float] = []
    total_ms: list[float] = []
    stages: dict[str, list[float]] = {"decode": [], "detect": [], "classify": [], "audio": []}
    result = None
    for _ in range(runs):
        t = time.perf_counter()
        decode_media(video, limits)
        decode_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        result = pipeline.score_file(video)
        total_ms.append((time.perf_counter() - t) * 1000)
        for k in stages:
            stages[k].append(getattr(result.timings_ms, k))
    assert result is not None
    peak_self = _rss_mb(resource.RUSAGE_SELF)
    pending = PendingMedia(video, settings)  # one more isolated decode, to read the decoder's own peak RSS
    try:
        decoder_rss = pending.result().extra.get("decoder_peak_rss_mb", 0.0)
    finally:
        pending.close()
    cli_ms: list[float] = []
    dfguard = Path(sys.executable).with_name("dfguard")
    for _ in range(cli_runs):
        t = time.perf_counter()
        subprocess.run([str(dfguard), "score", "--json", str(video)], check=True, capture_output=True)
        cli_ms.append((time.perf_counter() - t) * 1000)
    p50 = statistics.median(total_ms)
    floor = statistics.median(decode_ms)
    return {
        "videos_per_s": round(1000 / p50, 3),
        "p50_ms": round(p50, 1),
        "p95_ms": round(percentile(total_ms, 95), 1),
        "stage_ms": {k: round(statistics.median(v), 1) for k, v in stages.items()},
        "decode_only_ms": round(floor, 1),
        "ratio_to_decode_only": round(p50 / floor, 3),
        "peak_rss_mb": round(peak_self, 1),
        "peak_rss_decoder_mb": round(decoder_rss, 1),
        "cli_ms": summary(cli_ms) if cli_ms else None,
        "spread_ms": {"total": summary(total_ms), "decode_only": summary(decode_ms)},
        "result": {
            "frames_sampled": result.frames_sampled,
            "faces_detected": result.faces_detected,
            "decision": result.decision,
            "media": result.media.model_dump(),
            "audio_windows": len(result.audio.windows) if result.audio is not None else None,
        },
        "parameters": {
            "video": str(video),
            "runs": runs,
            "warmup": warmup,
            "cli_runs": cli_runs,
            "statistic": "median",
            "settings": settings.model_dump(mode="json"),
            "model": result.model.model_dump(),
        },
        "platform": platform_info(),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", type=Path, required=True)
    p.add_argument("--runs", type=int, default=11)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--cli-runs", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON only (default: JSON too, indented)")
    args = p.parse_args(argv)
    out = run(args.video, args.runs, args.warmup, args.cli_runs)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
