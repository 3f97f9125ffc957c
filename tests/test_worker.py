"""The Kafka worker on a real Apache Kafka broker: events in, flags out, nothing lost or contradictory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from devtools import media_factory as mf
from devtools.kafka_broker import KafkaBroker
from devtools.kafka_tools import (
    Producer,
    Topics,
    committed_and_end,
    create_topics,
    file_uri,
    read_topic,
    running_worker,
    upload_event,
    worker_settings,
)
from devtools.servers import FlakyMediaHost, free_port, gateway
from service.config import Settings
from service.events import FlagEvent
from service.fingerprint import frame_hashes
from service.media import file_sha256, load_media
from service.pipeline import Pipeline
from service.schemas import ModelRef, UsedThresholds
from service.store import DecisionStore, NewDecision
from service.worker import EventHandler, Worker, build_worker
from service.worker.handler import flag_event_id

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory file:// URIs may read: real clips, a near-duplicate, broken media."""
    root = tmp_path_factory.mktemp("uploads")
    mf.make_face_clip(root / "a.mp4", seconds=2.0, width=640, height=360)
    mf.make_face_clip(root / "a_reencoded.mp4", seconds=2.0, width=480, height=270, crf=34)
    mf.make_face_clip(root / "b.mp4", seconds=2.0, width=640, height=360, photo="grace_hopper")
    mf.make_face_free_clip(root / "c.mp4", seconds=2.0, width=640, height=360)
    mf.make_random_bytes(root / "corrupt.mp4")
    mf.make_text(root / "text.mp4")
    mf.make_audio_only(root / "tone.m4a", seconds=2.0)
    return root


def _settings(kafka: KafkaBroker, topics: Topics, tmp_path: Path, media_root: Path, **kw: Any) -> Settings:
    quick = {"worker_lag_interval_seconds": 0.2, "worker_shutdown_grace_seconds": 20}
    return worker_settings(kafka.bootstrap, topics, tmp_path, media_root, **{**quick, **kw})


def _flags(records: list[Any]) -> list[FlagEvent]:
    return [FlagEvent.model_validate_json(r.value) for r in records]


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def topics(kafka: KafkaBroker) -> Topics:
    t = Topics.fresh()
    create_topics(kafka.bootstrap, t, partitions=2)
    return t


@pytest.fixture
def producer(kafka: KafkaBroker) -> Iterator[Producer]:
    p = Producer(kafka.bootstrap)
    yield p
    p.close()


# --- the happy path and its contract ------------------------------------------------------------------------


def test_upload_event_becomes_a_stored_flag_event_with_headers(
    kafka: KafkaBroker,
    topics: Topics,
    producer: Producer,
    pipeline: Pipeline,
    media_root: Path,
    tmp_path: Path,
) -> None:
    s = _settings(kafka, topics, tmp_path, media_root)
    event = upload_event("vid-1", file_uri(media_root / "a.mp4"))
    with running_worker(build_worker(s, pipeline)):
        producer.send(topics.uploads, event, headers=[("trace_id", b"trace-123")])
        records = read_topic(kafka.bootstrap, topics.flags, 1)
    assert len(records) == 1
    record = records[0]
    assert record.key == b"vid-1"
    headers = dict(record.headers)
    assert headers["trace_id"] == b"trace-123" and headers["schema_version"] == b"2"
    flag = FlagEvent.model_validate_json(record.value)
    assert flag.video_id == "vid-1" and flag.tenant == "acme" and flag.source_event_id == event["event_id"]
    assert flag.event_id == flag_event_id("acme", "vid-1")
    assert flag.decision in ("allow", "review", "flag") and flag.score is not None
    assert flag.top_frames and flag.top_frames[0].faces, "the face of the clip is reported"
    assert flag.timings_ms.fetch > 0 and flag.timings_ms.total >= flag.timings_ms.decode > 0
    assert flag.model == pipeline.model_ref
    assert flag.audio is None, "a clip without an audio track has no audio block"

    stored = DecisionStore(s.database_url).get("acme", "vid-1")
    assert stored is not None and stored.flag_event_json == record.value
    assert stored.record.origin == "scored" and stored.record.sha256 == file_sha256(media_root / "a.mp4")
    assert stored.record.thresholds == pipeline.used_thresholds
    committed, end = committed_and_end(kafka.bootstrap, topics.group, topics.uploads)
    assert committed == end, "the offset is committed once the flag is acknowledged"


