"""Kafka producer load for the worker: upload events at open-loop arrival rates, flags and dead letters back.

    python -m loadtest.kafka --rate 2 --duration 30 [--spike-rate 10 --spike-at 10 --spike-for 5]
                             [--mix short_clip=0.5,...] [--bootstrap HOST:PORT] [--out DIR]
    python -m loadtest.kafka --tenants steady=0.2,bursty=2 --duration 60   # one tenant bursting 10x

`--tenants NAME=RATE,...` sends several tenants at once, each its own seeded Poisson schedule at its own
constant rate (events/s) for `--duration` (it replaces `--rate` and the spike options), merged by time: the
way to measure per-tenant fairness, e.g. one tenant bursting at 10x another's rate past the worker's
capacity. The JSON reports event->flag percentiles per tenant (`tenants`) as well as overall; without
`--tenants` every event is tenant `acme` at `--rate` (with the spike, if any).

Without `--bootstrap` it starts its own Apache Kafka broker (devtools/kafka_broker.py) on 127.0.0.1; it always
starts a real `dfguard worker` process on fresh topics. The mix is the gateway load's (short and long clips,
images, reposts, bad files), sent as file:// URIs under `OUT/media`: every first upload is a distinct file
(the mix's media with a unique trailer the decoders ignore: an mp4 `free` box, bytes after a JPEG's EOI or a
PNG's IEND), so only reposts are byte-identical to an earlier upload, as on a real platform. Every event is
accounted for: a flag event (matched by `source_event_id`) or a dead letter (matched by the event's bytes).
Event->flag latency runs from the scheduled send time to the flag's arrival at a consumer here. The worker's
lag gauge and the true lag (broker end offsets minus the group's committed offsets) are sampled every second.

Writes `OUT/kafka_load.json` and `OUT/kafka_load.png`; exits 1 when an event was lost (neither flagged nor
dead-lettered within `--drain` seconds after the last send) or the worker died, never on latency.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from kafka import KafkaConsumer
from matplotlib.figure import Figure

from bench.common import percentile, platform_info
from devtools.kafka_broker import KafkaBroker
from devtools.kafka_tools import Producer, Topics, committed_and_end, create_topics, upload_event
from devtools.servers import free_port
from loadtest.generator import Arrival, Profile, build_schedule, parse_gauges
from loadtest.mix import DEFAULT_CACHE_DIR, DEFAULT_WEIGHTS, build_media, parse_mix

__all__ = ["parse_tenants", "run"]

DEFAULT_TENANT = "acme"


@dataclass
class _Sent:
    event_id: str
    kind: str
    at: float  # scheduled, seconds from the start
    tenant: str = DEFAULT_TENANT
    sent: float | None = None
    outcome: str | None = None  # "flag:<decision>" or "dlq:<code>"
    done: float | None = None


@dataclass
class _State:
    sent: dict[str, _Sent] = field(default_factory=dict)
    by_value: dict[bytes, str] = field(default_factory=dict)  # event bytes -> event_id (for dead letters)
    lag: list[tuple[float, float, float]] = field(default_factory=list)  # (t, gauge, true)
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def _broker(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    with KafkaBroker() as broker:
        yield broker.bootstrap


def _collect(bootstrap: str, topics: Topics, state: _State, t0: float, stop: threading.Event) -> None:
    consumer = KafkaConsumer(
        topics.flags, topics.dlq, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    try:
        while not stop.is_set():
            for tp, batch in consumer.poll(timeout_ms=200).items():
                now = time.perf_counter() - t0
                for r in batch:
                    with state.lock:
                        if tp.topic == topics.flags:
                            flag = json.loads(r.value)
                            item = state.sent.get(flag["source_event_id"])
                            outcome = f"flag:{flag['decision']}"
                        else:
                            item = state.sent.get(state.by_value.get(r.value, ""))
                            outcome = f"dlq:{dict(r.headers).get('dfg-error-code', b'?').decode()}"
                        if item is not None and item.outcome is None:
                            item.outcome, item.done = outcome, now
    finally:
        consumer.close()


def _sample_lag(
    bootstrap: str, topics: Topics, metrics_url: str, state: _State, t0: float, stop: threading.Event
) -> None:
    while not stop.wait(1.0):
        try:
            text = httpx.get(metrics_url, timeout=2).text
            gauge = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("dfguard_worker_consumer_lag{")
            )
            committed, end = committed_and_end(bootstrap, topics.group, topics.uploads)
        except (httpx.HTTPError, OSError, ValueError):
            continue
        true = float(sum(end[p] - committed.get(p, 0) for p in end))
        with state.lock:
            state.lag.append((time.perf_counter() - t0, gauge, true))


def _worker(
    bootstrap: str, topics: Topics, media_root: Path, metrics_port: int, log: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **topics.env(),
        "DFG_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DFG_FILE_URI_ROOT": str(media_root),
        "DFG_WORKER_METRICS_PORT": str(metrics_port),
        "DFG_DATABASE_URL": f"sqlite:///{log.parent / 'decisions.sqlite3'}",
    }
    exe = str(Path(sys.executable).with_name("dfguard"))
    return subprocess.Popen([exe, "worker"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _unique_copy(media_root: Path, name: str, data: bytes, index: int) -> Path:
    """`data` plus a trailer that changes its sha256 but not what decodes."""
    tag = f"dfguard-load-{index:06d}".encode()
    trailer = struct.pack(">I4s", 8 + len(tag), b"free") + tag if name.endswith(".mp4") else tag
    path = media_root / f"{index:06d}-{name}"
    path.write_bytes(data + trailer)
    return path


def _upload_path(media_root: Path, arrival: Arrival, first: dict[str, Path]) -> Path:
    if arrival.kind == "bad":
        return media_root / arrival.media.name
    if arrival.kind == "repost" and arrival.media.name in first:
        return first[arrival.media.name]  # byte-identical to an earlier upload
    path = _unique_copy(media_root, arrival.media.name, arrival.media.data, arrival.index)
    first.setdefault(arrival.media.name, path)
    return path


def parse_tenants(text: str) -> dict[str, float]:
    """`steady=0.2,bursty=2` -> {tenant: events per second}; names as the event contract allows them."""
    rates: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if (
            not sep
            or not name
            or not name.replace("-", "").replace("_", "").isalnum()
            or name != name.lower()
        ):
            raise ValueError(f"bad tenant item {item!r}; expected NAME=RATE, NAME in lower case a-z0-9_-")
        rate = float(value)
        if rate <= 0:
            raise ValueError(f"tenant {name}: the rate must be positive")
        rates[name] = rate
    if not rates:
        raise ValueError("no tenant given")
    return rates


def _tenant_schedule(
    args: argparse.Namespace, media: dict[str, list[Any]], weights: dict[str, float]
) -> list[tuple[str, Arrival]]:
    """(tenant, arrival) in time order: one schedule per tenant (seed + its position), re-indexed."""
    if not args.tenants:
        profile = Profile(
            "spike" if args.spike_rate else "constant",
            args.rate,
            args.spike_rate,
            args.spike_at,
            args.spike_for,
        )
        return [
            (DEFAULT_TENANT, a)
            for a in build_schedule(profile, args.duration, args.max_events, weights, media, args.seed)
        ]
    merged = [
        (arrival, tenant)
        for i, (tenant, rate) in enumerate(parse_tenants(args.tenants).items())
        for arrival in build_schedule(
            Profile("constant", rate), args.duration, args.max_events, weights, media, args.seed + i
        )
    ]
    merged.sort(key=lambda item: item[0].at)
    return [(tenant, replace(a, index=i)) for i, (a, tenant) in enumerate(merged[: args.max_events])]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the load; write the summary JSON and the PNG into `args.out`; return the summary."""
    out: Path = args.out
    media_root = out / "media"
    media_root.mkdir(parents=True, exist_ok=True)
    media = build_media(args.cache)
    for files in media.values():
        for m in files:
            (media_root / m.name).write_bytes(m.data)
    schedule = _tenant_schedule(args, media, parse_mix(args.mix))
    state = _State()
    first_uploads: dict[str, Path] = {}
    with _broker(args.bootstrap) as bootstrap:
        topics = Topics.fresh()
        create_topics(bootstrap, topics, partitions=args.partitions)
        metrics_port = free_port()
        worker = _worker(bootstrap, topics, media_root, metrics_port, out / "worker.log")
        producer = Producer(bootstrap)
        stop = threading.Event()
        t0 = time.perf_counter()
        threads = [
            threading.Thread(target=_collect, args=(bootstrap, topics, state, t0, stop), daemon=True),
            threading.Thread(
                target=_sample_lag,
                args=(bootstrap, topics, f"http://127.0.0.1:{metrics_port}/metrics", state, t0, stop),
                daemon=True,
            ),
        ]
        for th in threads:
            th.start()
        try:
            for tenant, arrival in schedule:
                delay = arrival.at - (time.perf_counter() - t0)
                if delay > 0:
                    time.sleep(delay)
                uri = _upload_path(media_root, arrival, first_uploads).resolve().as_uri()
                event = upload_event(
                    f"load-{arrival.index:06d}", uri, tenant=tenant, event_id=f"ev-{arrival.index:06d}"
                )
                raw = json.dumps(event).encode()
                with state.lock:
                    state.sent[event["event_id"]] = _Sent(event["event_id"], arrival.kind, arrival.at, tenant)
                    state.by_value[raw] = event["event_id"]
                producer.send(topics.uploads, raw, key=event["video_id"], wait=False)
                state.sent[event["event_id"]].sent = time.perf_counter() - t0
            producer.flush()
            last_send = time.perf_counter() - t0
            deadline = time.monotonic() + args.drain
            while time.monotonic() < deadline and worker.poll() is None:
                with state.lock:
                    if all(s.outcome for s in state.sent.values()):
                        break
                time.sleep(0.2)
            alive = worker.poll() is None
            gauges = {}
            if alive:
                try:
                    gauges = parse_gauges(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text)
                except httpx.HTTPError:
                    gauges = {}
        finally:
            stop.set()
            for th in threads:
                th.join(10)
            producer.close()
            if worker.poll() is None:
                worker.terminate()
                worker.wait(60)
    summary = _summary(
        args, state, schedule_len=len(schedule), last_send=last_send, alive=alive, gauges=gauges
    )
    (out / "kafka_load.json").write_text(json.dumps(summary, indent=2) + "\n")
    _png(state, out / "kafka_load.png")
    return summary


