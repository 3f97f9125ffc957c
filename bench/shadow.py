"""Shadow scoring's cost: gateway latency with and without a shadow ensemble, below the knee.

    python -m bench.shadow --video PATH [--clients 1] [--requests 20] [--rounds 2] [--json]

Method: real `dfguard serve` processes on 127.0.0.1, one per arm and round, arms interleaved (off, on, off,
on, ...) so the host's drift hits both alike. The "on" arm serves with `DFG_SHADOW_SAMPLE=1` and the
primary's own ensemble as the shadow (a shadow the size of the primary: the worst case the issue names), its
rows going to a throwaway SQLite store. Each server gets 2 warm-up requests, then `--clients` closed-loop
clients upload the clip until `--requests` are answered. Reported: p50/p95 per arm over all rounds, the p50
ratio on/off, and from the "on" servers' `/metrics` how many media the shadow compared and skipped (a
shadow that skipped everything would cost nothing and prove nothing).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.common import percentile, platform_info
from bench.gateway import drive
from devtools.servers import metric_value, wait_until
from loadtest.generator import ServerProcess
from service.config import Settings
from service.models import DEFAULT_ENSEMBLE


def _arm(video: Path, env: dict[str, str], clients: int, requests: int) -> dict[str, Any]:
    server = ServerProcess(env)
    try:
        _, warm_codes, _ = drive(server.url, video, 1, 2)  # warm-up
        lat, codes, _ = drive(server.url, video, clients, requests)
        out: dict[str, Any] = {"latencies": lat, "codes": dict(codes)}
        if "DFG_SHADOW_MODEL_PATHS" in env:
            # Only answered media are offered to the shadow: wait for the lane to settle each of them (the
            # last items may still be queued), but never past a minute, and report what it had done then.
            answered = warm_codes[200] + codes[200]

            def settled() -> bool:
                done = metric_value(server.url, "dfguard_shadow_decisions_total")
                skipped = metric_value(server.url, "dfguard_shadow_skipped_total")
                return done + skipped >= answered

            try:
                wait_until(settled, 60, interval=0.5, what="the shadow lane to finish")
            except AssertionError:
                out["unsettled"] = True
            out["compared"] = metric_value(server.url, "dfguard_shadow_decisions_total")
            out["skipped"] = metric_value(server.url, "dfguard_shadow_skipped_total")
        return out
    finally:
        server.stop()


def run(video: Path, clients: int, requests: int, rounds: int) -> dict[str, Any]:
    shadow = [str(p) for p in (Settings().model_paths or [DEFAULT_ENSEMBLE])]
    with tempfile.TemporaryDirectory(prefix="dfguard-bench-shadow-") as tmp:
        on_env = {
            "DFG_SHADOW_MODEL_PATHS": json.dumps(shadow),
            "DFG_SHADOW_SAMPLE": "1",
            "DFG_DATABASE_URL": f"sqlite:///{Path(tmp) / 'decisions.sqlite3'}",
        }
        off_env = {"DFG_DATABASE_URL": on_env["DFG_DATABASE_URL"]}
        lat: dict[str, list[float]] = {"off": [], "on": []}
        compared = skipped = 0.0
        errors = unsettled = 0
        for _ in range(rounds):
            for arm, env in (("off", off_env), ("on", on_env)):
                got = _arm(video, env, clients, requests)
                lat[arm] += got["latencies"]
                errors += sum(v for k, v in got["codes"].items() if k != 200)
                compared += got.get("compared", 0.0)
                skipped += got.get("skipped", 0.0)
                unsettled += bool(got.get("unsettled"))

    def ms(v: list[float], q: float) -> float | None:  # None: no request of the arm answered 200
        return round(percentile(v, q) * 1000, 1) if v else None

    both = lat["on"] and lat["off"]
    return {
        "p50_ms_off": ms(lat["off"], 50),
        "p50_ms_on": ms(lat["on"], 50),
        "p95_ms_off": ms(lat["off"], 95),
        "p95_ms_on": ms(lat["on"], 95),
        "p50_ratio_on_off": round(percentile(lat["on"], 50) / percentile(lat["off"], 50), 3)
        if both
        else None,
        "shadow_compared": int(compared),
        "shadow_skipped": int(skipped),
        "shadow_unsettled_rounds": unsettled,
        "non_200": errors,
        "parameters": {
            "video": str(video),
            "clients": clients,
            "requests_per_arm_and_round": requests,
            "rounds": rounds,
            "shadow": "the primary's ensemble (same size), DFG_SHADOW_SAMPLE=1",
        },
        "platform": platform_info(),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", type=Path, required=True)
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    result = run(a.video, a.clients, a.requests, a.rounds)
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            if k not in ("parameters", "platform"):
                print(f"{k:>22}: {v}")


if __name__ == "__main__":
    main()