def test_redelivered_and_repeated_events_re_emit_the_identical_decision(
    kafka: KafkaBroker,
    topics: Topics,
    producer: Producer,
    pipeline: Pipeline,
    media_root: Path,
    tmp_path: Path,
) -> None:
    s = _settings(kafka, topics, tmp_path, media_root)
    first = upload_event("vid-2", file_uri(media_root / "a.mp4"))
    again = dict(first)  # the same event delivered twice
    other = upload_event("vid-2", file_uri(media_root / "b.mp4"))  # a later event for the same video
    with running_worker(build_worker(s, pipeline)):
        for e in (first, again, other):
            producer.send(topics.uploads, e)
        records = read_topic(kafka.bootstrap, topics.flags, 3)
    assert len(records) == 3
    assert len({r.value for r in records}) == 1, "one video, one decision, re-emitted byte for byte"
    assert _flags(records)[0].source_event_id == first["event_id"]


def test_schema_files_match_the_event_models(tmp_path: Path) -> None:
    from service.events import write_json_schemas

    for path in write_json_schemas(tmp_path):
        committed = REPO / "docs" / "schemas" / path.name
        assert committed.read_text() == path.read_text(), f"run `dfguard schemas` ({committed} is stale)"


# --- bad events and media --------------------------------------------------------------------------------


def test_poison_events_go_to_the_dlq_with_their_bytes_and_the_partition_moves_on(
    kafka: KafkaBroker, producer: Producer, pipeline: Pipeline, media_root: Path, tmp_path: Path
) -> None:
    topics = Topics.fresh()
    create_topics(kafka.bootstrap, topics, partitions=1)  # one partition: the good event is behind the bad
    s = _settings(kafka, topics, tmp_path, media_root)
    missing_field = upload_event("vid-3", file_uri(media_root / "a.mp4"))
    del missing_field["tenant"]
    bad_id = upload_event("vid 3 with spaces", file_uri(media_root / "a.mp4"))
    poison: list[tuple[bytes | None, str]] = [
        (b"\xff\xfe not json", "malformed_event"),
        (b'{"schema_version": 1', "malformed_event"),
        (b"[" * 100_000, "malformed_event"),  # nested deeper than the JSON parser recurses
        (json.dumps(missing_field).encode(), "schema_violation"),
        (json.dumps(bad_id).encode(), "schema_violation"),
        (json.dumps({**missing_field, "tenant": "acme", "schema_version": 2}).encode(), "schema_violation"),
        (None, "malformed_event"),  # a tombstone
        (json.dumps(upload_event("vid-4", "ftp://example.com/x.mp4")).encode(), "invalid_url"),
        (json.dumps(upload_event("vid-5", "file:///etc/passwd")).encode(), "url_not_allowed"),
        (json.dumps(upload_event("vid-6", file_uri(media_root / "nope.mp4"))).encode(), "media_not_found"),
    ]
    before = _metric("dfguard_worker_events_dead_lettered_total", reason="schema_violation")
    with running_worker(build_worker(s, pipeline)):
        for value, _ in poison:
            producer.send(topics.uploads, value, key="k", headers=[("origin", b"test")])
        producer.send(topics.uploads, upload_event("vid-ok", file_uri(media_root / "a.mp4")))
        dead = read_topic(kafka.bootstrap, topics.dlq, len(poison))
        flags = read_topic(kafka.bootstrap, topics.flags, 1)
    assert [r.value for r in dead] == [v or b"" for v, _ in poison], "original bytes, in order"
    for record, (_, code) in zip(dead, poison, strict=True):
        headers = dict(record.headers)
        assert headers["dfg-error-code"] == code.encode(), headers
        assert headers["origin"] == b"test", "the original headers are kept"
        assert headers["dfg-error-message"] and headers["dfg-source-topic"] == topics.uploads.encode()
    assert [int(dict(r.headers)["dfg-source-offset"]) for r in dead] == list(range(len(poison)))
    assert [f.video_id for f in _flags(flags)] == ["vid-ok"]
    assert _metric("dfguard_worker_events_dead_lettered_total", reason="schema_violation") == before + 3
    committed, end = committed_and_end(kafka.bootstrap, topics.group, topics.uploads)
    assert committed == end == {0: len(poison) + 1}


