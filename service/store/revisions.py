"""Re-decisions of stored decisions (`dfguard rescore`): revisions, their history, and the outbox of events.

A video's `decisions` row always holds its latest revision, so everything that reads a decision (a
redelivered upload, `GET /v1/decisions/...`, exact-repost reuse, the near-duplicate index) follows a
re-decision without knowing about revisions. `decision_revisions` keeps every revision of a re-decided video
(revision 1 is copied in at the first re-decision) and is the outbox: a revision's flag event is stored in
the same transaction as the decision it carries, with `emitted_at` null until the broker acknowledged it, so
a crash between the two leaves the event to produce (`pending`). Every worker drains that outbox at start
and every `DFG_WORKER_OUTBOX_INTERVAL_SECONDS` (`drain`), and so does every `dfguard rescore` run: a revision
stored and not yet acknowledged is produced by the next pass of either (until then: stored, not heard of).

One `revise` is one transaction: the video's new revision, the exact reposts that reused its verdict
(`duplicate_of:<video_id>` in its tenant, `duplicate` in others, same sha256) as their own new revisions,
and its frame hashes' `flagged` mark (newly flagged hashes as new rows, so the incremental near-duplicate
index of every process sees them; lookups drop candidates that are no longer flagged).
A concurrent re-decision of the same video loses on the `(decision_id, revision)` unique key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, delete, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.events import (
    FlagAudio,
    FlagEvent,
    FlagFrame,
    FlagTimings,
    encode_flag_event,
    flag_event_id,
    parse_flag_event,
)
from service.fingerprint import to_signed
from service.schemas import Decision, DecisionOrigin, ModelRef, UsedThresholds
from service.store.tables import DecisionRevisionRow, DecisionRow, FrameHashRow

__all__ = [
    "Candidate",
    "PendingRevision",
    "Redecision",
    "Revised",
    "Selection",
    "StaleRevision",
    "candidates",
    "count_pending",
    "drain",
    "follow_original",
    "lagging_original",
    "mark_emitted",
    "pending",
    "pictures_flagged",
    "revise",
    "revisions_of",
    "verdict_columns",
]


class StaleRevision(RuntimeError):
    """The decision moved on (another re-score revised it) since it was read: re-read and decide again."""


@dataclass(frozen=True)
class Selection:
    """Which stored decisions to re-decide; empty fields select everything."""

    since: datetime | None = None
    until: datetime | None = None
    decisions: frozenset[Decision] = frozenset()
    model_name: str | None = None
    model_version: str | None = None
    tenant: str | None = None
    limit: int | None = None
    after_id: int | None = None  # resume cursor: only decisions with a higher id (the report's `last_id`)


@dataclass(frozen=True)
class Candidate:
    """A stored decision as `dfguard rescore` needs it."""

    id: int
    tenant: str
    video_id: str
    revision: int
    decision: Decision
    origin: DecisionOrigin
    model: ModelRef
    thresholds: UsedThresholds
    aggregation: str
    sha256: str | None
    source_uri: str | None


def pictures_flagged(decision: str, origin: str, score: float | None, flag_threshold: float) -> bool:
    """Whether a decision flagged its pictures: a scored flag whose faces' score reached the flag threshold.
    Only those feed the near-duplicate index: a clip flagged for a cloned voice alone must not flag re-uploads
    of the same pictures with their real voice."""
    return decision == "flag" and origin == "scored" and score is not None and score >= flag_threshold


@dataclass(frozen=True)
class Redecision:
    """What a re-decision found (the video's own new values; ids, revision and times are the store's)."""

    decision: Decision
    score: float | None
    reasons: list[str]
    origin: DecisionOrigin
    model: ModelRef
    thresholds: UsedThresholds
    aggregation: str
    top_frames: list[FlagFrame]
    timings: FlagTimings
    frame_hashes: Sequence[int] | None = None  # None: keep the stored hashes (only their mark follows)
    audio: FlagAudio | None = None


@dataclass(frozen=True)
class Revised:
    """A revision `revise` stored (its event not produced yet)."""

    id: int  # of the decision_revisions row
    decision_id: int
    tenant: str
    video_id: str
    event: FlagEvent
    value: bytes


@dataclass(frozen=True)
class PendingRevision:
    """A stored revision whose flag event the broker has not acknowledged yet."""

    id: int
    tenant: str
    video_id: str
    revision: int
    value: bytes


_CANDIDATE_COLUMNS = (
    DecisionRow.id,
    DecisionRow.tenant,
    DecisionRow.video_id,
    DecisionRow.revision,
    DecisionRow.decision,
    DecisionRow.origin,
    DecisionRow.model_name,
    DecisionRow.model_version,
    DecisionRow.review_threshold,
    DecisionRow.flag_threshold,
    DecisionRow.thresholds_source,
    DecisionRow.aggregation,
    DecisionRow.sha256,
    DecisionRow.source_uri,
)


def candidates(engine: Engine, sel: Selection, *, page: int = 500) -> Iterator[Candidate]:
    """Stored decisions matching `sel`, oldest (lowest id) first, read a page at a time by id.

    Only the columns a re-decision needs (not the flag event text), each page in a short read of its own,
    so a large table is neither loaded at once nor held in one long read while revisions are written."""
    left = sel.limit
    after = sel.after_id or 0
    while left is None or left > 0:
        size = page if left is None else min(page, left)
        rows = _candidate_page(engine, sel, after, size)
        yield from rows
        if len(rows) < size:
            return
        after = rows[-1].id
        if left is not None:
            left -= len(rows)


def _candidate_page(engine: Engine, sel: Selection, after: int, size: int) -> list[Candidate]:
    q = select(*_CANDIDATE_COLUMNS).where(DecisionRow.id > after).order_by(DecisionRow.id).limit(size)
    if sel.since is not None:
        q = q.where(DecisionRow.decided_at >= sel.since)
    if sel.until is not None:
        q = q.where(DecisionRow.decided_at < sel.until)
    if sel.decisions:
        q = q.where(DecisionRow.decision.in_(sorted(sel.decisions)))
    if sel.model_name is not None:
        q = q.where(DecisionRow.model_name == sel.model_name)
    if sel.model_version is not None:
        q = q.where(DecisionRow.model_version == sel.model_version)
    if sel.tenant is not None:
        q = q.where(DecisionRow.tenant == sel.tenant)
    with engine.connect() as conn:
        rows = conn.execute(q).mappings().all()
    return [
        Candidate(
            id=r["id"],
            tenant=r["tenant"],
            video_id=r["video_id"],
            revision=r["revision"] or 1,
            decision=r["decision"],
            origin=r["origin"],
            model=ModelRef(name=r["model_name"], version=r["model_version"]),
            thresholds=UsedThresholds(
                review=r["review_threshold"], flag=r["flag_threshold"], source=r["thresholds_source"]
            ),
            aggregation=r["aggregation"],
            sha256=r["sha256"],
            source_uri=r["source_uri"],
        )
        for r in rows
    ]


def revise(engine: Engine, decision_id: int, expected_revision: int, new: Redecision) -> list[Revised]:
    """Store the next revision of decision `decision_id` and of the exact reposts that reused its verdict,
    in one transaction; returns them, the video's own first.

    Raises:
        StaleRevision: the decision is no longer at `expected_revision`, or another re-score stored the
            same revision first.
        IntegrityError: any other constraint violation (a bug or a schema problem, not a lost race).
    """
    try:
        return _revise(engine, decision_id, expected_revision, new)
    except IntegrityError as exc:
        if not _is_revision_conflict(exc):
            raise
        raise StaleRevision(
            f"decision {decision_id}: revision {expected_revision + 1} exists already"
        ) from exc


_REVISION_KEY = "uq_decision_revisions_decision_revision"


def _is_revision_conflict(exc: IntegrityError) -> bool:
    """Whether `exc` is the `(decision_id, revision)` unique key: a concurrent run stored that revision first.

    PostgreSQL names the constraint; SQLite names the columns in its message."""
    diag = getattr(exc.orig, "diag", None)
    constraint = getattr(diag, "constraint_name", None)
    if constraint is not None:
        return bool(constraint == _REVISION_KEY)
    message = str(exc.orig)
    return "UNIQUE constraint failed: decision_revisions.decision_id, decision_revisions.revision" in message


def _locked_at(s: Session, decision_id: int, expected_revision: int) -> DecisionRow:
    """The decision's row, locked for this transaction; `StaleRevision` unless at `expected_revision`."""
    row = s.scalars(select(DecisionRow).where(DecisionRow.id == decision_id).with_for_update()).one_or_none()
    if row is None or (row.revision or 1) != expected_revision:
        raise StaleRevision(f"decision {decision_id} is no longer at revision {expected_revision}")
    return row


