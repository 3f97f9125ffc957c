"""Kafka worker benchmark on a real Apache Kafka broker (started here on 127.0.0.1).

    python -m bench.worker --video PATH [--events 16] [--repeats 3] [--burst 1000] [--json]

Three figures, one process, one loaded pipeline:
1. **Overhead at steady state.** The same `--events` videos scored (a) by the bare pipeline from a thread
   pool of `worker_concurrency` threads and (b) through the worker (fetch from file://, sha256, near-duplicate
   hashes and lookup, decision store, flag event with acks=all, commit), the worker already in its group and
   warm. Interleaved `--repeats` times; `worker_overhead` is the median of the paired ratios (each repeat
   runs both back to back, so the machine's drift cancels). Exact dedup is off and no verdict may be `flag`
   (thresholds at 1.0), so every event is really scored and the comparison is like for like.
2. **Viral burst.** `--burst` events that are exact reposts of 10 distinct clips, produced at once; the time
   until every one has its flag event (target: 1,000 in under 30 s).
3. **Lag accuracy.** During the burst, the worker's lag gauge against the true lag (end offsets minus the
   group's committed offsets, read from the broker), sampled every 0.25 s; the gauge is refreshed once a
   second, so differences up to one second of throughput are expected; reported as max and median.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from bench.common import platform_info
from devtools import media_factory as mf
from devtools.kafka_broker import KafkaBroker
from devtools.kafka_tools import (
    Producer,
    Topics,
    committed_and_end,
    create_topics,
    file_uri,
    read_topic,
    upload_event,
)
from service.compose import build_pipeline
from service.config import Settings
from service.decision import Thresholds
from service.pipeline import Pipeline
from service.store import DecisionStore
from service.worker import build_worker


def _settings(broker: KafkaBroker, topics: Topics, workdir: Path, **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": broker.bootstrap,
        "database_url": f"sqlite:///{workdir / f'{topics.group}.sqlite3'}",
        "file_uri_root": workdir,
        "kafka_session_timeout_ms": 6000,
        **topics.settings(),
        **kw,
    }
    return Settings(**values)


class _Running:
    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self.worker = build_worker(settings, pipeline, DecisionStore(settings.database_url))
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def __enter__(self) -> _Running:
        self.thread.start()
        if not self.worker.ready.wait(60):
            raise RuntimeError("the worker got no partitions")
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        self.thread.join(60)


def _wait_flags(broker: KafkaBroker, topic: str, n: int, timeout: float) -> float:
    """Seconds until `topic` holds `n` records (polling a reader)."""
    t0 = time.perf_counter()
    while True:
        seen = len(read_topic(broker.bootstrap, topic, n, timeout=max(1.0, timeout - _since(t0))))
        if seen >= n:
            return _since(t0)
        if _since(t0) > timeout:
            raise TimeoutError(f"{seen} of {n} flags on {topic} after {timeout} s")


def _produced(topic: str) -> float:
    """Flag events this process's worker has had acknowledged on `topic` (read from its own metric, so
    waiting costs the worker no CPU, unlike a Kafka reader in the same process)."""
    return sum(
        s.value
        for metric in REGISTRY.collect()
        if metric.name == "dfguard_worker_events_produced"
        for s in metric.samples
        if s.name.endswith("_total") and s.labels.get("topic") == topic
    )


def _wait_produced(topic: str, n: int, timeout: float) -> float:
    t0 = time.perf_counter()
    while _produced(topic) < n:
        if _since(t0) > timeout:
            raise TimeoutError(f"{_produced(topic)} of {n} flags on {topic} after {timeout} s")
        time.sleep(0.01)
    return _since(t0)


def _since(t0: float) -> float:
    return time.perf_counter() - t0


def overhead(
    broker: KafkaBroker, pipeline: Pipeline, video: Path, workdir: Path, events: int, repeats: int
) -> dict[str, Any]:
    files = []
    for i in range(events):
        dest = workdir / f"steady-{i}.mp4"
        shutil.copyfile(video, dest)
        files.append(dest)
    bare_s: list[float] = []
    worker_s: list[float] = []
    concurrency = Settings().worker_concurrency
    for _ in range(repeats):
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(pipeline.score_file, files))
        bare_s.append(time.perf_counter() - t0)

        topics = Topics.fresh()
        create_topics(broker.bootstrap, topics, partitions=2)
        s = _settings(broker, topics, workdir, dedup_exact=False, worker_concurrency=concurrency)
        producer = Producer(broker.bootstrap)
        with _Running(s, pipeline):
            for i in range(2):  # warm: the group is joined, the store created, the producer connected
                producer.send(topics.uploads, upload_event(f"warm-{i}", file_uri(files[i])))
            _wait_produced(topics.flags, 2, 120)
            t0 = time.perf_counter()
            for i, f in enumerate(files):
                producer.send(topics.uploads, upload_event(f"steady-{i}", file_uri(f)), wait=False)
            producer.flush()
            _wait_produced(topics.flags, 2 + events, 300)
            worker_s.append(time.perf_counter() - t0)
        producer.close()
    bare, work = statistics.median(bare_s), statistics.median(worker_s)
    return {
        "events": events,
        "concurrency": concurrency,
        "bare_pipeline_s": [round(x, 3) for x in bare_s],
        "worker_s": [round(x, 3) for x in worker_s],
        "bare_videos_per_s": round(events / bare, 3),
        "worker_videos_per_s": round(events / work, 3),
        # Each repeat runs both back to back: the median of the paired ratios cancels the machine's drift.
        "worker_overhead": round(
            statistics.median(w / b for w, b in zip(worker_s, bare_s, strict=True)) - 1, 4
        ),
        "overhead_of_medians": round(work / bare - 1, 4),
    }


def burst(broker: KafkaBroker, pipeline: Pipeline, workdir: Path, n: int) -> dict[str, Any]:
    originals = [
        mf.make_face_clip(workdir / f"viral-{i}.mp4", seconds=2.0, width=640, height=360, crf=20 + i)
        for i in range(10)
    ]
    topics = Topics.fresh()
    create_topics(broker.bootstrap, topics, partitions=2)
    s = _settings(broker, topics, workdir)
    producer = Producer(broker.bootstrap)
    samples: list[tuple[float, float]] = []
    with _Running(s, pipeline) as running:
        t0 = time.perf_counter()
        for i in range(n):
            producer.send(
                topics.uploads, upload_event(f"viral-{i:05d}", file_uri(originals[i % 10])), wait=False
            )
        producer.flush()
        produced_s = time.perf_counter() - t0
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                committed, end = committed_and_end(broker.bootstrap, topics.group, topics.uploads)
                true_lag = sum(end[p] - committed[p] for p in end)
                gauge = sum(
                    REGISTRY.get_sample_value(
                        "dfguard_worker_consumer_lag",
                        {"group": topics.group, "topic": topics.uploads, "partition": str(p)},
                    )
                    or 0.0
                    for p in end
                )
                samples.append((true_lag, gauge))
                time.sleep(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        flagged_s = _wait_produced(topics.flags, n, 300) + produced_s
        _wait_flags(broker, topics.flags, n, 60)  # and a reader sees them all
        done.set()
        sampler.join(10)
        dedup_hits = REGISTRY.get_sample_value("dfguard_dedup_hits_total", {"kind": "exact"}) or 0.0
        assert running.worker is not None
    producer.close()
    diffs = [abs(t - g) for t, g in samples]
    return {
        "events": n,
        "distinct_clips": 10,
        "produce_s": round(produced_s, 3),
        "all_flagged_s": round(flagged_s, 3),
        "events_per_s": round(n / flagged_s, 1),
        "exact_dedup_hits": int(dedup_hits),
        "lag_samples": len(samples),
        "lag_max_abs_error": max(diffs, default=0.0),
        "lag_median_abs_error": statistics.median(diffs) if diffs else 0.0,
        "lag_max_true": max((t for t, _ in samples), default=0.0),
    }


def run(video: Path, events: int = 16, repeats: int = 3, burst_events: int = 1000) -> dict[str, Any]:
    pipeline = build_pipeline(Settings())  # as `dfguard worker` builds it
    pipeline.thresholds = Thresholds(review=1.0, flag=1.0)  # nothing is flagged: no near-duplicate shortcut
    with KafkaBroker() as broker, tempfile.TemporaryDirectory(prefix="dfguard-bench-worker-") as tmp:
        workdir = Path(tmp)
        result: dict[str, Any] = {"platform": platform_info(), "video": str(video)}
        result["steady"] = overhead(broker, pipeline, video, workdir, events, repeats)
        result["burst"] = burst(broker, pipeline, workdir, burst_events)
    result["worker_overhead"] = result["steady"]["worker_overhead"]
    result["burst_all_flagged_s"] = result["burst"]["all_flagged_s"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", type=Path, default=Path(".cache/sample.mp4"))
    p.add_argument("--events", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--burst", type=int, default=1000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result = run(args.video, args.events, args.repeats, args.burst)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
