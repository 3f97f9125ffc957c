"""Decisions, their audit trail and dedup lookups, behind one small class (SQLAlchemy Core/ORM, sync).

Writes are insert-or-return-existing on (tenant, video_id): whichever worker stores first wins, and every
other attempt (a redelivery, a second worker after a rebalance) gets the stored decision back and re-emits its
flag event verbatim. Only `dfguard rescore` changes a stored decision, as its next revision
(`revisions.py`): the row then holds the latest revision, which is what every read here returns. Flag events
are stored as the bytes emitted, in the schema version configured when stored (`NewDecision.schema_version`).
Thread-safe: one engine, a session per call.

The schema comes from Alembic migrations (`migrate.py`), brought to head (or, with `migrate=False`, checked)
before the first query. A `lazy` store touches the database only when first used, so a process can start while
the database is down and the store becomes usable when it comes back; until then every call raises a
`SQLAlchemyError`, which adapters report as `store_unavailable`.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, create_engine, event, insert, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.events import (
    FlagEvent,
    FlagsSchemaVersion,
    encode_flag_event,
    parse_flag_event,
    schema_version_of,
)
from service.fingerprint import match_fraction, to_signed, to_unsigned
from service.schemas import Decision, DecisionOrigin, DecisionRecord, ModelRef, UsedThresholds
from service.store import evidence, revisions
from service.store import migrate as migrations
from service.store.revisions import pictures_flagged
from service.store.tables import DecisionRow, FrameHashRow, ShadowRow

if TYPE_CHECKING:  # the value type only: the store does not load the scoring core
    from service.evidence.document import EvidenceDocument, EvidenceSubject, OverlayState, SensitivityMap
    from service.evidence.pictures import EvidencePictures
    from service.shadow import ShadowVerdict

__all__ = ["DecisionStore", "NewDecision", "StoredDecision", "brief_error", "engine_for"]

log = logging.getLogger("dfguard.store")


@dataclass(frozen=True)
class NewDecision:
    tenant: str
    origin: DecisionOrigin
    thresholds: UsedThresholds
    aggregation: str
    sha256: str | None
    flag: FlagEvent
    frame_hashes: Sequence[int] = ()
    source_uri: str | None = None  # the upload event's URI (worker decisions), for re-scoring
    schema_version: FlagsSchemaVersion = 2  # of the flag event stored, hence of every re-emission of it


@dataclass(frozen=True)
class StoredDecision:
    id: int
    tenant: str
    record: DecisionRecord
    flag_event_json: bytes  # exactly what was (or will be) produced to the flags topic
    schema_version: int = 2  # of `flag_event_json`: the Kafka header must name what the bytes are
    revision: int = 1  # the latest revision (the row always holds it)


def brief_error(exc: BaseException) -> str:
    """`Type: first line` of a database error, for logs and answers (SQLAlchemy's text runs to many lines and
    ends with a link)."""
    cause = getattr(exc, "orig", None) or exc
    first = (str(cause).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:300]


_CONNECT_TIMEOUT_SECONDS = 5  # PostgreSQL; a `connect_timeout` in the URL wins
_SQLITE_BUSY_SECONDS = 30


def _use_wal(cur: Any) -> None:
    """Switch the file to WAL (a persistent mode, so usually a no-op read).

    The switch needs an exclusive lock and SQLite answers `database is locked` at once, without the busy
    handler, while another connection holds the file (several processes opening a new database together),
    so it is retried here for as long as the busy timeout would have waited.
    """
    deadline = time.monotonic() + _SQLITE_BUSY_SECONDS
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def engine_for(url: str) -> Engine:
    """An engine for `url`: SQLite in WAL mode with a busy timeout; PostgreSQL pooled, connects bounded."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": _SQLITE_BUSY_SECONDS}
        )

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            _use_wal(cur)  # the gateway reads while the worker writes
            # WAL + NORMAL: a committed decision survives a crash of the process (not a power cut; a decision
            # lost to one is made again, since the offset is committed only after the decision is stored).
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # A bounded connect: an unreachable server must fail a readiness probe or a request, not hang it.
    connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": _CONNECT_TIMEOUT_SECONDS}
    return create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8, connect_args=connect_args)