def verdict_columns(
    event: FlagEvent, origin: DecisionOrigin, thresholds: UsedThresholds, aggregation: str
) -> dict[str, Any]:
    """The verdict columns `decisions` and `decision_revisions` both carry, from the flag event stating it."""
    return dict(
        decision=event.decision,
        score=event.score,
        reasons=list(event.reasons),
        origin=origin,
        model_name=event.model.name,
        model_version=event.model.version,
        review_threshold=thresholds.review,
        flag_threshold=thresholds.flag,
        thresholds_source=thresholds.source,
        aggregation=aggregation,
    )


def _revise(engine: Engine, decision_id: int, expected_revision: int, new: Redecision) -> list[Revised]:
    now = datetime.now(UTC)
    with Session(engine) as s, s.begin():
        row = _locked_at(s, decision_id, expected_revision)
        was_flagged = pictures_flagged(row.decision, row.origin, row.score, row.flag_threshold)
        reposts = _reposts(s, row) if row.sha256 is not None else []
        out = [_next_revision(s, row, new, now)]
        flagged = pictures_flagged(new.decision, new.origin, new.score, new.thresholds.flag)
        _mark_hashes(s, decision_id, flagged, was_flagged, new.frame_hashes)
        if reposts:
            for repost in reposts:
                mark = repost.reasons[0]
                follows = Redecision(
                    decision=new.decision,
                    score=new.score,
                    reasons=[mark, *new.reasons],
                    origin="duplicate",
                    model=new.model,
                    thresholds=new.thresholds,
                    aggregation=new.aggregation,
                    top_frames=new.top_frames,
                    timings=FlagTimings.model_validate(repost.timings_ms),  # no work was redone for it
                    audio=new.audio,
                )
                out.append(_next_revision(s, repost, follows, now))
    return out


