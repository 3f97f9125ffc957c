"""The Kafka consumer loop: at-least-once, bounded concurrency, per-video ordering, contiguous commits.

The main thread alone touches the consumer (kafka-python's consumer is not thread-safe): it polls, hands
records to the fair dispatcher (`service/worker/fairness.py`: one FIFO per tenant; a free event thread takes
from the tenant with the fewest events in flight), collects completions and commits. A record's offset is
committed only after its outcome (flag event or dead letter) was acknowledged by the broker (acks=all,
idempotent producer) and, for flags, the decision was stored, and only as part of a contiguous completed
prefix of its partition. Records with the same key (video_id) run one after another; others run concurrently.
When `worker_max_buffered_events` records are taken and not finished the partitions are paused (polling
continues, so the group membership stays alive); that buffer is larger than the concurrency so the worker
reads past one tenant's burst to other tenants' events. On SIGTERM, in-flight events get
`worker_shutdown_grace_seconds` to finish; whatever is not done then (or not started) is not committed and is
redelivered.
On a rebalance, what is done is committed without waiting for in-flight events (kafka-python 3 runs listeners
on its IO thread, where waiting would stall heartbeats); a partition given straight back keeps its state, one
that goes elsewhere is dropped: its in-flight events finish, and the new owner re-emits the stored decision,
an identical flag event.

Revision outbox: a thread of its own produces re-decisions `dfguard rescore` stored and the broker has not
acknowledged (`service/worker/outbox.py`), at start and every `DFG_WORKER_OUTBOX_INTERVAL_SECONDS`.

Holds: while a dependency probe fails (`service/worker/health.py`), the partitions are paused (polling goes
on, so the membership lives), no event starts, in-flight events wait for the hold to end and nothing past the
last finished event is committed; the lag gauge keeps refreshing, so the lag grows. The worker stays a group
member (ready), so a rolling update can still replace it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from service.config import Settings
from service.errors import classify
from service.metrics import (
    CONSUMER_LAG,
    EVENT_LATENCY,
    EVENTS_CONSUMED,
    EVENTS_DEAD_LETTERED,
    EVENTS_PRODUCED,
    REBALANCE_STALLS,
    WORKER_BUFFERED,
    WORKER_DISPATCH_WAIT,
    WORKER_IN_FLIGHT,
    WORKER_LAST_DECISION,
    WORKER_PROCESSING,
    WORKER_RETRIES,
)
from service.worker.fairness import FairQueue, tenant_of
from service.worker.handler import Emission, EventHandler
from service.worker.offsets import PartitionOffsets
from service.worker.outbox import OutboxDrainer

__all__ = ["Worker"]

log = logging.getLogger(__name__)
_BOOTSTRAP_MS = 5000


def durable_producer(s: Settings, role: str, **extra: Any) -> KafkaProducer:
    """The producer every outcome (flag, DLQ record, replayed upload) is published with: acknowledged by all
    in-sync replicas and idempotent, so a retried send is never written twice."""
    return KafkaProducer(
        bootstrap_servers=s.kafka_bootstrap_servers.split(","),
        client_id=f"{s.kafka_client_id}-{role}",
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        request_timeout_ms=s.kafka_request_timeout_ms,
        **extra,
    )


@dataclass
class _Partition:
    tp: TopicPartition
    offsets: PartitionOffsets = field(default_factory=PartitionOffsets)
    waiting: dict[bytes, deque[Any]] = field(default_factory=dict)  # key -> records behind the running one
    running: set[bytes] = field(default_factory=set)  # keys with a record in the fair queue or in flight
    revoked: bool = False
    buffered: int = 0  # records taken and not finished (waiting, queued or in flight)


@dataclass(frozen=True)
class _Ready:
    """A record whose key has nothing in flight, waiting in the fair queue for a thread."""

    part: _Partition
    key: bytes
    record: Any
    tenant: str


@dataclass(frozen=True)
class _Done:
    part: _Partition
    record: Any
    key: bytes
    outcome: Emission | None  # None: not finished (stopping); the offset stays uncommitted
    started: float


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Only records what happened: kafka-python 3 may call listeners on its IO thread, where a blocking
    consumer call (a commit) raises and where waiting would stall heartbeats. The main loop applies it."""

    def __init__(self, worker: Worker) -> None:
        self.changes = worker._rebalances

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.changes.put(("revoked", set(revoked)))

    def on_partitions_lost(self, lost: list[TopicPartition]) -> None:
        self.changes.put(("lost", set(lost)))

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.changes.put(("assigned", set(assigned)))


