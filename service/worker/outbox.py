"""The revision outbox's producer: flag events `dfguard rescore` stored and the broker has not acknowledged.

`produce_acked` sends flag events keyed by video_id with the worker's headers and waits for every
acknowledgement (the producer is the worker's: acks=all, idempotent). `OutboxDrainer` runs in the worker: a
pass at start and every `DFG_WORKER_OUTBOX_INTERVAL_SECONDS` drains the outbox (`DecisionStore.drain_pending`,
rows claimed so two workers do not share them) and refreshes `dfguard_revisions_pending`, so a revision a
killed rescore left behind is produced without anyone rerunning it. A failed pass leaves the rows pending for
the next one and never stops the worker.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable

from kafka import KafkaProducer

from service.config import Settings
from service.metrics import REVISIONS_PENDING
from service.store import DecisionStore
from service.store.revisions import PendingRevision

__all__ = ["OutboxDrainer", "produce_acked"]

log = logging.getLogger(__name__)


def produce_acked(producer: KafkaProducer, s: Settings, events: Iterable[tuple[str, bytes]]) -> int:
    """Produce (video_id, flag event bytes) pairs to the flags topic (schema version 2: revisions exist only
    there) and return once the broker acknowledged each; raises a `KafkaError` otherwise."""
    wait = s.kafka_request_timeout_ms / 1000 * 2
    futures = []
    for video_id, value in events:
        headers = [("schema_version", b"2"), ("trace_id", uuid.uuid4().hex.encode())]
        futures.append(
            producer.send(s.kafka_flags_topic, key=video_id.encode(), value=value, headers=headers)
        )
    producer.flush(timeout=wait)
    for future in futures:
        future.get(timeout=wait)
    return len(futures)


class OutboxDrainer:
    """A thread draining the revision outbox at start and then every `worker_outbox_interval_seconds`."""

    def __init__(
        self,
        settings: Settings,
        store: Callable[[], DecisionStore],
        producer: KafkaProducer,
        stop: threading.Event,
    ) -> None:
        self.s = settings
        self._store = store
        self._producer = producer
        self._stop = stop
        self._thread = threading.Thread(target=self._run, name="dfguard-outbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def drain_once(self) -> int:
        """One pass; returns how many revisions were produced. Never raises (logs; the rows stay pending)."""
        produced = 0
        try:
            store = self._store()

            def produce(batch: list[PendingRevision]) -> None:
                produce_acked(self._producer, self.s, ((p.video_id, p.value) for p in batch))

            produced = store.drain_pending(produce)
            if produced:
                log.info("worker: produced %d pending revisions", produced)
            REVISIONS_PENDING.set(store.pending_count())
        except Exception as exc:  # noqa: BLE001 - store or broker away: rows stay pending, next pass retries
            log.warning(
                "worker: revision outbox not drained (%s: %s); retrying later", type(exc).__name__, exc
            )
        return produced

    def _run(self) -> None:
        while not self._stop.is_set():
            self.drain_once()
            if self._stop.wait(self.s.worker_outbox_interval_seconds):
                return