def _original_of(s: Session, repost: DecisionRow) -> DecisionRow | None:
    """The scored decision an exact repost reused (as the worker chose it: `duplicate_of:<video_id>` in the
    repost's tenant, `duplicate` the first of another tenant's with the same sha256)."""
    if repost.sha256 is None or not repost.reasons:
        return None
    mark = repost.reasons[0]
    q = select(DecisionRow).where(DecisionRow.sha256 == repost.sha256, DecisionRow.origin == "scored")
    if mark.startswith("duplicate_of:"):
        q = q.where(DecisionRow.tenant == repost.tenant, DecisionRow.video_id == mark.split(":", 1)[1])
    elif mark == "duplicate":
        q = q.where(DecisionRow.tenant != repost.tenant)
    else:
        return None
    return s.scalars(q.order_by(DecisionRow.id).limit(1)).one_or_none()


def lagging_original(engine: Engine, repost_id: int) -> tuple[str, Decision] | None:
    """(video_id, decision) of the original an exact repost reused, if the repost's decision differs from it:
    a live worker stored the repost with the verdict it read just before a re-decision of the original
    committed. None when the repost follows its original (or it has none)."""
    with Session(engine) as s:
        repost = s.get(DecisionRow, repost_id)
        original = _original_of(s, repost) if repost is not None else None
        if repost is None or original is None or original.decision == repost.decision:
            return None
        return original.video_id, original.decision  # type: ignore[return-value]


def follow_original(engine: Engine, repost_id: int, expected_revision: int) -> list[Revised]:
    """Store the next revision of an exact repost that lags its re-decided original (`lagging_original`):
    the original's current verdict, as `revise` gives the reposts it finds. [] if it no longer lags.

    Raises:
        StaleRevision: the repost is no longer at `expected_revision`."""
    now = datetime.now(UTC)
    with Session(engine) as s, s.begin():
        repost = _locked_at(s, repost_id, expected_revision)
        original = _original_of(s, repost)
        if original is None or original.decision == repost.decision:
            return []
        source = parse_flag_event(original.flag_event)
        follows = Redecision(
            decision=source.decision,
            score=source.score,
            reasons=[repost.reasons[0], *source.reasons],
            origin="duplicate",
            model=source.model,
            thresholds=UsedThresholds(
                review=original.review_threshold,
                flag=original.flag_threshold,
                source=original.thresholds_source,
            ),
            aggregation=original.aggregation,
            top_frames=list(source.top_frames),
            timings=FlagTimings.model_validate(repost.timings_ms),  # no work was redone for it
            audio=source.audio,
        )
        return [_next_revision(s, repost, follows, now)]


