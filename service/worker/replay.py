"""`dfguard dlq replay`: re-publish dead-lettered records to the uploads topic, after the fault is fixed.

Each selected record goes back with its original key, value and headers; the `dfg-*` headers the worker added
are stripped and `dfg-replay-count` (times replayed, carried through later dead-lettering) is set. A record
already replayed `DFG_DLQ_MAX_REPLAYS` times is refused and reported, so a poison event cannot cycle forever.

Selection: error codes (default: the transient and dependency faults, by the record's `dfg-error-fault`
header, or for records without one by `service.errors`' codes of those faults), a time window on the DLQ
record's timestamp, a DLQ partition and offset range. Progress is a consumer group on the DLQ topic: the
records read are committed once their replays are acknowledged (acks=all), so a rerun starts after them and
replays nothing twice. Records a filter skipped are passed as well (use another `--group` to select
differently over the same range). Replaying twice anyway (a crash between publish and commit) is harmless:
the store's first-wins rule makes the worker re-emit the decision already stored.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer
from kafka.structs import OffsetAndMetadata, TopicPartition
from pydantic import BaseModel, Field

from service.config import Settings
from service.errors import ERRORS, Fault
from service.worker.runner import durable_producer

__all__ = ["REPLAY_COUNT_HEADER", "ReplayFilter", "ReplayReport", "replay", "replay_headers"]

log = logging.getLogger(__name__)

REPLAY_COUNT_HEADER = "dfg-replay-count"
_REPLAYABLE_FAULTS = {Fault.TRANSIENT, Fault.DEPENDENCY}
# For records dead-lettered before the fault header existed: every code some transient/dependency class has.
_REPLAYABLE_CODES = frozenset(cls.code for cls in ERRORS if cls.fault in _REPLAYABLE_FAULTS)
_LISTED = 1000  # records listed by name in a report (the counts are always complete)


def _when(text: str | None) -> datetime | None:
    if text is None:
        return None
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


class ReplayFilter(BaseModel):
    """Which DLQ records to replay; empty fields select everything (codes: the replayable faults)."""

    codes: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    partition: int | None = None
    from_offset: int | None = None
    to_offset: int | None = None

    @classmethod
    def from_args(
        cls,
        *,
        codes: list[str] | None = None,
        since: str | None = None,
        until: str | None = None,
        partition: int | None = None,
        from_offset: int | None = None,
        to_offset: int | None = None,
    ) -> ReplayFilter:
        return cls(
            codes=frozenset(codes or ()),
            since=_when(since),
            until=_when(until),
            partition=partition,
            from_offset=from_offset,
            to_offset=to_offset,
        )

    def skip_reason(
        self, partition: int, offset: int, timestamp_ms: int, headers: dict[str, bytes]
    ) -> str | None:
        """Why a record is not selected (a report bucket), or None to replay it."""
        if self.partition is not None and partition != self.partition:
            return "partition"
        if (self.from_offset is not None and offset < self.from_offset) or (
            self.to_offset is not None and offset > self.to_offset
        ):
            return "offset_range"
        at = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
        if (self.since is not None and at < self.since) or (self.until is not None and at >= self.until):
            return "time_window"
        code = headers.get("dfg-error-code", b"").decode(errors="replace")
        if self.codes:
            return None if code in self.codes else f"code:{code or 'none'}"
        fault = headers.get("dfg-error-fault")
        if fault is not None:
            replayable = fault.decode(errors="replace") in _REPLAYABLE_FAULTS
        else:
            replayable = code in _REPLAYABLE_CODES
        return None if replayable else f"code:{code or 'none'}"


class ReplayedRecord(BaseModel):
    partition: int
    offset: int
    key: str | None
    code: str
    replays: int = Field(description="Times replayed before this run.")


class ReplayReport(BaseModel):
    dlq_topic: str
    uploads_topic: str
    group: str
    dry_run: bool
    scanned: int = 0
    replayed: int = Field(0, description="Re-published (dry run: would be).")
    skipped: dict[str, int] = Field(default_factory=dict, description="Not selected, by reason.")
    refused: list[ReplayedRecord] = Field(
        default_factory=list, description="Already replayed DFG_DLQ_MAX_REPLAYS times: left in the DLQ."
    )
    records: list[ReplayedRecord] = Field(
        default_factory=list, description=f"The replayed records (the first {_LISTED})."
    )
    complete: bool = Field(True, description="Every partition was read to its end offset at the start.")


def replay_headers(headers: list[tuple[str, bytes]], replays: int) -> list[tuple[str, bytes]]:
    """The original headers without the worker's `dfg-*` ones, plus the new replay count."""
    kept = [(k, v) for k, v in headers if not k.startswith("dfg-")]
    return [*kept, (REPLAY_COUNT_HEADER, str(replays + 1).encode())]


