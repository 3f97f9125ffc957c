"""`dfguard dlq replay` on a real broker with a running worker: after a fault (a media host that was down),
the dead-lettered events go back with their key, value and headers, every replayed video is decided once, a
rerun replays nothing twice, and a record replayed too often is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from devtools.kafka_broker import KafkaBroker
from devtools.kafka_tools import Producer, Topics, create_topics, read_to_end, running_worker, upload_event
from devtools.servers import FlakyMediaHost, free_port
from service.config import Settings
from service.events import FlagEvent
from service.pipeline import Pipeline
from service.store import DecisionStore
from service.worker import build_worker
from service.worker.replay import REPLAY_COUNT_HEADER, ReplayFilter, replay

pytestmark = pytest.mark.kafka


def _wait(bootstrap: str, topic: str, n: int, timeout: float = 60) -> list[Any]:
    deadline = time.monotonic() + timeout
    while len(records := read_to_end(bootstrap, topic)) < n:
        assert time.monotonic() < deadline, f"{topic}: {len(records)} of {n} records"
        time.sleep(0.3)
    return records


def _end(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {tp.partition: o for tp, o in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def test_replay_after_a_fault_decides_each_video_once_and_a_rerun_replays_nothing(
    kafka: KafkaBroker, pipeline: Pipeline, face_clip: Path, tmp_path: Path
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    (media / "clip.mp4").write_bytes(face_clip.read_bytes())
    topics = Topics.fresh()
    create_topics(kafka.bootstrap, topics, partitions=2)
    port = free_port()
    s = Settings(
        kafka_bootstrap_servers=kafka.bootstrap,
        **topics.settings(),
        database_url=f"sqlite:///{tmp_path / 'decisions.sqlite3'}",
        file_uri_root=media,
        fetch_allow_hosts=["127.0.0.1"],
        worker_concurrency=2,
        worker_max_attempts=2,
        worker_retry_backoff_seconds=0.05,
        worker_retry_backoff_max_seconds=0.1,
        worker_lag_interval_seconds=0.2,
        kafka_session_timeout_ms=6000,
        worker_shutdown_grace_seconds=20,
        dlq_max_replays=2,
        dlq_replay_group_id=f"replay-{topics.group}",
    )
    videos = [f"rv-{i}" for i in range(4)]
    producer = Producer(kafka.bootstrap)
    host = None
    try:
        with running_worker(build_worker(s, pipeline)):
            # The fault: the media host is down, so every event is dead-lettered after its retries.
            for v in videos:
                event = upload_event(v, f"http://127.0.0.1:{port}/clip.mp4")
                producer.send(topics.uploads, event, headers=[("origin", b"uploader")])
            producer.send(topics.uploads, b"not an event", key="bad-1")  # an event fault: never replayed
            dlq = _wait(kafka.bootstrap, topics.dlq, 5)
            codes = Counter(dict(r.headers)["dfg-error-code"] for r in dlq)
            assert codes == {b"fetch_failed": 4, b"malformed_event": 1}
            originals = {r.key: r.value for r in read_to_end(kafka.bootstrap, topics.uploads)}

            uploads_before = _end(kafka.bootstrap, topics.uploads)
            dry = replay(s, dry_run=True)
            assert (dry.scanned, dry.replayed, dry.skipped) == (5, 4, {"code:malformed_event": 1})
            assert {r.key for r in dry.records} == set(videos)
            assert _end(kafka.bootstrap, topics.uploads) == uploads_before, "a dry run publishes nothing"

            # Replayed while the host is still down: back in the DLQ, with the replay counted.
            first = replay(s)
            assert (first.scanned, first.replayed, first.refused) == (5, 4, [])
            uploads = read_to_end(kafka.bootstrap, topics.uploads)
            republished = [r for r in uploads if REPLAY_COUNT_HEADER in dict(r.headers)]
            assert len(republished) == 4
            for r in republished:  # the original key, value and headers; the worker's dfg-* headers gone
                assert r.value == originals[r.key]
                assert r.headers == [("origin", b"uploader"), (REPLAY_COUNT_HEADER, b"1")], r.headers
            again = _wait(kafka.bootstrap, topics.dlq, 9)[5:]
            for r in again:
                headers = [k for k, _ in r.headers]
                assert dict(r.headers)[REPLAY_COUNT_HEADER] == b"1" and headers.count("dfg-error-code") == 1

            # The host is up: a rerun reads only what was dead-lettered since (the group kept its progress).
            host = FlakyMediaHost(media, failures=0, port=port)
            second = replay(s)
            assert (second.scanned, second.replayed) == (4, 4)
            flags = _wait(kafka.bootstrap, topics.flags, 4)
            assert {FlagEvent.model_validate_json(r.value).video_id for r in flags} == set(videos)

            # Nothing left: the CLI reruns and replays nothing twice.
            env = {k: v for k, v in os.environ.items() if not k.startswith("DFG_")}
            env.update(
                topics.env(),
                DFG_KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap,
                DFG_DLQ_REPLAY_GROUP_ID=s.dlq_replay_group_id,
            )
            cli = subprocess.run(
                [sys.executable, "-m", "service.cli", "dlq", "replay"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            report = json.loads(cli.stdout.splitlines()[-1])
            assert (report["scanned"], report["replayed"], report["refused"]) == (0, 0, []), report

            # Another group over the whole DLQ with the limit at one replay: the never-replayed records go
            # again (those videos are decided: the stored decision is re-emitted, first wins); the records
            # replayed once already are refused and reported.
            strict = s.model_copy(update={"dlq_max_replays": 1})
            fourth = replay(
                strict, ReplayFilter.from_args(codes=["fetch_failed"]), group=f"other-{topics.group}"
            )
            assert fourth.replayed == 4 and fourth.skipped == {"code:malformed_event": 1}
            assert sorted(r.key or "" for r in fourth.refused) == videos
            assert {r.replays for r in fourth.refused} == {1}
            flags = _wait(kafka.bootstrap, topics.flags, 8)
    finally:
        producer.close()
        if host is not None:
            host.close()
    by_video: dict[str, set[bytes]] = {}
    for r in flags:
        by_video.setdefault(FlagEvent.model_validate_json(r.value).video_id, set()).add(r.value)
    assert sorted(by_video) == videos and all(len(v) == 1 for v in by_video.values()), "one decision each"
    store = DecisionStore(s.database_url)
    assert all(store.get("acme", v) is not None for v in videos)
    dlq = read_to_end(kafka.bootstrap, topics.dlq)
    assert len(dlq) == 9, "nothing was dead-lettered after the host came back"