def _reposts(s: Session, original: DecisionRow) -> list[DecisionRow]:
    """Exact reposts that reused `original`'s verdict (how the worker marks them: `duplicate_of:<video_id>`
    in its tenant, `duplicate` in others)."""
    rows = s.scalars(
        select(DecisionRow)
        .where(
            DecisionRow.sha256 == original.sha256,
            DecisionRow.origin == "duplicate",
            DecisionRow.id != original.id,
        )
        .order_by(DecisionRow.id)
        .with_for_update()
    ).all()
    own_mark = f"duplicate_of:{original.video_id}"
    return [
        r
        for r in rows
        if r.reasons
        and (r.reasons[0] == own_mark if r.tenant == original.tenant else r.reasons[0] == "duplicate")
    ]


def _next_revision(s: Session, row: DecisionRow, new: Redecision, now: datetime) -> Revised:
    """Insert `row`'s next revision (and its revision 1, at the first re-decision) and make it the row's."""
    current = row.revision or 1
    if current == 1:
        _copy_first(s, row)
    revision = current + 1
    event_row_id = row.id
    event = FlagEvent(
        event_id=flag_event_id(row.tenant, row.video_id, revision),
        video_id=row.video_id,
        tenant=row.tenant,
        decision=new.decision,
        score=new.score,
        reasons=new.reasons,
        model=new.model,
        top_frames=new.top_frames,
        timings_ms=new.timings,
        decided_at=now,
        source_event_id=row.source_event_id,
        revision=revision,
        supersedes=row.flag_event_id,
        audio=new.audio,
    )
    value = encode_flag_event(event, 2)  # revisions exist only in v2
    values = dict(
        **verdict_columns(event, new.origin, new.thresholds, new.aggregation),
        flag_event=value.decode(),
        decided_at=now,
    )
    revision_id: int = s.execute(
        insert(DecisionRevisionRow)
        .values(
            decision_id=event_row_id,
            revision=revision,
            flag_event_id=event.event_id,
            supersedes=event.supersedes,
            emitted_at=None,
            **values,
        )
        .returning(DecisionRevisionRow.id)
    ).scalar_one()
    s.execute(
        update(DecisionRow)
        .where(DecisionRow.id == event_row_id)
        .values(
            revision=revision,
            flag_event_id=event.event_id,
            timings_ms=new.timings.model_dump(),
            **values,
        )
    )
    return Revised(revision_id, event_row_id, event.tenant, event.video_id, event, value)


def _copy_first(s: Session, row: DecisionRow) -> None:
    """Revision 1 into the history, as the worker stored (and emitted) it."""
    s.execute(
        insert(DecisionRevisionRow).values(
            decision_id=row.id,
            revision=1,
            flag_event_id=row.flag_event_id,
            supersedes=None,
            decision=row.decision,
            score=row.score,
            reasons=list(row.reasons),
            origin=row.origin,
            model_name=row.model_name,
            model_version=row.model_version,
            review_threshold=row.review_threshold,
            flag_threshold=row.flag_threshold,
            thresholds_source=row.thresholds_source,
            aggregation=row.aggregation,
            flag_event=row.flag_event,
            decided_at=row.decided_at,
            emitted_at=row.decided_at,  # the worker produced it once stored; not tracked more closely
        )
    )


