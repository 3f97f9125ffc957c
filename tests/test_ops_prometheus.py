"""Every metric selector of the Grafana dashboard and of the alert rules, evaluated by a real Prometheus that
scrapes the real services, must return series: a panel or an alert over a metric the service never exports
is caught here, not on the night it was needed.

The services run as they do in the cluster: `dfguard serve` and `dfguard worker` as their own processes on
the Triton backend, a real `tritonserver` (CPU, from the nvidia-pytriton wheel) and a real Kafka broker.
Traffic makes the labelled series exist (they appear only after an observation): a clip scored (200), an
empty upload (400), and a request while Triton is down (503), after which Triton comes back and another clip
is scored; upload events through Kafka for the worker's series. The gateway runs a shadow ensemble on every
medium (`DFG_SHADOW_SAMPLE=1`), the `shadow_ensemble` of the same Triton repository, so the shadow panels
have their series too. The test Prometheus labels targets as the
Prometheus operator does (`job` from the ServiceMonitor's jobLabel, `namespace`) and loads the alert rules,
which must all evaluate without error.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools import media_factory as mf
from devtools.kafka_broker import KafkaBroker
from devtools.kafka_tools import Producer, Topics, create_topics, file_uri, read_topic, upload_event
from devtools.ops_tools import (
    Expr,
    Prometheus,
    ScrapeTarget,
    dashboard_exprs,
    dfguard_serve,
    docs_exprs,
    metric_name,
    process,
    promql_selectors,
    rule_exprs,
    scaler_exprs,
    write_rules,
)
from devtools.servers import FlakyMediaHost, free_port, wait_until
from devtools.triton_server import TritonServer
from service.models import DEFAULT_AUDIO_MODEL, DEFAULT_MODEL, UNTRAINED_MANIFEST
from service.triton.repo import RepoOptions, build_repo

pytestmark = [pytest.mark.ops, pytest.mark.triton, pytest.mark.kafka]

# The one exception the issue allows: Triton exports these only with a GPU (--allow-gpu-metrics on a GPU).
GPU_ONLY = {"nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes"}
# The shadow candidate: another bundled model (its own member in the repository, 224 px crops), cheap on CPU.
SHADOW = UNTRAINED_MANIFEST


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repo = build_repo(
        [DEFAULT_MODEL],
        tmp_path_factory.mktemp("ops-triton-repo"),
        "cpu",
        RepoOptions(max_batch_size=64, max_queue_delay_microseconds=2000, cpu_threads=1),
        shadow_paths=[SHADOW],
        audio_path=DEFAULT_AUDIO_MODEL,
    )
    with TritonServer(repo) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`dfguard serve` in its own process (a clean metrics registry), on the test's Triton, with a shadow
    ensemble scoring every medium, and evidence kept for every job (its overlays computed on Triton)."""
    workdir = tmp_path_factory.mktemp("ops-gateway")
    with dfguard_serve(
        workdir,
        DFG_BACKEND="triton",
        DFG_TRITON_URL=triton.grpc_url,
        DFG_TRITON_TIMEOUT_SECONDS="5",
        DFG_TRITON_RETRIES="0",
        DFG_TRITON_BREAKER_FAILURES="1",
        DFG_TRITON_BREAKER_RESET_SECONDS="1",
        DFG_WORKERS="2",
        DFG_INFERENCE_THREADS="1",
        DFG_SHADOW_MODEL_PATHS=json.dumps([str(SHADOW)]),
        DFG_SHADOW_SAMPLE="1",
        DFG_EVIDENCE_FOR="all",
    ) as url:
        yield url


def _post(url: str, name: str, body: bytes) -> int:
    r = httpx.post(f"{url}/v1/score", files={"file": (name, body, "video/mp4")}, timeout=120)
    return r.status_code