class Worker:
    """Consume `videos.uploaded`, produce `moderation.flags` (and the DLQ), commit what is done."""

    def __init__(self, settings: Settings, handler: EventHandler) -> None:
        self.s = settings
        self.handler = handler
        self.health = handler.health
        self.stop_event = threading.Event()
        self._parts: dict[TopicPartition, _Partition] = {}
        self._completions: queue.Queue[_Done] = queue.Queue()
        self._rebalances: queue.Queue[tuple[str, set[TopicPartition]]] = queue.Queue()
        self._handing_over: dict[TopicPartition, _Partition] = {}  # revoked, awaiting the next assignment
        self._rebalancing_since: float | None = None  # a revocation not yet followed by an assignment
        self._fair: FairQueue[_Ready] = FairQueue()  # guarded by _lock: event threads take from it too
        self._slots = 0  # event threads running (each takes the next ready record when its own is done)
        self._lock = threading.Lock()
        self._paused = False  # the assigned partitions are paused (buffer full, or held)
        self._full = False  # too much buffered: fetch nothing until half of it is done
        self._next_lag = 0.0
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._outbox: OutboxDrainer | None = None  # produces revisions `dfguard rescore` left pending
        self._pool = ThreadPoolExecutor(settings.worker_concurrency, thread_name_prefix="dfguard-event")
        self.ready = threading.Event()  # set while the consumer is a member of its group (held or not)
        self.last_tick = time.monotonic()  # the loop's heartbeat, for /healthz

    # --- lifecycle ---------------------------------------------------------------------------------------

    def stop(self) -> None:
        self.stop_event.set()

    @property
    def stalled_after(self) -> float:
        """Seconds without a loop tick after which the worker counts as hung: the longest the loop may block
        (a rebalance it waits in), beyond which the group would evict the member anyway."""
        return self.s.kafka_max_poll_interval_ms / 1000

    def alive(self) -> bool:
        return time.monotonic() - self.last_tick < self.stalled_after

    def run(self) -> None:
        """Block until `stop()` (or SIGTERM in the CLI); then drain within the grace period and leave."""
        EVENTS_DEAD_LETTERED.labels(reason="internal_error")  # the series exists (at 0) for the alert
        self.health.start()
        delay = self.s.worker_retry_backoff_seconds
        while not self._connect():
            self.last_tick = time.monotonic()
            if self.stop_event.wait(delay):
                self._pool.shutdown(wait=False)
                self.handler.close()
                return
            delay = min(delay * 2, self.s.worker_retry_backoff_max_seconds)
        assert self._consumer is not None and self._producer is not None
        self._outbox = OutboxDrainer(self.s, lambda: self.handler.store, self._producer, self.stop_event)
        self._outbox.start()
        self._await_topic()
        self._consumer.subscribe([self.s.kafka_uploads_topic], listener=_Rebalance(self))
        log.info("worker: consuming %s as group %s", self.s.kafka_uploads_topic, self.s.kafka_group_id)
        try:
            while not self.stop_event.is_set():
                self._step(poll_ms=200)
        finally:
            self._shutdown()

    def _await_topic(self) -> None:
        """Know the uploads topic's partitions before joining: a group leader without them assigns nothing
        and then depends on a metadata-triggered rejoin, which kafka-python 3.0 was seen to stall in."""
        assert self._consumer is not None
        delay = self.s.worker_retry_backoff_seconds
        while not self.stop_event.is_set():
            self.last_tick = time.monotonic()
            try:
                if self._consumer.partitions_for_topic(self.s.kafka_uploads_topic):
                    return
            except KafkaError as exc:
                log.debug("worker: no metadata yet: %s", exc)
            log.info("worker: waiting for topic %s", self.s.kafka_uploads_topic)
            self.stop_event.wait(delay)
            delay = min(delay * 2, self.s.worker_retry_backoff_max_seconds)

    def _connect(self) -> bool:
        """Create the producer and consumer; False while no broker answers (the caller retries). Each try
        waits at most 5 s for a broker, so a worker started before Kafka still stops promptly on SIGTERM."""
        s = self.s
        servers = s.kafka_bootstrap_servers.split(",")
        try:
            self._producer = self._producer or durable_producer(
                s, "producer", bootstrap_timeout_ms=_BOOTSTRAP_MS
            )
            self._consumer = KafkaConsumer(
                bootstrap_servers=servers,
                client_id=f"{s.kafka_client_id}-consumer",
                group_id=s.kafka_group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=s.kafka_max_poll_records,
                max_poll_interval_ms=s.kafka_max_poll_interval_ms,
                session_timeout_ms=s.kafka_session_timeout_ms,
                heartbeat_interval_ms=max(500, s.kafka_session_timeout_ms // 4),
                request_timeout_ms=max(s.kafka_request_timeout_ms, s.kafka_session_timeout_ms + 5000),
                bootstrap_timeout_ms=_BOOTSTRAP_MS,
            )
        except KafkaError as exc:
            log.warning("worker: Kafka at %s unavailable (%s); retrying", s.kafka_bootstrap_servers, exc)
            return False
        return True

    def _shutdown(self) -> None:
        log.info("worker: stopping; %d events in flight", self._fair.in_flight)
        self.ready.clear()
        self._drain(set(self._parts), self.s.worker_shutdown_grace_seconds)
        self._commit()
        for part in self._parts.values():
            self._forget_lag(part.tp)
        assert self._consumer is not None and self._producer is not None
        if self._outbox is not None:  # stop_event is set: it ends after the pass in progress
            self._outbox.join(self.s.kafka_request_timeout_ms / 1000 * 2)
        try:
            self._consumer.close(autocommit=False)
        finally:
            self._producer.close(timeout=10)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self.handler.close()

    # --- the loop ------------------------------------------------------------------------------------------

    def _step(self, poll_ms: int) -> None:
        assert self._consumer is not None
        self.last_tick = time.monotonic()
        self._collect(block=False)
        self._apply_rebalances()
        self._unstall_rebalance()
        self._commit()
        self._flow_control()
        try:
            records = self._consumer.poll(timeout_ms=poll_ms)
        except KafkaError as exc:  # never let the loop die: the broker or the group comes back
            log.warning("worker: poll failed (%s); retrying", exc)
            WORKER_RETRIES.labels(reason="kafka_poll").inc()
            self.stop_event.wait(self.s.worker_retry_backoff_seconds)
            records = {}
        self._apply_rebalances()
        for tp, batch in records.items():
            part = self._parts.get(tp)
            if part is None:  # fetched for a partition whose assignment is not applied yet: never skip it
                part = self._parts[tp] = _Partition(tp)
            for record in batch:
                if part.offsets.last_taken is not None and record.offset <= part.offsets.last_taken:
                    continue  # fetched again after a rebalance gave the partition back: already in hand
                EVENTS_CONSUMED.labels(topic=tp.topic).inc()
                part.offsets.take(record.offset)
                part.buffered += 1
                key = record.key if record.key is not None else f"\0offset:{record.offset}".encode()
                if key in part.running:
                    part.waiting.setdefault(key, deque()).append(record)
                else:
                    self._ready(part, key, record)
        self._dispatch()
        if time.monotonic() >= self._next_lag:
            self._update_lag()

    def _ready(self, part: _Partition, key: bytes, record: Any) -> None:
        """Queue a record whose key has nothing in hand; its key's later records now wait behind it."""
        part.running.add(key)
        item = _Ready(part, key, record, tenant_of(record.value))
        with self._lock:
            self._fair.push(item.tenant, item, time.monotonic())

    def _dispatch(self) -> None:
        """Start a thread per free slot; each keeps taking the fairest ready record until none waits."""
        if self.stop_event.is_set():
            return
        with self._lock:
            while self._slots < self.s.worker_concurrency:
                item = self._take()
                if item is None:
                    break
                self._slots += 1
                self._pool.submit(self._run_slot, item)

    def _take(self) -> _Ready | None:
        """(`_lock` held) The next record to start, from the tenant with the fewest events in flight."""
        taken = self._fair.pop()
        WORKER_IN_FLIGHT.set(self._fair.in_flight)
        if taken is None:
            return None
        _, item, ready_at = taken
        WORKER_DISPATCH_WAIT.observe(time.monotonic() - ready_at)
        return item

    def _run_slot(self, item: _Ready | None) -> None:
        """Event thread: process, then take the next ready record at once (the main loop may be in a poll),
        until nothing waits or the worker stops."""
        while item is not None:
            try:
                self._process(item.part, item.key, item.record)
            except Exception:  # never leak the slot; the record stays unfinished, as it did in the pool
                log.exception("worker: event thread failed at %s/%d", item.part.tp, item.record.offset)
            with self._lock:
                self._fair.finished(item.tenant)
                item = None if self.stop_event.is_set() else self._take()
                if item is None:
                    self._slots -= 1
                WORKER_IN_FLIGHT.set(self._fair.in_flight)

    def _process(self, part: _Partition, key: bytes, record: Any) -> None:
        """Worker thread: decide, then produce and wait for the broker's acknowledgement."""
        started = time.monotonic()
        outcome: Emission | None
        try:
            outcome = self.handler.handle(record.value, self.stop_event)
        except InterruptedError:
            outcome = None
        except Exception as exc:  # a bug must neither kill the loop nor block the partition
            log.exception("worker: event at %s/%d failed unexpectedly", part.tp, record.offset)
            message = f"unexpected {type(exc).__name__}: {exc}"
            outcome = self.handler.dead_letter(record.value, record.key, classify(exc), message)
        if outcome is not None:
            produced = False
            try:
                self._produce(record, outcome)
                produced = True
            except InterruptedError:
                pass  # stopping: left uncommitted, so it is redelivered
            self._follow_up(outcome, produced)
            if not produced:
                outcome = None
        self._completions.put(_Done(part, record, key, outcome, started))

    @staticmethod
    def _follow_up(outcome: Emission, produced: bool) -> None:
        """What follows a new decision's flag event (shadow, evidence overlays): never blocks, never fails the
        event, which is decided and stored whatever happens here."""
        if outcome.follow_up is None:
            return
        try:
            outcome.follow_up(produced)
        except Exception:  # the event is done: a bug here is logged, not retried
            log.exception("worker: the follow-up of a decision failed")

    def _produce(self, record: Any, outcome: Emission) -> None:
        """Send until acknowledged: a broker outage only delays the event, never loses it."""
        assert self._producer is not None
        s = self.s
        incoming = dict(record.headers or [])
        trace = incoming.get("trace_id") or uuid.uuid4().hex.encode()
        key = outcome.key
        if outcome.kind == "flag":
            topic = s.kafka_flags_topic
            version = outcome.schema_version or self.s.flags_schema_version
            headers = [("schema_version", str(version).encode()), ("trace_id", trace)]
        else:  # the original key, value and headers: `dfguard dlq replay` re-publishes the record as it was
            topic, key = s.kafka_dlq_topic, record.key
            headers = [
                *list(record.headers or []),
                *outcome.headers,
                ("dfg-source-topic", record.topic.encode()),
                ("dfg-source-partition", str(record.partition).encode()),
                ("dfg-source-offset", str(record.offset).encode()),
            ]
        delay = s.worker_retry_backoff_seconds
        while True:
            try:
                self._producer.send(topic, key=key, value=outcome.value, headers=headers).get(
                    timeout=s.kafka_request_timeout_ms / 1000 * 2
                )
                return
            except KafkaError as exc:
                WORKER_RETRIES.labels(reason="kafka_produce").inc()
                log.warning("worker: producing to %s failed (%s); retrying in %.1f s", topic, exc, delay)
                if self.stop_event.wait(delay):
                    raise InterruptedError("stopping before the outcome was acknowledged") from exc
                delay = min(delay * 2, s.worker_retry_backoff_max_seconds)

    def _collect(self, block: bool, timeout: float = 0.0) -> bool:
        """Apply finished events; True if at least one was applied."""
        applied = False
        while True:
            try:
                done = self._completions.get(block=block and not applied, timeout=timeout or None)
            except queue.Empty:
                return applied
            applied = True
            self._finish(done)

    def _finish(self, done: _Done) -> None:
        part = done.part
        part.running.discard(done.key)
        outcome = done.outcome
        if outcome is None:  # stopping: leave this and everything after it uncommitted
            return
        if outcome.kind == "flag":  # acknowledged by the broker: counted even if the partition moved on
            EVENTS_PRODUCED.labels(topic=self.s.kafka_flags_topic, decision=outcome.decision or "").inc()
            WORKER_LAST_DECISION.set_to_current_time()
            if outcome.uploaded_at is not None:
                EVENT_LATENCY.observe(max(0.0, (datetime.now(UTC) - outcome.uploaded_at).total_seconds()))
        else:
            EVENTS_DEAD_LETTERED.labels(reason=outcome.reason or "unknown").inc()
        WORKER_PROCESSING.observe(time.monotonic() - done.started)
        if part.revoked:
            return
        part.buffered -= 1
        part.offsets.done(done.record.offset)
        waiting = part.waiting.get(done.key)
        if waiting:
            record = waiting.popleft()
            if not waiting:
                del part.waiting[done.key]
            if not self.stop_event.is_set():
                self._ready(part, done.key, record)

    def _commit(self, parts: set[TopicPartition] | None = None) -> None:
        assert self._consumer is not None
        offsets = {}
        for tp, part in self._parts.items():
            if parts is not None and tp not in parts:
                continue
            point = part.offsets.to_commit()
            if point is not None:
                offsets[tp] = OffsetAndMetadata(point, "", -1)
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets)
        except KafkaError as exc:  # the broker or the group is away: committed next time round
            WORKER_RETRIES.labels(reason="kafka_commit").inc()
            log.warning("worker: commit failed (%s); will retry", exc)
            return
        for tp, meta in offsets.items():
            self._parts[tp].offsets.committed(meta.offset)

    @property
    def _buffered(self) -> int:
        return sum(p.buffered for p in self._parts.values())

    def _flow_control(self) -> None:
        """Pause the partitions while the buffer is full or the worker is held; resume when neither. The loop
        never waits on the buffer (only a shutdown drain waits), so its size leaves max.poll.interval be."""
        assert self._consumer is not None
        limit = self.s.worker_max_buffered_events
        buffered = self._buffered
        WORKER_BUFFERED.set(buffered)
        if buffered >= limit:
            self._full = True
        elif buffered < limit // 2 + 1:
            self._full = False
        pause = self._full or self.health.held
        assigned = list(self._parts)
        if pause and not self._paused:
            self._consumer.pause(*assigned)
            self._paused = True
        elif not pause and self._paused:
            self._consumer.resume(*assigned)
            self._paused = False

    # --- rebalances and draining ----------------------------------------------------------------------------

    def _apply_rebalances(self) -> None:
        while True:
            try:
                change, tps = self._rebalances.get_nowait()
            except queue.Empty:
                return
            if change == "assigned":
                self._assign(tps)
            else:
                self._revoke(tps, commit=change == "revoked")

    def _unstall_rebalance(self) -> None:
        """Rejoin when a rebalance revoked our partitions and never assigned any (kafka-python 3.0 was seen
        to stall in a metadata-triggered rejoin: the member stays in the group with nothing assigned while
        the lag grows). After `worker_rebalance_stall_seconds` without an assignment the subscription is
        renewed, which makes a fresh join; counted in `dfguard_worker_rebalance_stalls_total`."""
        started = self._rebalancing_since
        if started is None or self._consumer is None:
            return
        if time.monotonic() - started < self.s.worker_rebalance_stall_seconds:
            return
        log.warning(
            "worker: no assignment %.0f s after a revocation; renewing the subscription",
            time.monotonic() - started,
        )
        REBALANCE_STALLS.inc()
        self._rebalancing_since = time.monotonic()  # the next renewal only after another full wait
        try:
            self._consumer.unsubscribe()
            self._consumer.subscribe([self.s.kafka_uploads_topic], listener=_Rebalance(self))
        except KafkaError as exc:
            log.warning("worker: renewing the subscription failed (%s); trying again later", exc)

    def _assign(self, assigned: set[TopicPartition]) -> None:
        """Take partitions on; one revoked in the same rebalance and given back keeps its state (its events
        in flight and done), so an eager rebalance that changes nothing for us costs nothing."""
        for tp in assigned:
            if tp not in self._parts:
                kept = self._handing_over.pop(tp) if tp in self._handing_over else None
                self._parts[tp] = kept or _Partition(tp)
        for part in self._handing_over.values():  # revoked and not given back: gone for good
            self._drop(part)
        self._handing_over.clear()
        self._rebalancing_since = None
        if self._paused and self._consumer is not None:
            self._consumer.resume(*assigned)
            self._paused = False  # the next step pauses them all again if still full or held
        log.info("worker: assigned %s", sorted(str(tp.partition) for tp in assigned))
        self._next_lag = 0.0
        self.ready.set()

    def _revoke(self, revoked: set[TopicPartition], *, commit: bool) -> None:
        """Give partitions up: commit what is done (unless the membership was lost).

        A revoked partition is held until the assignment that follows (an eager rebalance revokes everything
        and often gives it straight back). One that goes elsewhere, or is lost, is forgotten: events still
        running for it finish in their threads, their offsets are left to the next owner, which re-emits the
        stored decision (an identical flag event), so nothing is lost or contradicted."""
        log.info(
            "worker: partitions %s %s",
            "revoked" if commit else "lost",
            sorted(tp.partition for tp in revoked),
        )
        if commit:
            self._commit(revoked)
        if self._rebalancing_since is None:
            self._rebalancing_since = time.monotonic()
        for tp in revoked:
            part = self._parts.pop(tp, None)
            if part is None:
                continue
            if commit:
                self._handing_over[tp] = part
            else:  # membership lost: another member may own it already
                self._drop(part)
        if not commit:
            self.ready.clear()  # not a member until the next assignment

    def _drop(self, part: _Partition) -> None:
        """Stop tracking a partition that is no longer ours; completions for it are ignored from now on."""
        part.revoked = True
        part.waiting.clear()
        self._unqueue(part)
        self._forget_lag(part.tp)

    def _unqueue(self, part: _Partition) -> list[_Ready]:
        """Take a partition's records out of the fair queue (not started: left uncommitted, redelivered)."""
        with self._lock:
            return self._fair.remove(lambda item: item.part is part)

    def _drain(self, tps: set[TopicPartition], grace: float) -> None:
        """Let in-flight events of `tps` finish (no new ones start) for at most `grace` seconds."""
        for tp in tps:
            part = self._parts.get(tp)
            if part is not None:
                part.buffered -= sum(len(q) for q in part.waiting.values())  # redelivered later
                part.waiting.clear()
                queued = self._unqueue(part)
                part.buffered -= len(queued)
                part.running.difference_update(item.key for item in queued)
        deadline = time.monotonic() + grace
        while any(self._parts[tp].running for tp in tps if tp in self._parts):
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("worker: gave up waiting for in-flight events; they will be redelivered")
                return
            self._collect(block=True, timeout=min(left, 0.5))

    # --- lag ------------------------------------------------------------------------------------------------

    def _update_lag(self) -> None:
        assert self._consumer is not None
        self._next_lag = time.monotonic() + self.s.worker_lag_interval_seconds
        tps = list(self._parts)
        if not tps:
            return
        try:
            ends = self._consumer.end_offsets(tps)
            unknown = [tp for tp in tps if self._parts[tp].offsets.last_committed is None]
            starts = self._consumer.beginning_offsets(unknown) if unknown else {}
            for tp in unknown:
                committed = self._consumer.committed(tp)
                self._parts[tp].offsets.committed(committed if committed is not None else starts[tp])
        except KafkaError as exc:
            log.debug("worker: lag not refreshed: %s", exc)
            return
        for tp in tps:
            base = self._parts[tp].offsets.last_committed
            if base is not None and tp in ends:
                CONSUMER_LAG.labels(self.s.kafka_group_id, tp.topic, str(tp.partition)).set(
                    max(0, ends[tp] - base)
                )

    def _forget_lag(self, tp: TopicPartition) -> None:
        with contextlib.suppress(KeyError):
            CONSUMER_LAG.remove(self.s.kafka_group_id, tp.topic, str(tp.partition))
