"""Small helpers for tests and benchmarks that talk to a real Kafka broker: topics, events, reading topics."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.structs import TopicPartition

from service.config import Settings

if TYPE_CHECKING:
    from service.worker import Worker


@dataclass(frozen=True)
class Topics:
    uploads: str
    flags: str
    dlq: str
    group: str

    @classmethod
    def fresh(cls) -> Topics:
        tag = uuid.uuid4().hex[:8]
        return cls(f"uploads-{tag}", f"flags-{tag}", f"dlq-{tag}", f"workers-{tag}")

    def env(self) -> dict[str, str]:
        return {
            "DFG_KAFKA_UPLOADS_TOPIC": self.uploads,
            "DFG_KAFKA_FLAGS_TOPIC": self.flags,
            "DFG_KAFKA_DLQ_TOPIC": self.dlq,
            "DFG_KAFKA_GROUP_ID": self.group,
        }

    def settings(self) -> dict[str, str]:
        return {k.removeprefix("DFG_").lower(): v for k, v in self.env().items()}


def create_topics(bootstrap: str, topics: Topics, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            [
                NewTopic(topics.uploads, partitions, 1),
                NewTopic(topics.flags, 1, 1),
                NewTopic(topics.dlq, 1, 1),
            ]
        )
    finally:
        admin.close()


def upload_event(
    video_id: str, uri: str, *, tenant: str = "acme", event_id: str | None = None
) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": event_id or f"ev-{uuid.uuid4().hex[:12]}",
        "video_id": video_id,
        "tenant": tenant,
        "uri": uri,
        "content_type": "video/mp4",
        "uploaded_at": datetime.now(UTC).isoformat(),
    }


def file_uri(path: Path) -> str:
    return path.resolve().as_uri()


class Producer:
    def __init__(self, bootstrap: str) -> None:
        self._p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)

    def send(
        self,
        topic: str,
        value: dict[str, Any] | bytes | None,
        key: str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        *,
        wait: bool = True,
        partition: int | None = None,
    ) -> Any:
        """Send one record; `wait`: until the broker acknowledged it (its RecordMetadata: partition, offset),
        else see `flush`."""
        raw = json.dumps(value).encode() if isinstance(value, dict) else value
        if key is None and isinstance(value, dict):
            key = str(value.get("video_id"))
        future = self._p.send(
            topic, key=key.encode() if key else None, value=raw, headers=headers or [], partition=partition
        )
        return future.get(30) if wait else None

    def flush(self) -> None:
        self._p.flush(30)

    def close(self) -> None:
        self._p.close()


def read_topic(bootstrap: str, topic: str, n: int, timeout: float = 60.0) -> list[Any]:
    """Every record of `topic` from the start until at least `n` arrived (or the timeout); all partitions."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        deadline = time.monotonic() + timeout
        parts: set[int] | None = None
        while parts is None and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                time.sleep(0.2)
        if parts is None:
            return []
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        while len(out) < n and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                out.extend(batch)
        return out
    finally:
        consumer.close()


def read_to_end(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every record of `topic` up to its end offsets now (all partitions): a snapshot, without waiting."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} not read to its end offsets within {timeout} s")
            for batch in consumer.poll(timeout_ms=200).values():
                out.extend(batch)
        return out
    finally:
        consumer.close()


def committed_and_end(bootstrap: str, group: str, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """The group's committed offsets and the end offsets of `topic`, per partition, from the broker."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        ends = consumer.end_offsets(tps)
        committed = {tp.partition: consumer.committed(tp) or 0 for tp in tps}
        return committed, {tp.partition: ends[tp] for tp in tps}
    finally:
        consumer.close()


@contextmanager
def running_worker(worker: Worker) -> Iterator[Worker]:
    """Run `worker` in a thread until the block ends; it must join its group, and stop, within 60 s."""
    thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)
    thread.start()
    try:
        assert worker.ready.wait(60), "the worker did not get partitions"
        yield worker
    finally:
        worker.stop()
        thread.join(60)
        assert not thread.is_alive(), "the worker did not stop"


def worker_settings(bootstrap: str, topics: Topics, workdir: Path, media_root: Path, **kw: Any) -> Settings:
    """Settings of a worker under test: these topics, a SQLite store in `workdir`, `file://` media under
    `media_root`, two events at once, short retry backoffs; `kw` overrides any of it."""
    base: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "database_url": f"sqlite:///{workdir / 'decisions.sqlite3'}",
        "file_uri_root": media_root,
        "worker_concurrency": 2,
        "worker_retry_backoff_seconds": 0.1,
        "worker_retry_backoff_max_seconds": 0.5,
        "kafka_session_timeout_ms": 6000,
        **topics.settings(),
    }
    return Settings(**{**base, **kw})