def test_an_audio_only_upload_is_scored_and_its_flag_carries_the_audio_block(
    kafka: KafkaBroker,
    topics: Topics,
    producer: Producer,
    pipeline: Pipeline,
    media_root: Path,
    tmp_path: Path,
) -> None:
    s = _settings(kafka, topics, tmp_path, media_root)
    with running_worker(build_worker(s, pipeline)):
        producer.send(topics.uploads, upload_event("vid-audio", file_uri(media_root / "tone.m4a")))
        records = read_topic(kafka.bootstrap, topics.flags, 1)
    (flag,) = _flags(records)
    assert flag.decision == "allow" and flag.reasons == ["no_speech_found"] and flag.score is None
    assert flag.top_frames == []
    assert flag.audio is not None and flag.audio.score is None and flag.audio.reasons == ["no_speech_found"]
    assert flag.audio.model.name == "dfguard-aasist-l"
    stored = DecisionStore(s.database_url).get("acme", "vid-audio")
    assert stored is not None and stored.record.origin == "scored"
    assert stored.flag_event_json == records[0].value


@pytest.mark.parametrize(
    ("name", "code"), [("corrupt.mp4", "unsupported_media"), ("text.mp4", "unsupported_media")]
)
def test_media_that_cannot_be_analysed_gets_a_review_flag_with_the_error_code(
    kafka: KafkaBroker,
    topics: Topics,
    producer: Producer,
    pipeline: Pipeline,
    media_root: Path,
    tmp_path: Path,
    name: str,
    code: str,
) -> None:
    s = _settings(kafka, topics, tmp_path, media_root)
    with running_worker(build_worker(s, pipeline)):
        producer.send(topics.uploads, upload_event("vid-bad", file_uri(media_root / name)))
        (flag,) = _flags(read_topic(kafka.bootstrap, topics.flags, 1))
    assert flag.decision == "review" and flag.score is None and flag.reasons == [code]
    stored = DecisionStore(s.database_url).get("acme", "vid-bad")
    assert stored is not None and stored.record.origin == "media_error"


def test_transient_fetch_faults_are_retried_then_dead_lettered(
    kafka: KafkaBroker,
    topics: Topics,
    producer: Producer,
    pipeline: Pipeline,
    media_root: Path,
    tmp_path: Path,
) -> None:
    s = _settings(kafka, topics, tmp_path, media_root, fetch_allow_hosts=["127.0.0.1"], worker_max_attempts=3)
    host = FlakyMediaHost(media_root, failures=2)  # 2 failures: the third attempt succeeds
    dead_host = f"http://127.0.0.1:{free_port()}"  # nothing listens: every attempt fails
    retries = _metric("dfguard_worker_retries_total", reason="fetch_failed")
    try:
        with running_worker(build_worker(s, pipeline)):
            producer.send(topics.uploads, upload_event("vid-flaky", f"{host.url}/a.mp4"))
            producer.send(topics.uploads, upload_event("vid-dead", f"{dead_host}/a.mp4"))
            flags = _flags(read_topic(kafka.bootstrap, topics.flags, 1))
            dead = read_topic(kafka.bootstrap, topics.dlq, 1)
    finally:
        host.close()
    assert [f.video_id for f in flags] == ["vid-flaky"] and host.hits["/a.mp4"] == 3
    assert len(dead) == 1 and dict(dead[0].headers)["dfg-error-code"] == b"fetch_failed"
    assert b"after 3 attempts" in dict(dead[0].headers)["dfg-error-message"]
    assert _metric("dfguard_worker_retries_total", reason="fetch_failed") == retries + 2 + 3


# --- dedup -----------------------------------------------------------------------------------------------


