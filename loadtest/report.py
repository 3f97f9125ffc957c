"""Summary (`loadtest.json`), per-request log (`requests.jsonl`) and figure (`loadtest.png`) of one run.

Latency percentiles (linear interpolation, `bench.common.percentile`) are over successful (200) responses
unless stated; per kind they are over every answered response that was admitted (not 429), because a bad
file's correct answer is a 4xx. Time series use 1-s windows: latency by scheduled start, throughput and
errors by completion time. The run fails (exit code 1) on a 5xx, a connection error, a server that died or a
`/healthz` that is not 200 afterwards; never on latency, throughput, 429s, client timeouts or dropped
arrivals, which are reported only.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from bench.common import percentile
from loadtest.generator import (
    ABANDONED,
    CLIENT_TIMEOUT,
    CONNECTION_ERROR,
    INFLIGHT_CAP,
    Record,
    RunResult,
)

__all__ = ["failures", "summarize", "write_outputs", "write_png"]


def _pcts(values_s: Sequence[float]) -> dict[str, float | int | None]:
    if not values_s:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50": round(percentile(ms, 50), 1),
        "p95": round(percentile(ms, 95), 1),
        "p99": round(percentile(ms, 99), 1),
        "max": round(max(ms), 1),
        "mean": round(statistics.fmean(ms), 1),
    }


def _counts(items: Iterable[Any]) -> dict[str, int]:
    c = Counter(str(i) for i in items)
    return dict(sorted(c.items()))


def _is_connection_error(r: Record) -> bool:
    return r.error_code is not None and r.error_code.startswith(CONNECTION_ERROR)


def _max(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return max(present) if present else None


def _round(v: float | None, nd: int = 1) -> float | None:
    return None if v is None else round(v, nd)


def failures(summary: Mapping[str, Any]) -> list[str]:
    """Why the run failed (empty when it did not): what CI must not accept, never a timing."""
    out: list[str] = []
    if summary["server_5xx"]:
        out.append(f"{summary['server_5xx']} responses with a 5xx status")
    if summary["requests"]["connection_errors"]:
        out.append(f"{summary['requests']['connection_errors']} connection errors")
    if summary["server_alive_after"] is False:
        out.append(f"the server process died (exit code {summary['server_exit_code']})")
    if summary["healthz_after"] != 200:
        out.append(f"/healthz after the run answered {summary['healthz_after']} (expected 200)")
    return out


def summarize(
    result: RunResult,
    *,
    offered_rate: float,
    rss_start: float | None,
    rss_end: float | None,
    server_alive_after: bool | None,
    server_exit_code: int | None,
    healthz_after: int | None,
    parameters: Mapping[str, Any],
    platform: Mapping[str, Any],
) -> dict[str, Any]:
    recs = result.records
    answered = [r for r in recs if r.status is not None]
    ok = [r for r in answered if r.status == 200]
    sent = [r for r in recs if r.sent_s is not None]
    kinds: dict[str, Any] = {}
    for kind in sorted({r.kind for r in recs}):
        mine = [r for r in recs if r.kind == kind]
        kinds[kind] = {
            "scheduled": len(mine),
            "status_counts": _counts(r.status for r in mine if r.status is not None),
            "error_codes": _counts(r.error_code for r in mine if r.error_code is not None),
            "latency_ms": _pcts(
                [r.latency_s for r in mine if r.status not in (None, 429) and r.latency_s is not None]
            ),
        }
    retry_after = [r.retry_after_s for r in answered if r.status == 429 and r.retry_after_s is not None]
    rss = [s.rss_mb for s in result.samples]
    summary: dict[str, Any] = {
        "passed": True,
        "failures": [],
        "requests": {
            "scheduled": len(recs),
            "sent": len(sent),
            "answered": len(answered),
            "ok": len(ok),
            "rejected_429": sum(1 for r in answered if r.status == 429),
            "connection_errors": sum(1 for r in recs if _is_connection_error(r)),
            "client_timeouts": sum(1 for r in recs if r.error_code == CLIENT_TIMEOUT),
            "dropped_inflight_cap": sum(1 for r in recs if r.error_code == INFLIGHT_CAP),
            "abandoned": sum(1 for r in recs if r.error_code == ABANDONED),
        },
        "elapsed_s": round(result.elapsed_s, 2),
        "send_window_s": round(result.send_window_s, 2),
        "offered_rate_rps": round(offered_rate, 3),
        "achieved_rate_rps": round(len(sent) / result.send_window_s, 3) if result.send_window_s else None,
        "throughput_ok_rps": round(len(ok) / result.elapsed_s, 3) if result.elapsed_s else None,
        "latency_ms": _pcts([r.latency_s for r in ok if r.latency_s is not None]),
        "latency_ms_by_status": {
            str(code): _pcts([r.latency_s for r in answered if r.status == code and r.latency_s is not None])
            for code in sorted({r.status for r in answered if r.status is not None})
        },
        "kinds": kinds,
        "status_counts": _counts(r.status for r in answered),
        "error_codes": _counts(r.error_code for r in recs if r.error_code is not None),
        "server_5xx": sum(1 for r in answered if r.status is not None and r.status >= 500),
        "retry_after_s": {"min": min(retry_after), "max": max(retry_after)} if retry_after else None,
        "queue_depth_max": _max(s.queue_depth for s in result.samples),
        "in_flight_max": _max(s.in_flight for s in result.samples),
        "client_in_flight_max": result.max_in_flight_seen,
        "send_lag_max_ms": round(result.max_send_lag_s * 1000, 1),
        "metrics_samples": sum(1 for s in result.samples if s.queue_depth is not None),
        "server_rss_mb": {"start": _round(rss_start), "end": _round(rss_end), "max": _round(_max(rss))},
        "server_alive_after": server_alive_after,
        "server_exit_code": server_exit_code,
        "healthz_after": healthz_after,
        "parameters": dict(parameters),
        "platform": dict(platform),
    }
    summary["failures"] = failures(summary)
    summary["passed"] = not summary["failures"]
    return summary


def _windows(n: int) -> list[float]:
    return [i + 0.5 for i in range(n)]


def write_png(result: RunResult, path: Path, title: str, spike: tuple[float, float] | None = None) -> None:
    """Four panels on one time axis: latency percentiles, throughput, errors by code, server queue/RSS."""
    recs = result.records
    n = max(1, math.ceil(result.elapsed_s))
    xs = _windows(n)
    fig = Figure(figsize=(11, 12), constrained_layout=True)
    ax_lat, ax_thr, ax_err, ax_q = fig.subplots(4, 1, sharex=True)
    fig.suptitle(title, fontsize=10)
    if spike is not None:
        for ax in (ax_lat, ax_thr, ax_err, ax_q):
            ax.axvspan(spike[0], spike[0] + spike[1], color="orange", alpha=0.12, lw=0)

    by_start: list[list[float]] = [[] for _ in range(n)]
    for r in recs:
        if r.status == 200 and r.latency_s is not None:
            by_start[min(n - 1, int(r.scheduled_s))].append(r.latency_s * 1000)
    for q, style in ((50, "-"), (95, "--"), (99, ":")):
        ys = [percentile(w, q) if w else math.nan for w in by_start]
        ax_lat.plot(xs, ys, style, marker=".", label=f"p{q}")
    ok_pts = [
        (r.scheduled_s, r.latency_s * 1000) for r in recs if r.status == 200 and r.latency_s is not None
    ]
    if ok_pts:
        ax_lat.scatter(*zip(*ok_pts, strict=True), s=4, color="grey", alpha=0.4, label="each 200")
    ax_lat.set_ylabel("latency of 200s (ms)\nby scheduled start")
    ax_lat.legend(loc="upper left", fontsize=8)

    def per_second(times: Iterable[float | None]) -> list[int]:
        counts = [0] * n
        for t in times:
            if t is not None:
                counts[min(n - 1, int(t))] += 1
        return counts

    ax_thr.plot(
        xs, per_second(r.scheduled_s for r in recs), drawstyle="steps-mid", label="offered (scheduled)"
    )
    ax_thr.plot(xs, per_second(r.done_s for r in recs if r.status == 200), drawstyle="steps-mid", label="200")
    ax_thr.plot(xs, per_second(r.done_s for r in recs if r.status == 429), drawstyle="steps-mid", label="429")
    ax_thr.set_ylabel("requests / s")
    ax_thr.legend(loc="upper left", fontsize=8)

    codes = sorted({r.error_code for r in recs if r.error_code is not None})
    bottom = [0] * n
    for code in codes:
        counts = per_second(
            (r.done_s if r.done_s is not None else r.scheduled_s) for r in recs if r.error_code == code
        )
        ax_err.bar(xs, counts, width=0.9, bottom=bottom, label=code)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax_err.set_ylabel("errors / s by code")
    if codes:
        ax_err.legend(loc="upper left", fontsize=7, ncol=2)

    ts = [s.t for s in result.samples]
    queue = [math.nan if s.queue_depth is None else s.queue_depth for s in result.samples]
    ax_q.plot(ts, queue, drawstyle="steps-post", label="queue")
    ax_q.plot(
        ts,
        [math.nan if s.in_flight is None else s.in_flight for s in result.samples],
        drawstyle="steps-post",
        label="in flight",
    )
    ax_q.set_ylabel("server gauges")
    ax_q.set_xlabel("seconds since start")
    ax_q.legend(loc="upper left", fontsize=8)
    if any(s.rss_mb is not None for s in result.samples):
        ax_rss = ax_q.twinx()
        ax_rss.plot(
            ts, [math.nan if s.rss_mb is None else s.rss_mb for s in result.samples], "k:", label="RSS"
        )
        ax_rss.set_ylabel("server RSS (MiB)")
        ax_rss.legend(loc="upper right", fontsize=8)
    fig.savefig(path, dpi=100)


def write_outputs(summary: Mapping[str, Any], result: RunResult, out: Path) -> dict[str, str]:
    """Write loadtest.json, requests.jsonl and loadtest.png into `out`; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "summary": str(out / "loadtest.json"),
        "requests": str(out / "requests.jsonl"),
        "figure": str(out / "loadtest.png"),
    }
    with open(files["requests"], "w") as fh:
        for r in result.records:
            fh.write(json.dumps(asdict(r)) + "\n")
    p = summary["parameters"]
    title = (
        f"dfguard load test: {p['profile']} {p['rate']} req/s"
        + (
            f", spike {p['spike_rate']} req/s at {p['spike_at']} s for {p['spike_for']} s"
            if p["profile"] == "spike"
            else ""
        )
        + f", {p['duration']} s; {summary['requests']['sent']} sent, {summary['status_counts']}"
    )
    spike = (float(p["spike_at"]), float(p["spike_for"])) if p["profile"] == "spike" else None
    write_png(result, Path(files["figure"]), title, spike)
    with open(files["summary"], "w") as fh:
        json.dump({**summary, "files": files}, fh, indent=2)
        fh.write("\n")
    return files
