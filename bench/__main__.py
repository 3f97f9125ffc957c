"""All benchmarks behind one command, and a regression guard against a stored baseline.

    python -m bench all --video PATH [--json] [--out bench/results/latest.json] [--skip triton ...]
    python -m bench compare [--latest bench/results/latest.json] [--baseline bench/results/baseline.json]
                            [--noise 0.15] [--fail]

`all` runs `bench.pipeline`, `bench.gateway`, `bench.triton`, `bench.worker` and `bench.evidence` (each:
warm-up, repeats, medians; see their docstrings; `bench.evidence` on its own 10-s 720p clip) and writes one
JSON object keyed by benchmark. `compare` prints, for the headline figures, the latest value, the baseline and
their ratio, marking a change worse than `--noise` as a regression; with `--fail` it exits 1 on one. The
default noise, 25 %, is what back-to-back runs on the shared 2-core machines stay within (the host's speed
drifted by up to 40 % over hours): make the baseline and the candidate back to back on one machine (`git
stash`, run, `cp latest.json baseline.json`, unstash, run). Ratios such as `ratio_to_decode_only` cancel most
of the drift. The platform of both files is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"

# (benchmark, dotted key, True when higher is better)
HEADLINES: list[tuple[str, str, bool]] = [
    ("pipeline", "p50_ms", False),
    ("pipeline", "decode_only_ms", False),
    ("pipeline", "ratio_to_decode_only", False),
    ("pipeline", "videos_per_s", True),
    ("pipeline", "cli_ms.median", False),
    ("gateway", "videos_per_s", True),
    ("gateway", "p99_ms", False),
    ("gateway", "server_5xx", False),
    ("triton", "triton_overhead_at_16", False),
    ("triton", "average_batch_under_concurrency", True),
    ("worker", "steady.worker_videos_per_s", True),
    ("worker", "burst_all_flagged_s", False),
]


def _get(doc: dict[str, Any], bench: str, key: str) -> float | None:
    node: Any = doc.get(bench)
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return float(node) if isinstance(node, int | float) else None


def run_all(video: Path, skip: set[str]) -> dict[str, Any]:
    from bench import evidence, gateway, pipeline, triton, worker

    out: dict[str, Any] = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if "pipeline" not in skip:
        out["pipeline"] = pipeline.run(video, runs=11, warmup=2, cli_runs=5)
    if "gateway" not in skip:
        out["gateway"] = gateway.run(video, clients=8, requests=48, overload_clients=24)
    if "triton" not in skip:
        out["triton"] = triton.run([1, 4, 16, 32, 64], 31, 16, 10, 2, 2000, False)
    if "worker" not in skip:
        out["worker"] = worker.run(video, events=16, repeats=3, burst_events=1000)
    if "evidence" not in skip:  # against its own 10-s 720p clip: the budget is stated for one
        out["evidence"] = evidence.run(evidence.default_video(), [3, 4, 5, 6, 8], faces=6, runs=3, warmup=1)
    return out


def compare(latest: dict[str, Any], baseline: dict[str, Any], noise: float) -> tuple[list[str], int]:
    lines = [f"{'benchmark.figure':<42} {'latest':>10} {'baseline':>10} {'ratio':>7}  verdict"]
    regressions = 0
    for bench, key, higher_better in HEADLINES:
        a, b = _get(latest, bench, key), _get(baseline, bench, key)
        if a is None or b is None:
            lines.append(f"{bench + '.' + key:<42} {'-':>10} {'-':>10} {'-':>7}  missing")
            continue
        ratio = a / b if b else (1.0 if a == b else float("inf"))
        worse = ratio < 1 - noise if higher_better else ratio > 1 + noise
        better = ratio > 1 + noise if higher_better else ratio < 1 - noise
        verdict = "REGRESSION" if worse else "better" if better else "within noise"
        regressions += worse
        lines.append(f"{bench + '.' + key:<42} {a:>10.3f} {b:>10.3f} {ratio:>7.3f}  {verdict}")
    return lines, regressions


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("all", help="run every benchmark, write one JSON file")
    a.add_argument("--video", type=Path, default=Path(".cache/sample.mp4"))
    a.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    a.add_argument(
        "--skip", nargs="*", default=[], choices=["pipeline", "gateway", "triton", "worker", "evidence"]
    )
    a.add_argument("--json", action="store_true")
    c = sub.add_parser("compare", help="ratio of the latest run to the stored baseline")
    c.add_argument("--latest", type=Path, default=RESULTS / "latest.json")
    c.add_argument("--baseline", type=Path, default=RESULTS / "baseline.json")
    c.add_argument("--noise", type=float, default=0.25)
    c.add_argument("--fail", action="store_true", help="exit 1 when a figure regressed beyond the noise")
    args = p.parse_args(argv)
    if args.command == "all":
        doc = run_all(args.video, set(args.skip))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps(doc) if args.json else f"wrote {args.out}")
        return 0
    latest, baseline = json.loads(args.latest.read_text()), json.loads(args.baseline.read_text())
    lines, regressions = compare(latest, baseline, args.noise)
    for bench in ("pipeline", "gateway", "triton", "worker", "evidence"):
        for name, doc in (("latest", latest), ("baseline", baseline)):
            plat = (doc.get(bench) or {}).get("platform") or {}
            if plat:
                lines.append(f"{name} {bench} platform: {plat.get('cpu')} x{plat.get('cores')}")
    print("\n".join(lines))
    return 1 if regressions and args.fail else 0


if __name__ == "__main__":
    sys.exit(main())