def _flag_latency_ms(items: list[_Sent]) -> dict[str, float | None]:
    """Event->flag percentiles (ms) of the flagged events, from the scheduled send time."""
    lat = [s.done - s.at for s in items if s.done is not None and s.outcome and s.outcome.startswith("flag")]
    return {f"p{q}": round(percentile(lat, q) * 1000, 1) if lat else None for q in (50, 90, 95, 99)}


def _summary(
    args: argparse.Namespace, state: _State, *, schedule_len: int, last_send: float, alive: bool, gauges: Any
) -> dict[str, Any]:
    items = list(state.sent.values())
    lost = [s.event_id for s in items if s.outcome is None]
    tenants = sorted({s.tenant for s in items})
    lag_err = [abs(g - t) for _, g, t in state.lag]
    failures = []
    if lost:
        failures.append(f"{len(lost)} events neither flagged nor dead-lettered")
    if not alive:
        failures.append("the worker died")
    return {
        "passed": not failures,
        "failures": failures,
        "events": schedule_len,
        "offered_rate_eps": round(schedule_len / max(last_send, 1e-9), 3),
        "send_window_s": round(last_send, 2),
        "outcomes": dict(Counter(s.outcome or "lost" for s in items)),
        "by_kind": {
            k: dict(Counter(s.outcome or "lost" for s in items if s.kind == k)) for k in DEFAULT_WEIGHTS
        },
        "event_to_flag_ms": _flag_latency_ms(items),
        "tenants": {
            t: {
                "events": sum(s.tenant == t for s in items),
                "offered_rate_eps": round(sum(s.tenant == t for s in items) / max(last_send, 1e-9), 3),
                "outcomes": dict(Counter(s.outcome or "lost" for s in items if s.tenant == t)),
                "event_to_flag_ms": _flag_latency_ms([s for s in items if s.tenant == t]),
            }
            for t in tenants
        },
        "lost": lost[:20],
        "lag_samples": len(state.lag),
        "lag_max": max((t for _, _, t in state.lag), default=0.0),
        "lag_gauge_max_abs_error": max(lag_err, default=0.0),
        "worker_alive_after": alive,
        "worker_gauges_at_end": gauges,
        "platform": platform_info(),
        "settings": {k: str(v) for k, v in vars(args).items()},
    }