def _shadow_compared(url: str) -> float:
    """Media the gateway's shadow has scored and compared so far (its /metrics, all decision pairs)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(r"^dfguard_shadow_decisions_total\{[^}]*\} (\S+)$", text, re.M))


def _job_evidence_then_erasure(url: str, clip: bytes) -> None:
    """A job keeps evidence, its overlays are computed through Triton, then it is erased: the evidence
    series (stored bytes, captures, overlays, purged) all have samples."""
    r = httpx.post(f"{url}/v1/jobs", files={"file": ("clip.mp4", clip, "video/mp4")}, timeout=60)
    assert r.status_code == 202, r.text
    page = f"{url}/v1/jobs/{r.json()['job_id']}/evidence"

    def overlays() -> str | None:
        got = httpx.get(page, params={"format": "json"}, timeout=10)
        return str(got.json()["overlays"]) if got.status_code == 200 else None

    wait_until(lambda: overlays() == "ready", 120, interval=0.25, what="the job's evidence overlays")
    assert httpx.delete(page, timeout=10).status_code == 204


@pytest.fixture(scope="module")
def traffic(gateway: str, triton: TritonServer, face_clip: Path) -> None:
    """Observations behind every gateway and Triton series the dashboard and the alerts use."""
    clip = face_clip.read_bytes()
    assert _post(gateway, "clip.mp4", clip) == 200  # decisions, stages, inference, Triton counts
    tone = mf.make_audio_only(face_clip.with_name("ops-tone.m4a"), seconds=2.0).read_bytes()
    assert _post(gateway, "tone.m4a", tone) == 200  # an audio track: the audio stage and outcome series
    # The shadow scores after the answer, on its own lane: wait for it before Triton goes away.
    wait_until(lambda: _shadow_compared(gateway) >= 1, 60, interval=0.25, what="the shadow's comparison")
    _job_evidence_then_erasure(gateway, clip)
    assert _post(gateway, "empty.mp4", b"") == 400  # dfguard_errors_total{code="empty_media"}, a 4xx
    triton.kill()
    assert _post(gateway, "clip.mp4", clip) == 503  # backend_unavailable: the 5xx the error ratio counts
    triton.start()
    deadline = time.monotonic() + 30
    while httpx.get(f"{gateway}/readyz", timeout=5).status_code != 200:  # the circuit breaker closes again
        assert time.monotonic() < deadline, "gateway not ready again after Triton came back"
        time.sleep(0.3)
    assert _post(gateway, "clip.mp4", clip) == 200


@pytest.fixture(scope="module")
def worker(
    triton: TritonServer, kafka: KafkaBroker, face_clip: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`dfguard worker` in its own process on the test's Triton and Kafka, with traffic behind every labelled
    worker series: a good event, a repost (dedup hit), a poison event (DLQ) and a fetch that fails once
    (a retry). Yields its metrics address."""
    workdir = tmp_path_factory.mktemp("ops-worker")
    media = workdir / "media"
    media.mkdir()
    (media / "clip.mp4").write_bytes(face_clip.read_bytes())
    topics = Topics.fresh()
    create_topics(kafka.bootstrap, topics, partitions=2)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFG_")}
    env.update(
        topics.env(),
        DFG_KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap,
        DFG_KAFKA_SESSION_TIMEOUT_MS="6000",
        DFG_BACKEND="triton",
        DFG_TRITON_URL=triton.grpc_url,
        DFG_INFERENCE_THREADS="1",
        DFG_WORKER_CONCURRENCY="2",
        DFG_WORKER_METRICS_PORT=str(port),
        DFG_WORKER_RETRY_BACKOFF_SECONDS="0.1",
        DFG_FILE_URI_ROOT=str(media),
        DFG_FETCH_ALLOW_HOSTS='["127.0.0.1"]',
        DFG_DATABASE_URL=f"sqlite:///{workdir / 'decisions.sqlite3'}",
    )
    host = FlakyMediaHost(media, failures=1)
    producer = Producer(kafka.bootstrap)
    try:
        with process(
            [sys.executable, "-m", "service.cli", "worker"], env, workdir / "worker.log", cwd=workdir
        ):
            producer.send(topics.uploads, upload_event("ops-1", file_uri(media / "clip.mp4")))
            assert read_topic(kafka.bootstrap, topics.flags, 1, timeout=120), (
                workdir / "worker.log"
            ).read_text()
            producer.send(
                topics.uploads, upload_event("ops-2", f"{host.url}/clip.mp4")
            )  # a retry, then a repost
            producer.send(topics.uploads, b"not an event", key="ops-3")
            assert len(read_topic(kafka.bootstrap, topics.flags, 2, timeout=60)) == 2
            assert read_topic(kafka.bootstrap, topics.dlq, 1, timeout=60)
            yield f"127.0.0.1:{port}"
    finally:
        producer.close()
        host.close()