def _stored(row: DecisionRow) -> StoredDecision:
    flag = parse_flag_event(row.flag_event)  # v1 or v2, whichever was configured when it was stored
    record = DecisionRecord(
        video_id=row.video_id,
        decision=flag.decision,
        score=row.score,
        reasons=list(row.reasons),
        origin=row.origin,
        model=ModelRef(name=row.model_name, version=row.model_version),
        thresholds=UsedThresholds(
            review=row.review_threshold,
            flag=row.flag_threshold,
            source=row.thresholds_source,
        ),
        aggregation=row.aggregation,
        sha256=row.sha256,
        source_event_id=row.source_event_id,
        flag_event_id=row.flag_event_id,
        timings_ms=dict(row.timings_ms),
        decided_at=flag.decided_at,
        audio=flag.audio,
    )
    return StoredDecision(
        row.id,
        row.tenant,
        record,
        row.flag_event.encode(),
        schema_version=schema_version_of(row.flag_event),
        revision=row.revision or 1,
    )


@dataclass(frozen=True)
class _Flagged:
    """A flagged video in the near-duplicate index: its frame hashes and their row ids (ascending)."""

    hashes: list[int]
    ids: list[int]


class DecisionStore:
    def __init__(self, url: str, *, migrate: bool = True, lazy: bool = False) -> None:
        self.engine = engine_for(url)
        self.migrate = migrate
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        # Near-duplicate index: flagged videos' hashes, read incrementally (new rows by id: a re-decision
        # flags anew with new rows, and lookups drop videos no longer flagged).
        self._flagged: dict[int, _Flagged] = {}
        self._flagged_upto = 0
        self._lock = threading.Lock()
        if not lazy:
            self.ensure_schema()

    @property
    def schema_ready(self) -> bool:
        return self._schema_ready

    def ensure_schema(self) -> None:
        """Upgrade the schema to head (or check it is there) once; raises a `SQLAlchemyError` while the
        database is unreachable or, without `migrate`, behind."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            if self.migrate:
                done = migrations.upgrade(self.engine)
                if done.before != done.after or done.stamped_legacy:
                    log.info(
                        "store schema upgraded",
                        extra={"from": done.before, "to": done.after, "adopted": done.stamped_legacy},
                    )
            else:
                migrations.check_current(self.engine)
            self._schema_ready = True

    def ping(self) -> None:
        """The store's health probe: one round trip (`SELECT 1`) after making sure of the schema; raises a
        `SQLAlchemyError` while the database does not answer (the worker holds on it, the gateway answers
        503 `store_unavailable`)."""
        self.ensure_schema()
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def close(self) -> None:
        self.engine.dispose()

    def get(self, tenant: str, video_id: str) -> StoredDecision | None:
        self.ensure_schema()
        with Session(self.engine) as s:
            row = s.scalar(
                select(DecisionRow).where(DecisionRow.tenant == tenant, DecisionRow.video_id == video_id)
            )
            return _stored(row) if row else None

    def find_exact(self, sha256: str, tenant: str) -> StoredDecision | None:
        """A scored decision of byte-identical media: this tenant's first if any, else any tenant's first."""
        self.ensure_schema()
        query = (
            select(DecisionRow)
            .where(DecisionRow.sha256 == sha256, DecisionRow.origin == "scored")
            .order_by(case((DecisionRow.tenant == tenant, 0), else_=1), DecisionRow.id)
            .limit(1)
        )
        with Session(self.engine) as s:
            row = s.scalar(query)
            return _stored(row) if row else None

    def find_near_flagged(
        self, hashes: Sequence[int], max_distance: int, min_fraction: float, *, exclude: int | None = None
    ) -> StoredDecision | None:
        """The best-matching scored-and-flagged video whose frames `hashes` nearly duplicate, if any.

        The in-memory index only grows; a video re-decided away from `flag` (`dfguard rescore`) is dropped
        from it here, when a lookup first meets it, after reading that its row is no longer a scored flag."""
        if not hashes:
            return None
        self.ensure_schema()
        index = self._refresh_flagged()
        matches = []
        for decision_id, candidate in index.items():
            if decision_id == exclude:  # a re-score of a flagged video must not match its own frames
                continue
            fraction = match_fraction(hashes, candidate.hashes, max_distance)
            if fraction >= min_fraction:
                matches.append((fraction, decision_id))
        for _, decision_id in sorted(matches, key=lambda m: (-m[0], m[1])):
            with Session(self.engine) as s:
                row = s.get(DecisionRow, decision_id)
                if row is not None and pictures_flagged(
                    row.decision, row.origin, row.score, row.flag_threshold
                ):
                    return _stored(row)
            self._forget(decision_id, index[decision_id].ids[-1])
        return None

    def _forget(self, decision_id: int, read_after: int) -> None:
        """Drop a video read as no longer flagged from the index: its hashes up to row id `read_after`.

        The row was read after the index held those hashes; rows with a higher id may have come in since
        (a re-decision flagged it again meanwhile and another lookup's refresh read them): they are newer than
        that read and stay."""
        with self._lock:
            entry = self._flagged.get(decision_id)
            if entry is None:
                return
            keep = [i for i, row_id in enumerate(entry.ids) if row_id > read_after]
            if keep:
                self._flagged[decision_id] = _Flagged(
                    [entry.hashes[i] for i in keep], [entry.ids[i] for i in keep]
                )
            else:
                del self._flagged[decision_id]

    def _refresh_flagged(self) -> dict[int, _Flagged]:
        """The index, with flagged hash rows stored since the last refresh added. Entries are replaced, never
        changed, so a caller's snapshot stays as it was taken."""
        with self._lock:
            with Session(self.engine) as s:
                rows = s.execute(
                    select(FrameHashRow.id, FrameHashRow.decision_id, FrameHashRow.hash)
                    .where(FrameHashRow.flagged.is_(True), FrameHashRow.id > self._flagged_upto)
                    .order_by(FrameHashRow.id)
                ).all()
            added: dict[int, _Flagged] = {}
            for row_id, decision_id, h in rows:
                entry = added.setdefault(decision_id, _Flagged([], []))
                entry.hashes.append(to_unsigned(h))
                entry.ids.append(row_id)
                self._flagged_upto = max(self._flagged_upto, row_id)
            for decision_id, new in added.items():
                old = self._flagged.get(decision_id)
                self._flagged[decision_id] = (
                    new if old is None else _Flagged([*old.hashes, *new.hashes], [*old.ids, *new.ids])
                )
            return dict(self._flagged)

    def put(self, new: NewDecision) -> tuple[StoredDecision, bool]:
        """Store `new` unless (tenant, video_id) already has a decision; returns the stored one and whether
        it was this call that stored it."""
        self.ensure_schema()
        flag = new.flag
        values = dict(
            tenant=new.tenant,
            video_id=flag.video_id,
            **revisions.verdict_columns(flag, new.origin, new.thresholds, new.aggregation),
            sha256=new.sha256,
            source_event_id=flag.source_event_id,
            flag_event_id=flag.event_id,
            timings_ms=flag.timings_ms.model_dump(),
            flag_event=encode_flag_event(flag, new.schema_version).decode(),
            decided_at=flag.decided_at,
            source_uri=new.source_uri,
            revision=None,
        )
        flagged = pictures_flagged(flag.decision, new.origin, flag.score, new.thresholds.flag)
        try:
            # Core, not the ORM unit of work: this runs once per event, viral reposts included.
            with self.engine.begin() as conn:
                row_id = conn.execute(
                    insert(DecisionRow).values(**values).returning(DecisionRow.id)
                ).scalar_one()
                if new.frame_hashes:
                    conn.execute(
                        insert(FrameHashRow),
                        [
                            {"decision_id": row_id, "flagged": flagged, "hash": to_signed(h)}
                            for h in new.frame_hashes
                        ],
                    )
            return _stored(DecisionRow(id=row_id, **values)), True
        except IntegrityError:
            existing = self.get(new.tenant, flag.video_id)
            if existing is None:  # pragma: no cover - a unique violation means the row exists
                raise
            return existing, False

    def put_shadow(self, verdict: ShadowVerdict) -> int:
        """Store a shadow ensemble's verdict beside the primary's (`shadow_results`); returns the row id.

        Never read back into a decision nor emitted: `dfguard models diff` compares the two arms from here.
        """
        self.ensure_schema()
        subject = verdict.subject
        values = dict(
            decision_id=subject.decision_id,
            source=subject.source,
            tenant=subject.tenant,
            video_id=subject.video_id,
            sha256=subject.sha256,
            primary_model_name=subject.primary_model.name,
            primary_model_version=subject.primary_model.version,
            primary_score=subject.primary_score,
            primary_decision=subject.primary_decision,
            shadow_model_name=verdict.model.name,
            shadow_model_version=verdict.model.version,
            shadow_score=verdict.score,
            shadow_decision=verdict.decision,
            shadow_review_threshold=verdict.thresholds.review,
            shadow_flag_threshold=verdict.thresholds.flag,
            created_at=datetime.now(UTC),
        )
        with self.engine.begin() as conn:
            row_id: int = conn.execute(
                insert(ShadowRow).values(**values).returning(ShadowRow.id)
            ).scalar_one()
        return row_id

    # --- re-decisions (`dfguard rescore`; the rules are in service/store/revisions.py) --------------------

    def candidates(self, selection: revisions.Selection) -> Iterator[revisions.Candidate]:
        """Stored decisions a re-score selects, oldest first (read a page at a time)."""
        self.ensure_schema()
        return revisions.candidates(self.engine, selection)

    def revise(
        self, decision_id: int, expected_revision: int, new: revisions.Redecision
    ) -> list[revisions.Revised]:
        """Store the next revision of a decision and of the exact reposts that reused it (one transaction);
        their flag events are pending until `mark_emitted`."""
        self.ensure_schema()
        return revisions.revise(self.engine, decision_id, expected_revision, new)

    def pending_emissions(self) -> list[revisions.PendingRevision]:
        """Stored revisions whose flag events the broker has not acknowledged, oldest first."""
        self.ensure_schema()
        return revisions.pending(self.engine)

    def lagging_original(self, repost_id: int) -> tuple[str, Decision] | None:
        """(video_id, decision) of the re-decided original an exact repost no longer follows, if so."""
        self.ensure_schema()
        return revisions.lagging_original(self.engine, repost_id)

    def follow_original(self, repost_id: int, expected_revision: int) -> list[revisions.Revised]:
        """Store the next revision of an exact repost that lags its original (its events pending)."""
        self.ensure_schema()
        return revisions.follow_original(self.engine, repost_id, expected_revision)

    def pending_count(self) -> int:
        """How many stored revisions wait for the broker's acknowledgement (`dfguard_revisions_pending`)."""
        self.ensure_schema()
        return revisions.count_pending(self.engine)

    def drain_pending(self, produce: Callable[[list[revisions.PendingRevision]], None]) -> int:
        """Produce the pending revisions with `produce` (returns once acknowledged, or raises) and mark them
        emitted, claiming rows so that concurrent drainers do not share them; returns how many."""
        self.ensure_schema()
        return revisions.drain(self.engine, produce)

    def mark_emitted(self, revision_ids: Sequence[int]) -> None:
        self.ensure_schema()
        revisions.mark_emitted(self.engine, revision_ids)

    def revisions(self, tenant: str, video_id: str) -> list[FlagEvent]:
        """A video's flag events, one per revision, oldest first."""
        self.ensure_schema()
        return revisions.revisions_of(self.engine, tenant, video_id)

    # --- evidence pages (retention, quota and erasure; the rules are in service/store/evidence.py) ---------

    def put_evidence(
        self,
        document: EvidenceDocument,
        pictures: EvidencePictures,
        *,
        quota_bytes: int,
        now: datetime | None = None,
    ) -> int | None:
        """Store (or replace) a subject's evidence within its tenant's quota, evicting the tenant's oldest;
        returns its id, or None when it alone exceeds the quota."""
        self.ensure_schema()
        return evidence.put(
            self.engine, document, pictures, quota_bytes=quota_bytes, now=now or datetime.now(UTC)
        )

    def get_evidence(
        self, tenant: str, subject: EvidenceSubject, subject_id: str, *, now: datetime | None = None
    ) -> evidence.StoredEvidence | None:
        """The tenant's evidence of a decision (video id) or job (job id), unless absent or expired."""
        self.ensure_schema()
        return evidence.get(self.engine, tenant, subject, subject_id, now=now or datetime.now(UTC))

    def set_evidence_overlays(
        self,
        evidence_id: int,
        state: OverlayState,
        sensitivity: Sequence[SensitivityMap],
        overlays: Sequence[bytes],
        *,
        now: datetime | None = None,
        quota_bytes: int | None = None,
    ) -> OverlayState | None:
        """Store an item's overlay pictures and sensitivity maps, within the tenant's quota when given; the
        state stored (`skipped`: over the quota), or None if the item is gone meanwhile."""
        self.ensure_schema()
        return evidence.set_overlays(
            self.engine,
            evidence_id,
            state,
            sensitivity,
            overlays,
            now=now or datetime.now(UTC),
            quota_bytes=quota_bytes,
        )

    def evidence_expiry(
        self, tenant: str, subject: EvidenceSubject, subject_id: str, *, now: datetime | None = None
    ) -> datetime | None:
        """When a subject's evidence expires; None if there is none (or it expired)."""
        self.ensure_schema()
        return evidence.expiry(self.engine, tenant, subject, subject_id, now=now or datetime.now(UTC))

    def erase_evidence(self, tenant: str, subject: EvidenceSubject, subject_id: str) -> bool:
        """Delete a subject's evidence now (erasure); True if there was any."""
        self.ensure_schema()
        return evidence.erase(self.engine, tenant, subject, subject_id)

    def purge_evidence(self, *, now: datetime | None = None) -> int:
        """Delete all evidence past its retention (`expires_at <= now`); returns how many items."""
        self.ensure_schema()
        return evidence.purge(self.engine, now=now or datetime.now(UTC))

    def evidence_bytes(self) -> dict[str, int]:
        """Evidence bytes stored per tenant (`dfguard_evidence_stored_bytes`)."""
        self.ensure_schema()
        return evidence.stored_bytes(self.engine)