def _png(state: _State, path: Path) -> None:
    fig = Figure(figsize=(10, 6))
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    for tenant in sorted({s.tenant for s in state.sent.values()}):
        done = sorted(
            (s.at, (s.done - s.at) * 1000)
            for s in state.sent.values()
            if s.done is not None and s.tenant == tenant
        )
        ax1.plot([t for t, _ in done], [ms for _, ms in done], ".", markersize=3, label=f"tenant {tenant}")
    ax1.legend()
    ax1.set_ylabel("event -> outcome (ms)")
    ax1.set_title("Kafka load: latency by scheduled time, and consumer lag")
    ax2.plot([t for t, _, _ in state.lag], [tr for _, _, tr in state.lag], label="true lag (broker)")
    ax2.plot([t for t, _, _ in state.lag], [g for _, g, _ in state.lag], "--", label="worker's lag gauge")
    ax2.set_ylabel("records")
    ax2.set_xlabel("seconds from start")
    ax2.legend()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.kafka",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rate", type=float, default=2.0, help="events per second")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of sending (at most 600)")
    p.add_argument("--max-events", type=int, default=5000)
    p.add_argument("--spike-rate", type=float, default=0.0)
    p.add_argument("--spike-at", type=float, default=0.0)
    p.add_argument("--spike-for", type=float, default=0.0)
    p.add_argument("--mix", default="")
    p.add_argument(
        "--tenants",
        default="",
        help="NAME=RATE,... one Poisson schedule per tenant (replaces --rate and the spike), "
        "e.g. steady=0.2,bursty=2",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--partitions", type=int, default=2)
    p.add_argument("--drain", type=float, default=120.0, help="seconds to wait for outcomes after sending")
    p.add_argument("--bootstrap", help="an existing broker on 127.0.0.1 (default: start one)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE_DIR)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.duration > 600 or args.rate <= 0:
        p.error("--duration must be at most 600 s and --rate positive")
    try:
        if args.tenants:
            parse_tenants(args.tenants)
    except ValueError as exc:
        p.error(str(exc))
    if args.bootstrap and not args.bootstrap.startswith(("127.0.0.1:", "localhost:")):
        p.error("--bootstrap must be a loopback address")
    args.out = args.out or Path(tempfile.mkdtemp(prefix="dfguard-kafka-load-"))
    summary = run(args)
    print(
        json.dumps(
            {
                k: summary[k]
                for k in ("passed", "failures", "events", "outcomes", "event_to_flag_ms", "tenants")
            }
        )
    )
    print(f"wrote {args.out / 'kafka_load.json'} and {args.out / 'kafka_load.png'}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
