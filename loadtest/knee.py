"""Find the knee: the arrival rate at which p99 latency passes the SLO, and what happens past it.

    python -m loadtest.knee [--rates 0.5 1 1.5 2 2.5 3] [--duration 30] [--slo-ms 2000] --out DIR [--json]

For each rate, a fresh `dfguard serve` (embedded defaults unless `--env`) gets a constant open-loop load of
10-s 720p clips only (`--mix long_clip=1`) for `--duration` seconds, through `python -m loadtest`. Reported
per rate: offered and ok throughput, p50/p95/p99 of accepted requests, 429 share, 5xx, server RSS.
The knee is the first rate whose p99 exceeds the SLO; `DIR/knee.json` and `DIR/knee.png` hold the results.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def _run_rate(rate: float, duration: float, env: list[str], out: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "loadtest",
        "--start-server",
        "--profile",
        "constant",
        "--rate",
        str(rate),
        "--duration",
        str(duration),
        "--mix",
        "long_clip=1",
        "--out",
        str(out),
        "--json",
    ]
    for e in env:
        cmd += ["--env", e]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 300)
    summary: dict[str, Any] = json.loads(proc.stdout)
    summary["exit_code"] = proc.returncode
    return summary


def _plot(rows: list[dict[str, Any]], slo_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r["rate"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("p50", "p95", "p99"):
        ax1.plot(rates, [r["latency_ms"][key] for r in rows], marker="o", label=key)
    ax1.axhline(slo_ms, color="red", linestyle="--", label=f"SLO {slo_ms:.0f} ms")
    ax1.set_xlabel("offered rate (10-s clips per s)")
    ax1.set_ylabel("latency of accepted requests (ms)")
    ax1.legend()
    ax2.plot(rates, [r["throughput_ok_rps"] for r in rows], marker="o", label="ok / s")
    ax2.plot(rates, [r["share_429"] for r in rows], marker="s", label="429 share")
    ax2.plot(rates, [r["server_5xx"] for r in rows], marker="x", label="5xx count")
    ax2.set_xlabel("offered rate (10-s clips per s)")
    ax2.legend()
    fig.suptitle("dfguard gateway, embedded backend, 2 cores")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--slo-ms", type=float, default=2000.0)
    p.add_argument("--env", action="append", default=[], metavar="K=V")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = []
    for rate in args.rates:
        s = _run_rate(rate, args.duration, args.env, args.out / f"rate-{rate:g}")
        req = s["requests"]
        rows.append(
            {
                "rate": rate,
                "achieved_rate_rps": s["achieved_rate_rps"],
                "throughput_ok_rps": s["throughput_ok_rps"],
                "latency_ms": s["latency_ms"],
                "share_429": round(req["rejected_429"] / max(1, req["answered"]), 3),
                "server_5xx": s["server_5xx"],
                "connection_errors": req["connection_errors"],
                "server_rss_mb": s["server_rss_mb"],
                "exit_code": s["exit_code"],
            }
        )
    knee = next((r["rate"] for r in rows if (r["latency_ms"]["p99"] or 0) > args.slo_ms), None)
    doc = {
        "knee_rate": knee,
        "slo_ms": args.slo_ms,
        "rows": rows,
        "parameters": vars(args) | {"out": str(args.out)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "knee.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    _plot(rows, args.slo_ms, args.out / "knee.png")
    print(json.dumps(doc, default=str) if args.json else json.dumps(doc, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