def _replays(headers: dict[str, bytes]) -> int:
    try:
        return int(headers.get(REPLAY_COUNT_HEADER, b"0"))
    except ValueError:
        return 0


def replay(
    settings: Settings,
    selection: ReplayFilter | None = None,
    *,
    dry_run: bool = False,
    group: str | None = None,
) -> ReplayReport:
    """Replay the selected DLQ records from the group's position up to the end offsets at the start."""
    s = settings
    selection = selection or ReplayFilter()
    group = group or s.dlq_replay_group_id
    report = ReplayReport(
        dlq_topic=s.kafka_dlq_topic, uploads_topic=s.kafka_uploads_topic, group=group, dry_run=dry_run
    )
    servers = s.kafka_bootstrap_servers.split(",")
    consumer = KafkaConsumer(
        bootstrap_servers=servers,
        client_id=f"{s.kafka_client_id}-dlq-replay",
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=s.kafka_request_timeout_ms + 5000,
    )
    producer = None
    if not dry_run:
        producer = durable_producer(s, "dlq-replay")
    skipped: Counter[str] = Counter()
    try:
        parts = consumer.partitions_for_topic(s.kafka_dlq_topic) or set()
        tps = [TopicPartition(s.kafka_dlq_topic, p) for p in sorted(parts)]
        if selection.partition is not None:
            tps = [tp for tp in tps if tp.partition == selection.partition]
        if not tps:
            return report
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        starts = consumer.beginning_offsets(tps)
        left = {}
        for tp in tps:
            position = consumer.committed(tp)
            position = starts[tp] if position is None else max(position, starts[tp])
            consumer.seek(tp, position)
            if position < ends[tp]:
                left[tp] = ends[tp]
        idle_deadline = time.monotonic() + 2 * s.kafka_request_timeout_ms / 1000
        while left:
            batches = consumer.poll(timeout_ms=500)
            if not batches:
                if time.monotonic() > idle_deadline:
                    log.warning("dlq replay: no records for a while; stopping before the end offsets")
                    report.complete = False
                    break
                continue
            idle_deadline = time.monotonic() + 2 * s.kafka_request_timeout_ms / 1000
            sent: list[Any] = []
            done: dict[TopicPartition, int] = {}
            for tp, records in batches.items():
                for record in records:
                    if tp not in left or record.offset >= left[tp]:
                        break  # past the end offset of the start: left for the next run
                    report.scanned += 1
                    done[tp] = record.offset + 1
                    headers = dict(record.headers or [])
                    why = selection.skip_reason(tp.partition, record.offset, record.timestamp, headers)
                    if why is not None:
                        skipped[why] += 1
                        continue
                    item = ReplayedRecord(
                        partition=tp.partition,
                        offset=record.offset,
                        key=record.key.decode(errors="replace") if record.key is not None else None,
                        code=headers.get("dfg-error-code", b"").decode(errors="replace"),
                        replays=_replays(headers),
                    )
                    if item.replays >= s.dlq_max_replays:
                        report.refused.append(item)
                        continue
                    report.replayed += 1
                    if len(report.records) < _LISTED:
                        report.records.append(item)
                    if producer is not None:
                        value_headers = replay_headers(list(record.headers or []), item.replays)
                        future = producer.send(
                            s.kafka_uploads_topic, key=record.key, value=record.value, headers=value_headers
                        )
                        sent.append(future)
            for future in sent:  # every replay acknowledged before the progress moves past it
                future.get(timeout=2 * s.kafka_request_timeout_ms / 1000)
            for tp, position in done.items():
                if position >= left.get(tp, 0):
                    left.pop(tp, None)
                    consumer.pause(tp)
            if not dry_run and done:
                consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in done.items()})
        report.skipped = dict(sorted(skipped.items()))
        for r in report.refused:
            log.warning(
                "dlq replay: refused %s/%d (key %s, %s): already replayed %d times (DFG_DLQ_MAX_REPLAYS)",
                s.kafka_dlq_topic,
                r.offset,
                r.key,
                r.code,
                r.replays,
            )
        return report
    finally:
        if producer is not None:
            producer.close(timeout=10)
        consumer.close(autocommit=False)
