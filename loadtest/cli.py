"""Command line of the load generator: prepare media and server, run the schedule, write the report.

    python -m loadtest (--url http://127.0.0.1:PORT [--server-pid PID] | --start-server [--env K=V ...])
                       [--profile constant|spike] [--rate R] [--spike-rate R2 --spike-at S --spike-for S]
                       [--duration S] [--max-requests N] [--max-in-flight N] [--timeout S] [--seed N]
                       [--mix KIND=W,...] [--media-dir DIR] --out DIR [--json]

Exit code 1 when any 5xx or connection error happened, the server died or `/healthz` was not 200 after the
run (or the server could not be started), 2 on bad arguments, 0 otherwise: timings never fail a run.
Only loopback targets are accepted unless `--allow-remote` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil

from bench.common import platform_info
from loadtest.generator import LoadConfig, Profile, ServerProcess, build_schedule, run_load, tree_rss_mb
from loadtest.mix import DEFAULT_CACHE_DIR, DEFAULT_WEIGHTS, build_media, parse_mix
from loadtest.report import summarize, write_outputs

__all__ = ["main", "run"]

MAX_DURATION_S = 3600.0
MAX_REQUESTS = 100_000
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected K=V, got {text!r}")
    return key, value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="gateway base URL, e.g. http://127.0.0.1:8080")
    target.add_argument("--start-server", action="store_true", help="start a dfguard serve of its own")
    p.add_argument("--env", type=_env_pair, action="append", default=[], metavar="K=V",
                   help="setting for the started server (repeatable), e.g. DFG_WORKERS=1")  # fmt: skip
    p.add_argument("--server-pid", type=int, help="with --url: sample this process tree's RSS")
    p.add_argument("--allow-remote", action="store_true", help="accept a non-loopback --url")
    p.add_argument("--profile", choices=("constant", "spike"), default="constant")
    p.add_argument("--rate", type=float, default=2.0, help="requests per second (Poisson arrivals)")
    p.add_argument("--spike-rate", type=float, help="rate during the spike (default 5 x --rate)")
    p.add_argument("--spike-at", type=float, help="spike start, s after the start (default duration / 3)")
    p.add_argument("--spike-for", type=float, help="spike length in s (default duration / 6, at least 1)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals")
    p.add_argument("--max-requests", type=int, default=10_000, help="stop the schedule after this many")
    p.add_argument("--max-in-flight", type=int, default=256, help="arrivals over this are dropped, not sent")
    p.add_argument("--timeout", type=float, default=60.0, help="client timeout per request, s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix", default="", help="weights, e.g. short_clip=0.5,long_clip=0,bad=0.2 "
                   f"(defaults {','.join(f'{k}={v}' for k, v in DEFAULT_WEIGHTS.items())})")  # fmt: skip
    p.add_argument("--media-dir", type=Path, default=DEFAULT_CACHE_DIR, help="media cache")
    p.add_argument("--out", type=Path, required=True, help="folder for loadtest.json / .png, requests.jsonl")
    p.add_argument("--json", action="store_true", help="print the summary JSON on stdout")
    return p


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.env and not args.start_server:
        p.error("--env only applies with --start-server")
    if args.server_pid is not None and args.start_server:
        p.error("--server-pid only applies with --url")
    if args.url is not None:
        parts = urlsplit(args.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            p.error(f"--url must be http(s)://HOST[:PORT], got {args.url!r}")
        if parts.hostname not in LOOPBACK and not args.allow_remote:
            p.error(f"--url host {parts.hostname!r} is not loopback (use --allow-remote)")
    if not 0 < args.duration <= MAX_DURATION_S:
        p.error(f"--duration must be in (0, {MAX_DURATION_S:g}]")
    if not 0 < args.max_requests <= MAX_REQUESTS:
        p.error(f"--max-requests must be in (0, {MAX_REQUESTS}]")
    if args.rate <= 0 or args.max_in_flight <= 0 or args.timeout <= 0:
        p.error("--rate, --max-in-flight and --timeout must be positive")
    if args.profile == "spike":
        args.spike_rate = 5 * args.rate if args.spike_rate is None else args.spike_rate
        args.spike_at = args.duration / 3 if args.spike_at is None else args.spike_at
        args.spike_for = max(1.0, args.duration / 6) if args.spike_for is None else args.spike_for
        if args.spike_rate <= 0 or args.spike_at < 0 or args.spike_for <= 0:
            p.error("--spike-rate and --spike-for must be positive, --spike-at not negative")
    elif any(v is not None for v in (args.spike_rate, args.spike_at, args.spike_for)):
        p.error("--spike-* only apply with --profile spike")
    try:
        args.weights = parse_mix(args.mix)
    except ValueError as exc:
        p.error(str(exc))


def _pid_alive(pid: int) -> bool:
    """Running, and not a zombie: a killed child stays in the table until its parent reaps it."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _healthz(url: str) -> int | None:
    try:
        return httpx.get(f"{url.rstrip('/')}/healthz", timeout=10).status_code
    except httpx.HTTPError:
        return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One load test from parsed arguments; the summary (also written to `args.out`)."""
    args.out.mkdir(parents=True, exist_ok=True)
    media = build_media(args.media_dir)
    profile = Profile(
        args.profile, args.rate, args.spike_rate or 0.0, args.spike_at or 0.0, args.spike_for or 0.0
    )
    env = dict(args.env)
    server = ServerProcess(env, args.out / "server.log") if args.start_server else None
    try:
        url = server.url if server is not None else str(args.url)
        pid = server.pid if server is not None else args.server_pid
        config = LoadConfig(
            url,
            profile,
            args.duration,
            args.max_requests,
            args.max_in_flight,
            args.timeout,
            args.seed,
            args.weights,
        )
        schedule = build_schedule(profile, args.duration, args.max_requests, args.weights, media, args.seed)
        rss_start = tree_rss_mb(pid) if pid is not None else None
        result = asyncio.run(run_load(config, schedule, pid))
        healthz = _healthz(url)
        rss_end = tree_rss_mb(pid) if pid is not None else None
        if server is not None:
            alive: bool | None = server.alive()
            exit_code = None if alive else server.proc.returncode
        else:
            alive = _pid_alive(pid) if pid is not None else None
            exit_code = None
    finally:
        if server is not None:
            server.stop()
    parameters = {
        "url": url,
        "started_server": server is not None,
        "server_env": env if server is not None else None,
        "profile": args.profile,
        "rate": args.rate,
        "spike_rate": args.spike_rate,
        "spike_at": args.spike_at,
        "spike_for": args.spike_for,
        "duration": args.duration,
        "max_requests": args.max_requests,
        "max_in_flight": args.max_in_flight,
        "timeout": args.timeout,
        "seed": args.seed,
        "mix": args.weights,
        "media": {m.name: len(m.data) for files in media.values() for m in files},
        "media_dir": str(args.media_dir),
        "arrivals": "poisson (thinning), latency from the scheduled time",
    }
    summary = summarize(
        result,
        offered_rate=profile.expected_requests(args.duration) / args.duration,
        rss_start=rss_start,
        rss_end=rss_end,
        server_alive_after=alive,
        server_exit_code=exit_code,
        healthz_after=healthz,
        parameters=parameters,
        platform=platform_info(),
    )
    summary["files"] = write_outputs(summary, result, args.out)
    return summary


def _text(summary: dict[str, Any]) -> str:
    req, lat = summary["requests"], summary["latency_ms"]
    lines = [
        f"sent {req['sent']}/{req['scheduled']} at {summary['achieved_rate_rps']} req/s "
        f"(offered {summary['offered_rate_rps']}); ok {req['ok']} ({summary['throughput_ok_rps']} /s)",
        f"200 latency ms: p50 {lat['p50']} p95 {lat['p95']} p99 {lat['p99']} max {lat['max']}",
        f"status {summary['status_counts']}; errors {summary['error_codes']}",
        f"queue max {summary['queue_depth_max']}; server RSS MiB {summary['server_rss_mb']}",
        "PASSED" if summary["passed"] else "FAILED: " + "; ".join(summary["failures"]),
        f"wrote {summary['files']['summary']} and {summary['files']['figure']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    _check(p, args)
    try:
        summary = run(args)
    except RuntimeError as exc:  # the server did not start: nothing was measured
        print(f"loadtest: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary) if args.json else _text(summary))
    return 0 if summary["passed"] else 1