@pytest.fixture(scope="module")
def scrape_targets(gateway: str, triton: TritonServer, worker: str, traffic: None) -> list[ScrapeTarget]:
    """What the ServiceMonitors scrape in the cluster, as jobs of the same names."""
    return [
        ScrapeTarget("dfguard-gateway", gateway.removeprefix("http://")),
        ScrapeTarget("dfguard-worker", worker),
        ScrapeTarget("dfguard-triton", f"127.0.0.1:{triton.metrics_port}"),
    ]


@pytest.fixture(scope="module")
def prometheus(
    scrape_targets: list[ScrapeTarget], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    workdir = tmp_path_factory.mktemp("ops-prometheus")
    with Prometheus(workdir, scrape_targets, free_port(), [write_rules(workdir)]) as prom:
        deadline = time.monotonic() + 30
        while True:  # every target scraped and up (at 1-s intervals: a couple of seconds)
            up = prom.query("up")
            if len(up) == len(scrape_targets) and all(s["value"][1] == "1" for s in up):
                break
            assert time.monotonic() < deadline, f"targets not up: {up}"
            time.sleep(0.25)
        time.sleep(2.5)  # two more scrapes: rate() over the window has two samples
        yield prom


def _all_exprs() -> list[Expr]:
    return [*dashboard_exprs(), *rule_exprs(), *docs_exprs(), *scaler_exprs()]


def test_every_selector_returns_series(prometheus: Prometheus) -> None:
    selectors: dict[str, list[str]] = {}
    for e in _all_exprs():
        prometheus.api("format_query", query=e.promql)  # parses in Prometheus' own PromQL parser
        prometheus.query(e.promql)  # and evaluates without error
        for s in promql_selectors(e.promql):
            selectors.setdefault(s, []).append(e.where)
    assert len(selectors) > 40

    # Recorded series appear one evaluation after their inputs have two samples: poll briefly.
    deadline = time.monotonic() + 15
    while True:
        counts = {s: len(prometheus.query(s)) for s in selectors}
        missing = [
            f"{s} (used by {', '.join(sorted(set(selectors[s])))})"
            for s, n in counts.items()
            if n == 0 and metric_name(s) not in GPU_ONLY
        ]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    report = [f"{n:4d}  {s}" for s, n in sorted(counts.items())]
    print("\nseries per selector:\n" + "\n".join(report))
    assert not missing, "selectors without series:\n" + "\n".join(missing)


def test_triton_names_are_triton_names(prometheus: Prometheus) -> None:
    """Every nv_* name used is one the real Triton exports (GPU-only names aside)."""
    exported = set(prometheus.api("label/__name__/values"))
    used = {metric_name(s) for e in _all_exprs() for s in promql_selectors(e.promql)}
    nv = {n for n in used if n.startswith("nv_")}
    assert nv - GPU_ONLY <= exported, (nv - GPU_ONLY) - exported
    assert nv - GPU_ONLY, "no Triton panel at all?"


def test_alert_rules_evaluate_without_error(prometheus: Prometheus) -> None:
    deadline = time.monotonic() + 20
    while True:
        groups = prometheus.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(not r.get("lastEvaluation", "").startswith("0001-") for r in rules):
            break
        assert time.monotonic() < deadline, "rules not evaluated"
        time.sleep(0.25)
    assert len(rules) == len(rule_exprs())
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