def _mark_hashes(
    s: Session, decision_id: int, flagged: bool, was_flagged: bool, replace: Sequence[int] | None
) -> None:
    """Make the decision's frame hashes carry its new `flagged` mark (or replace them).

    The near-duplicate index of every process reads flagged rows by increasing id, so newly flagged hashes
    must be rows with ids above any it has seen: they are inserted anew *before* the old rows are deleted
    (SQLite reuses the highest rowid once it is deleted; inserting first keeps ids increasing). Unflagging
    updates in place: lookups drop a video whose row is no longer a scored flag."""
    if replace is None and flagged == was_flagged:
        return
    where = FrameHashRow.decision_id == decision_id
    if replace is None and not flagged:
        s.execute(update(FrameHashRow).where(where).values(flagged=False))
        return
    old = s.execute(select(FrameHashRow.id, FrameHashRow.hash).where(where).order_by(FrameHashRow.id)).all()
    hashes = [int(h) for _, h in old] if replace is None else [to_signed(h) for h in replace]
    if hashes:
        s.execute(
            insert(FrameHashRow),
            [{"decision_id": decision_id, "flagged": flagged, "hash": h} for h in hashes],
        )
    if old:
        s.execute(delete(FrameHashRow).where(FrameHashRow.id.in_([i for i, _ in old])))


def _pending_query(after: int = 0) -> Select[int, str, str, int, str]:
    """Revisions whose flag event is not acknowledged yet, past row id `after`, oldest first."""
    return (
        select(
            DecisionRevisionRow.id,
            DecisionRow.tenant,
            DecisionRow.video_id,
            DecisionRevisionRow.revision,
            DecisionRevisionRow.flag_event,
        )
        .join(DecisionRow, DecisionRow.id == DecisionRevisionRow.decision_id)
        .where(DecisionRevisionRow.emitted_at.is_(None), DecisionRevisionRow.id > after)
        .order_by(DecisionRevisionRow.id)
    )


def pending(engine: Engine) -> list[PendingRevision]:
    """Revisions whose flag event is not acknowledged yet, in the order they were stored."""
    q = _pending_query()
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    return [PendingRevision(i, t, v, n, text.encode()) for i, t, v, n, text in rows]


def count_pending(engine: Engine) -> int:
    """How many stored revisions wait for the broker's acknowledgement of their flag event."""
    q = select(func.count()).select_from(DecisionRevisionRow).where(DecisionRevisionRow.emitted_at.is_(None))
    with engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def drain(engine: Engine, produce: Callable[[list[PendingRevision]], None], *, batch: int = 200) -> int:
    """Produce every pending revision with `produce` (which returns once the broker acknowledged all it was
    given, or raises) and mark them emitted; returns how many.

    Each batch is claimed in a transaction held across `produce`: on PostgreSQL `FOR UPDATE SKIP LOCKED`, so
    concurrent drainers (workers, a rescore run) take disjoint rows; SQLite has one writer anyway. A failure
    in `produce` rolls the batch back: it stays pending for the next pass (maybe produced twice, never lost).
    """
    done = 0
    after = 0
    while True:
        q = _pending_query(after).limit(batch).with_for_update(skip_locked=True, of=DecisionRevisionRow)
        with engine.begin() as conn:
            claimed = [PendingRevision(i, t, v, n, text.encode()) for i, t, v, n, text in conn.execute(q)]
            if not claimed:
                return done
            produce(claimed)
            conn.execute(
                update(DecisionRevisionRow)
                .where(DecisionRevisionRow.id.in_([p.id for p in claimed]))
                .values(emitted_at=datetime.now(UTC))
            )
        done += len(claimed)
        after = claimed[-1].id


def mark_emitted(engine: Engine, revision_ids: Sequence[int]) -> None:
    """Record that the broker acknowledged these revisions' flag events."""
    if not revision_ids:
        return
    with engine.begin() as conn:
        conn.execute(
            update(DecisionRevisionRow)
            .where(DecisionRevisionRow.id.in_(list(revision_ids)), DecisionRevisionRow.emitted_at.is_(None))
            .values(emitted_at=datetime.now(UTC))
        )


def revisions_of(engine: Engine, tenant: str, video_id: str) -> list[FlagEvent]:
    """Every stored revision of a video's decision, oldest first (only revision 1 if never re-decided)."""
    with engine.connect() as conn:
        row = conn.execute(
            select(DecisionRow.id, DecisionRow.flag_event).where(
                DecisionRow.tenant == tenant, DecisionRow.video_id == video_id
            )
        ).one_or_none()
        if row is None:
            return []
        history = conn.execute(
            select(DecisionRevisionRow.flag_event)
            .where(DecisionRevisionRow.decision_id == row.id)
            .order_by(DecisionRevisionRow.revision)
        ).scalars()
        texts = list(history) or [row.flag_event]
    return [parse_flag_event(t) for t in texts]