def test_exact_reposts_reuse_the_verdict_and_never_leak_other_tenants_ids(
    kafka: KafkaBroker,
    topics: Topics,
    producer: Producer,
    pipeline: Pipeline,
    media_root: Path,
    tmp_path: Path,
) -> None:
    s = _settings(kafka, topics, tmp_path, media_root)
    hits = _metric("dfguard_dedup_hits_total", kind="exact")
    with running_worker(build_worker(s, pipeline)):
        producer.send(topics.uploads, upload_event("orig", file_uri(media_root / "a.mp4")))
        read_topic(kafka.bootstrap, topics.flags, 1)
        producer.send(topics.uploads, upload_event("repost", file_uri(media_root / "a.mp4")))
        producer.send(topics.uploads, upload_event("theirs", file_uri(media_root / "a.mp4"), tenant="globex"))
        flags = {f.video_id: f for f in _flags(read_topic(kafka.bootstrap, topics.flags, 3))}
    orig, repost, theirs = flags["orig"], flags["repost"], flags["theirs"]
    assert repost.decision == theirs.decision == orig.decision and repost.score == orig.score
    assert repost.reasons[0] == "duplicate_of:orig" and repost.reasons[1:] == orig.reasons
    assert theirs.reasons[0] == "duplicate" and not any("orig" in r for r in theirs.reasons)
    assert repost.timings_ms.decode == 0.0, "a repost costs the fetch, not the analysis"
    assert _metric("dfguard_dedup_hits_total", kind="exact") == hits + 2
    store = DecisionStore(s.database_url)
    rec = store.get("acme", "repost")
    assert rec is not None and rec.record.origin == "duplicate"


def _flagged_original(
    store: DecisionStore, pipeline: Pipeline, clip: Path, video_id: str, decision: str
) -> None:
    """A decision already in the store for `clip` (as an earlier scoring would have left it)."""
    media = load_media(clip, Settings())
    flag = FlagEvent(
        event_id=flag_event_id("acme", video_id),
        video_id=video_id,
        tenant="acme",
        decision=decision,  # type: ignore[arg-type]
        score=0.97 if decision == "flag" else 0.03,
        reasons=[],
        model=ModelRef(name=pipeline.model_ref.name, version=pipeline.model_ref.version),
        top_frames=[],
        timings_ms={"fetch": 1.0, "total": 2.0},  # type: ignore[arg-type]
        decided_at="2026-11-01T00:00:00Z",  # type: ignore[arg-type]
        source_event_id=f"ev-{video_id}",
    )
    store.put(
        NewDecision(
            tenant="acme",
            origin="scored",
            thresholds=UsedThresholds(review=0.5, flag=0.8),
            aggregation="confident",
            sha256=file_sha256(clip),
            flag=flag,
            frame_hashes=frame_hashes(media.frames, 8),
        )
    )


def test_near_duplicate_of_a_flagged_clip_is_flagged_at_once_but_of_an_allowed_clip_is_scored(
    kafka: KafkaBroker,
    topics: Topics,
    producer: Producer,
    pipeline: Pipeline,
    media_root: Path,
    tmp_path: Path,
) -> None:
    s = _settings(kafka, topics, tmp_path, media_root)
    store = DecisionStore(s.database_url)
    _flagged_original(store, pipeline, media_root / "a.mp4", "known-fake", "flag")
    _flagged_original(store, pipeline, media_root / "c.mp4", "known-real", "allow")
    mf.make_face_free_clip(media_root / "c_reencoded.mp4", seconds=2.0, width=480, height=270, crf=34)
    with running_worker(build_worker(s, pipeline, store)):
        producer.send(topics.uploads, upload_event("reupload", file_uri(media_root / "a_reencoded.mp4")))
        producer.send(topics.uploads, upload_event("other-face", file_uri(media_root / "b.mp4")))
        producer.send(topics.uploads, upload_event("real-repost", file_uri(media_root / "c_reencoded.mp4")))
        producer.send(
            topics.uploads,
            upload_event("their-reupload", file_uri(media_root / "a_reencoded.mp4"), tenant="initech"),
        )
        flags = {f.video_id: f for f in _flags(read_topic(kafka.bootstrap, topics.flags, 4))}
    assert flags["reupload"].decision == "flag" and flags["reupload"].reasons == [
        "near_duplicate_of_flagged:known-fake"
    ]
    assert flags["reupload"].timings_ms.detect == 0.0, "flagged without running the classifier"
    assert flags["their-reupload"].reasons == ["near_duplicate_of_flagged"], "no other tenant's id"
    assert not any(r.startswith("near_duplicate") for r in flags["other-face"].reasons)
    real = store.get("acme", "real-repost")
    assert real is not None and real.record.origin == "scored", (
        "a near-duplicate of an allowed clip is re-scored"
    )


# --- failures: crashes, broker restarts, rebalances, shutdown ---------------------------------------------


