"""Outages never cost a verdict, on real parts: a `dfguard worker` process on a real Kafka broker, a real
Triton server and a real PostgreSQL, scraped by a real Prometheus that loads the alert rules.

* Triton stopped for 60 s while 20 events flow, then started: 0 DLQ records, 20 flags, no offset committed
  past an undecided event, lag > 0 while held, the held alert's expression (and KEDA's `held` query) true.
* PostgreSQL stopped for 60 s mid-run, then started: the same.
* One poison event (its source keeps failing) while every probe is up: DLQ after its retries, the partition
  keeps flowing, and the worker never held.
* A worker started while the store is down: starts, joins, reports the store down, holds (no traceback), and
  decides everything once the store is up.

One broker (the session's), one Triton, one PostgreSQL and one worker for the module; outages as short as the
issue asks. The measured figures are printed (run with -s to see them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from devtools.kafka_broker import KafkaBroker
from devtools.kafka_tools import (
    Producer,
    Topics,
    committed_and_end,
    create_topics,
    file_uri,
    read_to_end,
    upload_event,
)
from devtools.ops_tools import Prometheus, ScrapeTarget, process, rule_groups, scaler_exprs, write_rules
from devtools.postgres_server import PostgresServer
from devtools.servers import free_port, wait_http_ok
from devtools.triton_server import TritonServer
from service.events import FlagEvent
from service.models import DEFAULT_AUDIO_MODEL, UNTRAINED_MANIFEST
from service.triton.repo import RepoOptions, build_repo

pytestmark = [pytest.mark.kafka, pytest.mark.triton, pytest.mark.postgres, pytest.mark.ops, pytest.mark.slow]

OUTAGE_SECONDS = 60.0
EVENTS = 20
HELD_ALERT = next(
    r["expr"] for g in rule_groups()["groups"] for r in g["rules"] if r.get("alert") == "DfguardWorkerHeld"
)
KEDA_HELD = next(e.promql for e in scaler_exprs() if e.where == "KEDA trigger held")


# --- the parts -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory, face_clip: Path) -> Path:
    root = tmp_path_factory.mktemp("hold-media")
    (root / "clip.mp4").write_bytes(face_clip.read_bytes())
    return root


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repo = build_repo(
        [UNTRAINED_MANIFEST],
        tmp_path_factory.mktemp("hold-triton-repo"),
        "cpu",
        RepoOptions(max_batch_size=64, max_queue_delay_microseconds=2000, cpu_threads=1),
        audio_path=DEFAULT_AUDIO_MODEL,
    )
    with TritonServer(repo) as server:
        yield server


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    """This module's own cluster: stopping it must not disturb the session's."""
    with PostgresServer() as server:
        yield server


@dataclass
class WorkerProcess:
    url: str
    log: Path
    topics: Topics
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)


def _env(
    kafka: KafkaBroker, triton: TritonServer, pg: PostgresServer, media: Path, topics: Topics, port: int
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFG_")}
    env.update(
        topics.env(),
        DFG_KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap,
        DFG_KAFKA_SESSION_TIMEOUT_MS="6000",
        DFG_BACKEND="triton",
        DFG_TRITON_URL=triton.grpc_url,
        DFG_MODEL_PATHS=json.dumps([str(UNTRAINED_MANIFEST)]),
        DFG_INFERENCE_THREADS="1",
        DFG_DATABASE_URL=pg.url,
        DFG_FILE_URI_ROOT=str(media),
        DFG_FETCH_ALLOW_HOSTS='["127.0.0.1"]',
        DFG_FRAMES_PER_VIDEO="4",
        DFG_DEDUP_EXACT="false",  # every event is scored through Triton
        DFG_NEAR_DUPLICATE_FRAMES="0",
        DFG_WORKER_CONCURRENCY="2",
        DFG_WORKER_METRICS_HOST="127.0.0.1",
        DFG_WORKER_METRICS_PORT=str(port),
        DFG_WORKER_MAX_ATTEMPTS="3",
        DFG_WORKER_RETRY_BACKOFF_SECONDS="0.2",
        DFG_WORKER_RETRY_BACKOFF_MAX_SECONDS="1",
        DFG_WORKER_PROBE_INTERVAL_SECONDS="2",
        DFG_WORKER_HOLD_BACKOFF_SECONDS="0.5",
        DFG_WORKER_HOLD_BACKOFF_MAX_SECONDS="4",
        DFG_WORKER_LAG_INTERVAL_SECONDS="0.5",
        DFG_WORKER_SHUTDOWN_GRACE_SECONDS="20",
    )
    return env


def _wait_http(w: WorkerProcess, path: str, proc: subprocess.Popen[bytes]) -> None:
    wait_http_ok(f"{w.url}{path}", lambda: proc.poll() is None, w.log, what="the worker", timeout=120)


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def worker(
    kafka: KafkaBroker,
    triton: TritonServer,
    pg: PostgresServer,
    media: Path,
    metrics_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    workdir = tmp_path_factory.mktemp("hold-worker")
    topics = Topics.fresh()
    create_topics(kafka.bootstrap, topics, partitions=2)
    w = WorkerProcess(f"http://127.0.0.1:{metrics_port}", workdir / "worker.log", topics)
    w.env = _env(kafka, triton, pg, media, topics, metrics_port)
    with process([sys.executable, "-m", "service.cli", "worker"], w.env, w.log, cwd=workdir) as proc:
        w.proc = proc
        _wait_http(w, "/readyz", proc)
        yield w


@pytest.fixture(scope="module")
def prometheus(
    worker: WorkerProcess, metrics_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    workdir = tmp_path_factory.mktemp("hold-prometheus")
    targets = [ScrapeTarget("dfguard-worker", f"127.0.0.1:{metrics_port}")]
    with Prometheus(workdir, targets, free_port(), [write_rules(workdir)]) as prom:
        deadline = time.monotonic() + 30
        while not [s for s in prom.query("up") if s["value"][1] == "1"]:
            assert time.monotonic() < deadline, "the worker is not scraped"
            time.sleep(0.25)
        yield prom


@pytest.fixture(scope="module")
def producer(kafka: KafkaBroker) -> Iterator[Producer]:
    p = Producer(kafka.bootstrap)
    yield p
    p.close()


# --- observing ---------------------------------------------------------------------------------------------


def _scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body = httpx.get(f"{url}/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), float("nan"))


def _lag(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], topics: Topics) -> float:
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "dfguard_worker_consumer_lag" and ("topic", topics.uploads) in labels
    )


def _decided(kafka: KafkaBroker, topics: Topics) -> dict[str, set[bytes]]:
    out: dict[str, set[bytes]] = {}
    for r in read_to_end(kafka.bootstrap, topics.flags):
        out.setdefault(FlagEvent.model_validate_json(r.value).video_id, set()).add(r.value)
    return out


def _send(
    producer: Producer, topics: Topics, video: str, uri: str, partition: int | None = None
) -> tuple[int, int]:
    md = producer.send(topics.uploads, upload_event(video, uri), partition=partition)
    return md.partition, md.offset


@dataclass
class Watch:
    """What was seen during an outage, checked at every look."""

    held: bool = False
    max_lag_held: float = 0.0
    down: set[str] = field(default_factory=set)
    up_while_held: set[str] = field(default_factory=set)
    alert_expr_true: bool = False
    alert_pending: bool = False
    keda_held: bool = False
    looks: int = 0

    def look(
        self, kafka: KafkaBroker, w: WorkerProcess, prom: Prometheus, sent: dict[str, tuple[int, int]]
    ) -> None:
        self.looks += 1
        committed, _ = committed_and_end(kafka.bootstrap, w.topics.group, w.topics.uploads)
        decided = _decided(kafka, w.topics)  # read after the commits: every committed event's flag is in it
        for partition, offset in committed.items():
            undecided = sorted(o for v, (p, o) in sent.items() if p == partition and v not in decided)
            assert not undecided or offset <= undecided[0], (
                f"partition {partition} committed {offset} past undecided offset {undecided[0]}"
            )
        samples = _scrape(w.url)
        if _value(samples, "dfguard_worker_held_since_timestamp_seconds") > 0:
            self.held = True
            self.max_lag_held = max(self.max_lag_held, _lag(samples, w.topics))
            for dep in ("inference", "store", "kafka"):
                up = _value(samples, "dfguard_worker_dependency_up", dependency=dep)
                (self.up_while_held if up == 1 else self.down).add(dep)
        self.alert_expr_true |= bool(prom.query(HELD_ALERT))
        self.alert_pending |= bool(prom.query('ALERTS{alertname="DfguardWorkerHeld", alertstate="pending"}'))
        keda = prom.query(KEDA_HELD)
        self.keda_held |= bool(keda) and keda[0]["value"][1] == "1"


def _wait_unheld(w: WorkerProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _value(_scrape(w.url), "dfguard_worker_held_since_timestamp_seconds") != 0:
        assert time.monotonic() < deadline, f"the worker stays held:\n{w.log.read_text()[-3000:]}"
        time.sleep(0.3)


def _wait_decided(kafka: KafkaBroker, w: WorkerProcess, videos: list[str], timeout: float = 240) -> float:
    deadline = time.monotonic() + timeout
    while True:
        decided = _decided(kafka, w.topics)
        if all(v in decided for v in videos):
            return time.monotonic()
        missing = [v for v in videos if v not in decided]
        assert time.monotonic() < deadline, f"undecided: {missing}\n{w.log.read_text()[-4000:]}"
        time.sleep(0.5)


def _assert_all_committed(kafka: KafkaBroker, w: WorkerProcess, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (offsets := committed_and_end(kafka.bootstrap, w.topics.group, w.topics.uploads))[0] != offsets[1]:
        assert time.monotonic() < deadline, f"commits did not catch up: {offsets}"
        time.sleep(0.5)


def _assert_one_decision_each(
    pg: PostgresServer, kafka: KafkaBroker, w: WorkerProcess, videos: list[str]
) -> None:
    decided = _decided(kafka, w.topics)
    assert all(len(decided[v]) == 1 for v in videos), "re-emissions only, byte for byte"
    engine = create_engine(pg.url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("select video_id, count(*) from decisions where video_id = any(:v) group by video_id"),
                {"v": videos},
            ).all()
    finally:
        engine.dispose()
    assert sorted(rows) == sorted((v, 1) for v in videos), "exactly one stored decision per event"


def _dead_letters(kafka: KafkaBroker, topics: Topics, prefix: str) -> list[Any]:
    return [r for r in read_to_end(kafka.bootstrap, topics.dlq) if (r.key or b"").decode().startswith(prefix)]


def _outage(
    name: str,
    stop: Any,
    start: Any,
    kafka: KafkaBroker,
    producer: Producer,
    w: WorkerProcess,
    prom: Prometheus,
    pg: PostgresServer,
    media: Path,
) -> None:
    """Five events decided, the dependency stopped, fifteen more sent during OUTAGE_SECONDS, then started."""
    _wait_unheld(w)
    uri = file_uri(media / "clip.mp4")
    videos = [f"{name}-{i:02d}" for i in range(EVENTS)]
    sent = {v: _send(producer, w.topics, v, uri) for v in videos[:5]}
    _wait_decided(kafka, w, videos[:5])
    watch = Watch()
    stop()
    down_at = time.monotonic()
    pending = videos[5:]  # one a second from the start of the outage
    while time.monotonic() - down_at < OUTAGE_SECONDS:
        while pending and time.monotonic() - down_at >= EVENTS - 5 - len(pending) + 1:
            video = pending.pop(0)
            sent[video] = _send(producer, w.topics, video, uri)
        watch.look(kafka, w, prom, sent)
        time.sleep(0.5)
    assert not pending
    start()
    up_at = time.monotonic()
    _wait_unheld(w)
    resumed_at = time.monotonic()
    done_at = _wait_decided(kafka, w, videos)
    watch.look(kafka, w, prom, sent)
    _assert_all_committed(kafka, w)
    assert _dead_letters(kafka, w.topics, name) == [], "an outage dead-letters nothing"
    _assert_one_decision_each(pg, kafka, w, videos)
    assert watch.held and watch.max_lag_held > 0, watch
    assert watch.alert_expr_true and watch.alert_pending, (
        "DfguardWorkerHeld's expression held during the outage"
    )
    assert watch.keda_held, "KEDA's `held` trigger saw every worker held"
    deadline = time.monotonic() + 30
    while prom.query(HELD_ALERT):  # and it clears once the worker resumed (the expression is not constant)
        assert time.monotonic() < deadline, "DfguardWorkerHeld's expression stays true after the outage"
        time.sleep(0.5)
    print(
        f"\n[{name}] outage {OUTAGE_SECONDS:.0f} s, {EVENTS} events ({EVENTS - 5} during it): "
        f"resumed {resumed_at - up_at:.1f} s after the dependency was back, all decided "
        f"{done_at - up_at:.1f} s after it; max lag while held {watch.max_lag_held:.0f}; "
        f"down {sorted(watch.down)}; {watch.looks} looks, 0 DLQ records"
    )
    return None


# --- the tests ---------------------------------------------------------------------------------------------


def test_triton_stopped_for_a_minute_costs_no_verdict(
    kafka: KafkaBroker,
    producer: Producer,
    worker: WorkerProcess,
    prometheus: Prometheus,
    triton: TritonServer,
    pg: PostgresServer,
    media: Path,
) -> None:
    try:
        _outage("tri", triton.stop, triton.start, kafka, producer, worker, prometheus, pg, media)
    finally:
        if not triton.running():
            triton.start()


def test_postgresql_stopped_for_a_minute_costs_no_verdict(
    kafka: KafkaBroker,
    producer: Producer,
    worker: WorkerProcess,
    prometheus: Prometheus,
    pg: PostgresServer,
    media: Path,
) -> None:
    stopped = []

    def stop() -> None:
        pg.stop()
        stopped.append(True)

    def start() -> None:
        pg.resume()
        stopped.clear()

    try:
        _outage("pg", stop, start, kafka, producer, worker, prometheus, pg, media)
    finally:
        if stopped:
            pg.resume()


def test_a_poison_event_while_every_probe_is_up_is_dead_lettered_and_the_partition_flows(
    kafka: KafkaBroker, producer: Producer, worker: WorkerProcess, prometheus: Prometheus, media: Path
) -> None:
    _wait_unheld(worker)
    started = time.time()
    dead = f"http://127.0.0.1:{free_port()}/clip.mp4"  # its source never answers
    _send(producer, worker.topics, "poison-1", dead, partition=0)
    good = [f"flow-{i}" for i in range(4)]
    for v in good:  # behind the poison event, in the same partition
        _send(producer, worker.topics, v, file_uri(media / "clip.mp4"), partition=0)
    _wait_decided(kafka, worker, good)
    deadline = time.monotonic() + 60
    while not (dead_letters := _dead_letters(kafka, worker.topics, "poison-")):
        assert time.monotonic() < deadline, worker.log.read_text()[-3000:]
        time.sleep(0.5)
    (record,) = dead_letters
    headers = dict(record.headers)
    assert headers["dfg-error-code"] == b"fetch_failed" and headers["dfg-error-fault"] == b"transient"
    assert b"after 3 attempts" in headers["dfg-error-message"]
    _assert_all_committed(kafka, worker)
    # Every probe stayed up the whole time: this was the event's fault, not an outage.
    window = f"{int(time.time() - started) + 2}s"
    time.sleep(2)  # two more scrapes
    held = prometheus.query(
        f'max_over_time(dfguard_worker_held_since_timestamp_seconds{{job="dfguard-worker"}}[{window}])'
    )
    assert held and held[0]["value"][1] == "0", held
    up = prometheus.query(
        f'min by (dependency) (min_over_time(dfguard_worker_dependency_up{{job="dfguard-worker"}}[{window}]))'
    )
    assert {s["metric"]["dependency"]: s["value"][1] for s in up} == {
        "inference": "1",
        "store": "1",
        "kafka": "1",
    }


def test_a_worker_started_while_the_store_is_down_holds_then_decides_everything(
    kafka: KafkaBroker,
    producer: Producer,
    triton: TritonServer,
    pg: PostgresServer,
    media: Path,
    tmp_path: Path,
) -> None:
    topics = Topics.fresh()
    create_topics(kafka.bootstrap, topics, partitions=2)
    port = free_port()
    w = WorkerProcess(f"http://127.0.0.1:{port}", tmp_path / "worker.log", topics)
    videos = [f"late-{i}" for i in range(6)]
    pg.stop()
    store_down = True
    try:
        with process(
            [sys.executable, "-m", "service.cli", "worker"],
            _env(kafka, triton, pg, media, topics, port),
            w.log,
            cwd=tmp_path,
        ) as proc:
            _wait_http(w, "/healthz", proc)
            _wait_http(w, "/readyz", proc)  # a member of its group while held: replaceable
            ready = httpx.get(f"{w.url}/readyz", timeout=5).json()
            assert ready["held"] and ready["dependencies"]["store"] is False, ready
            samples = _scrape(w.url)
            assert _value(samples, "dfguard_worker_dependency_up", dependency="store") == 0
            assert _value(samples, "dfguard_worker_dependency_up", dependency="inference") == 1
            assert _value(samples, "dfguard_worker_held_since_timestamp_seconds") > 0
            for v in videos:
                _send(producer, topics, v, file_uri(media / "clip.mp4"))
            deadline = time.monotonic() + 60  # the lag gauge shows the held events (bounded wait, no timing)
            while _lag(_scrape(w.url), topics) < len(videos) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert _lag(_scrape(w.url), topics) == len(videos) and _decided(kafka, topics) == {}
            pg.resume()
            store_down = False
            up_at = time.monotonic()
            done_at = _wait_decided(kafka, w, videos)
            _assert_all_committed(kafka, w)
            assert _dead_letters(kafka, topics, "late-") == []
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, "SIGTERM is a clean exit"
        log = w.log.read_text()
        assert "worker: holding: store down" in log and "worker: resuming" in log
        assert "Traceback" not in log, log[-3000:]
        print(
            f"\n[start with store down] all {len(videos)} decided "
            f"{done_at - up_at:.1f} s after the store came up"
        )
    finally:
        if store_down:
            pg.resume()