def _worker_process(s: Settings, topics: Topics, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **topics.env(),
        "DFG_KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "DFG_DATABASE_URL": s.database_url,
        "DFG_FILE_URI_ROOT": str(s.file_uri_root),
        "DFG_WORKER_CONCURRENCY": "2",
        "DFG_WORKER_METRICS_PORT": "0",
        "DFG_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "DFG_WORKER_SHUTDOWN_GRACE_SECONDS": "30",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _worker_events(log: Path) -> str:
    """The worker's own log lines (not kafka-python's), for a failure message."""
    return "\n".join(line for line in log.read_text().splitlines() if '"service.' in line)[-6000:]


def _assert_exactly_one_decision_each(s: Settings, flags: list[Any], videos: list[str]) -> None:
    by_video: defaultdict[str, set[bytes]] = defaultdict(set)
    for r in flags:
        by_video[FlagEvent.model_validate_json(r.value).video_id].add(r.value)
    assert sorted(by_video) == sorted(videos), "every event got a flag"
    assert all(len(v) == 1 for v in by_video.values()), "duplicates only as identical re-emissions"
    store = DecisionStore(s.database_url)
    with store.engine.connect() as conn:
        from sqlalchemy import text

        rows = conn.execute(text("select video_id, count(*) from decisions group by video_id")).all()
    assert sorted(rows) == sorted((v, 1) for v in videos), "exactly one stored decision per event"


@pytest.mark.slow
def test_kill_9_mid_batch_then_restart_loses_nothing_and_contradicts_nothing(
    kafka: KafkaBroker, topics: Topics, producer: Producer, media_root: Path, tmp_path: Path
) -> None:
    s = _settings(kafka, topics, tmp_path, media_root)
    clips = ["a.mp4", "b.mp4", "c.mp4", "a_reencoded.mp4"]
    videos = [f"v{i:02d}" for i in range(12)]
    for i, v in enumerate(videos):
        producer.send(topics.uploads, upload_event(v, file_uri(media_root / clips[i % len(clips)])))
    log = tmp_path / "worker.log"
    proc = _worker_process(s, topics, log)
    try:
        first = read_topic(kafka.bootstrap, topics.flags, 3, timeout=120)
        assert len(first) >= 3, _worker_events(log)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = _worker_process(s, topics, log)
        flags = read_topic(kafka.bootstrap, topics.flags, len(videos) + 50, timeout=25)
        deadline = time.monotonic() + 120
        while len({FlagEvent.model_validate_json(r.value).video_id for r in flags}) < len(videos):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            flags = read_topic(kafka.bootstrap, topics.flags, len(videos) + 50, timeout=5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(60) == 0, "SIGTERM is a clean exit"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    _assert_exactly_one_decision_each(s, flags, videos)
    committed, end = committed_and_end(kafka.bootstrap, topics.group, topics.uploads)
    assert committed == end


@pytest.mark.slow
def test_sigterm_finishes_in_flight_events_commits_and_exits(
    kafka: KafkaBroker, topics: Topics, producer: Producer, media_root: Path, tmp_path: Path
) -> None:
    s = _settings(kafka, topics, tmp_path, media_root)
    videos = [f"t{i}" for i in range(6)]
    for v in videos:
        producer.send(topics.uploads, upload_event(v, file_uri(media_root / "b.mp4")))
    log = tmp_path / "worker.log"
    proc = _worker_process(s, topics, log)
    try:
        assert read_topic(kafka.bootstrap, topics.flags, 1, timeout=120), log.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    flags = read_topic(kafka.bootstrap, topics.flags, len(videos), timeout=5)
    committed, _ = committed_and_end(kafka.bootstrap, topics.group, topics.uploads)
    done = {FlagEvent.model_validate_json(r.value).video_id for r in flags}
    assert sum(committed.values()) == len(done), "everything flagged was committed, nothing more"


@pytest.mark.slow
def test_a_broker_restart_during_processing_loses_nothing(
    producer: Producer, pipeline: Pipeline, media_root: Path, tmp_path: Path
) -> None:
    with KafkaBroker() as broker:
        topics = Topics.fresh()
        create_topics(broker.bootstrap, topics, partitions=2)
        s = _settings(broker, topics, tmp_path, media_root)
        own = Producer(broker.bootstrap)
        videos = [f"r{i}" for i in range(8)]
        for v in videos[:4]:
            own.send(topics.uploads, upload_event(v, file_uri(media_root / "a.mp4")))
        with running_worker(build_worker(s, pipeline)):
            assert read_topic(broker.bootstrap, topics.flags, 1, timeout=60)
            broker.restart(down_seconds=2)
            for v in videos[4:]:
                own.send(topics.uploads, upload_event(v, file_uri(media_root / "b.mp4")))
            deadline = time.monotonic() + 120
            flags: list[Any] = []
            while len({FlagEvent.model_validate_json(r.value).video_id for r in flags}) < len(videos):
                assert time.monotonic() < deadline, broker.log_tail()
                flags = read_topic(broker.bootstrap, topics.flags, 100, timeout=3)
            deadline = time.monotonic() + 30
            while (offsets := committed_and_end(broker.bootstrap, topics.group, topics.uploads))[
                0
            ] != offsets[1]:
                assert time.monotonic() < deadline, "commits resumed after the restart"
                time.sleep(0.5)
        own.close()
        _assert_exactly_one_decision_each(s, flags, videos)


@pytest.mark.slow
def test_two_workers_share_partitions_and_a_leaving_one_hands_over_without_loss(
    kafka: KafkaBroker, producer: Producer, pipeline: Pipeline, media_root: Path, tmp_path: Path
) -> None:
    topics = Topics.fresh()
    create_topics(kafka.bootstrap, topics, partitions=4)
    s = _settings(kafka, topics, tmp_path, media_root, worker_concurrency=1)
    store = DecisionStore(s.database_url)
    a, b = build_worker(s, pipeline, store), build_worker(s, pipeline, store)
    videos = [f"w{i:02d}" for i in range(16)]
    with running_worker(a):
        with running_worker(b):
            deadline = time.monotonic() + 30
            while not (a._parts and b._parts and len(a._parts) + len(b._parts) == 4):
                assert time.monotonic() < deadline, "both workers got partitions"
                time.sleep(0.2)
            for v in videos:
                producer.send(topics.uploads, upload_event(v, file_uri(media_root / "c.mp4")))
            assert len(read_topic(kafka.bootstrap, topics.flags, 4, timeout=60)) >= 4
        # b has left the group: a owns all four partitions and finishes the rest.
        deadline = time.monotonic() + 120
        flags: list[Any] = []
        while len({FlagEvent.model_validate_json(r.value).video_id for r in flags}) < len(videos):
            assert time.monotonic() < deadline
            flags = read_topic(kafka.bootstrap, topics.flags, 100, timeout=3)
        assert len(a._parts) == 4
    _assert_exactly_one_decision_each(s, flags, videos)


def test_a_rebalance_that_never_assigns_is_unstalled_by_a_fresh_join(
    kafka: KafkaBroker,
    topics: Topics,
    producer: Producer,
    pipeline: Pipeline,
    media_root: Path,
    tmp_path: Path,
) -> None:
    """kafka-python 3.0 was seen to revoke a worker's partitions in a metadata-triggered rejoin and never
    assign any again. The revocation is replayed here as the listener reports it (the group itself stays
    stable, so no assignment follows on its own); the watchdog must renew the subscription, which makes a
    real new join that assigns the partitions again, and events keep being decided."""
    s = _settings(kafka, topics, tmp_path, media_root, worker_rebalance_stall_seconds=2.0)
    stalls = _metric("dfguard_worker_rebalance_stalls_total")
    with running_worker(build_worker(s, pipeline)) as worker:
        parts = set(worker._parts)
        assert parts, "assigned before the stall"
        deadline = time.monotonic() + 60
        while _metric("dfguard_worker_rebalance_stalls_total") == stalls and time.monotonic() < deadline:
            if worker._rebalancing_since is None and worker._rebalances.empty():
                # (again, if a real rebalance of the young group assigned the partitions meanwhile)
                worker.ready.clear()
                worker._rebalances.put(("revoked", parts))
            time.sleep(0.5)
        assert _metric("dfguard_worker_rebalance_stalls_total") == stalls + 1
        assert worker.ready.wait(60), "the renewed subscription got an assignment"
        assert set(worker._parts) == parts and worker._rebalancing_since is None
        producer.send(topics.uploads, upload_event("vid-after-stall", file_uri(media_root / "a.mp4")))
        (record,) = read_topic(kafka.bootstrap, topics.flags, 1)
    assert record.key == b"vid-after-stall"


# --- lag ----------------------------------------------------------------------------------------------------


class _GatedHandler(EventHandler):
    """The real handler behind a gate the test opens: holds events back so lag can be observed."""

    gate: threading.Event

    def handle(self, value: bytes | None, stop: threading.Event) -> Any:
        self.gate.wait(60)
        return super().handle(value, stop)


def test_lag_gauge_equals_the_true_lag_and_drops_to_zero(
    kafka: KafkaBroker, producer: Producer, pipeline: Pipeline, media_root: Path, tmp_path: Path
) -> None:
    topics = Topics.fresh()
    create_topics(kafka.bootstrap, topics, partitions=1)
    s = _settings(kafka, topics, tmp_path, media_root, worker_concurrency=1)
    handler = _GatedHandler(s, pipeline, DecisionStore(s.database_url))
    handler.gate = threading.Event()
    labels = {"group": topics.group, "topic": topics.uploads, "partition": "0"}
    with running_worker(Worker(s, handler)):
        for i in range(5):
            producer.send(topics.uploads, upload_event(f"lag{i}", file_uri(media_root / "c.mp4")))
        deadline = time.monotonic() + 20
        while _metric("dfguard_worker_consumer_lag", **labels) != 5:
            assert time.monotonic() < deadline, _metric("dfguard_worker_consumer_lag", **labels)
            time.sleep(0.1)
        committed, end = committed_and_end(kafka.bootstrap, topics.group, topics.uploads)
        assert end[0] - committed[0] == 5
        handler.gate.set()
        deadline = time.monotonic() + 60
        while _metric("dfguard_worker_consumer_lag", **labels) != 0:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        committed, end = committed_and_end(kafka.bootstrap, topics.group, topics.uploads)
        assert committed == end


@pytest.mark.postgres
def test_the_worker_stores_decisions_in_postgresql(
    kafka: KafkaBroker,
    postgres: Any,
    topics: Topics,
    producer: Producer,
    pipeline: Pipeline,
    media_root: Path,
    tmp_path: Path,
) -> None:
    s = _settings(kafka, topics, tmp_path, media_root, database_url=postgres.url)
    with DecisionStore(s.database_url).engine.begin() as conn:  # the cluster is shared by the session
        conn.exec_driver_sql(
            "TRUNCATE decisions, frame_hashes, shadow_results, decision_revisions, evidence, "
            "evidence_pictures "
            "RESTART IDENTITY"
        )
    with running_worker(build_worker(s, pipeline)):
        producer.send(topics.uploads, upload_event("pg-1", file_uri(media_root / "a.mp4")))
        read_topic(kafka.bootstrap, topics.flags, 1)
        producer.send(topics.uploads, upload_event("pg-2", file_uri(media_root / "a.mp4")))
        producer.send(topics.uploads, upload_event("pg-1", file_uri(media_root / "a.mp4")))
        flags = read_topic(kafka.bootstrap, topics.flags, 3)
    _assert_exactly_one_decision_each(s, flags, ["pg-1", "pg-2"])
    stored = DecisionStore(s.database_url).get("acme", "pg-2")
    assert stored is not None and stored.record.reasons[0] == "duplicate_of:pg-1"


def test_serve_with_worker_runs_the_consumer_in_the_gateway_and_serves_its_decisions(
    kafka: KafkaBroker, topics: Topics, producer: Producer, media_root: Path, tmp_path: Path
) -> None:
    s = _settings(kafka, topics, tmp_path, media_root, api_keys={"k": "acme"})
    with gateway(s, with_worker=True) as (base, _):
        producer.send(topics.uploads, upload_event("in-gw", file_uri(media_root / "b.mp4")))
        (flag,) = _flags(read_topic(kafka.bootstrap, topics.flags, 1))
        r = httpx.get(f"{base}/v1/decisions/in-gw", headers={"authorization": "Bearer k"})
        metrics = httpx.get(f"{base}/metrics").text
    assert r.status_code == 200 and r.json()["decision"] == flag.decision
    assert r.json()["flag_event_id"] == flag.event_id
    assert f'dfguard_worker_consumer_lag{{group="{topics.group}"' in metrics
