"""Evidence pages in the decision store: one document and its pictures per (tenant, subject, subject_id).

An item is an `EvidenceDocument` (JSON, `evidence`) and its JPEGs (`evidence_pictures`, one blob a row: pods
have read-only file systems). It lives until the first of:
- its `expires_at` (retention): `get` treats it as absent from that instant, and `purge` deletes it;
- an erasure (`erase`, `DELETE /v1/decisions/{video_id}/evidence`);
- a re-capture of the same subject (`put` replaces it, under a new id, so a late overlay job for the old
  capture finds it gone);
- its tenant's quota: `put` evicts the tenant's oldest items (by `created_at`, then id) until the new one
  fits, and refuses an item larger than the whole quota. Other tenants are never touched.

Every function is one transaction, and every read of an item is one snapshot (its document and pictures as
one commit left them). Writers lock before reading what they change: SQLite with `BEGIN IMMEDIATE`; PostgreSQL
with row locks (`FOR UPDATE`; the purge skips locked rows, so purgers in several pods share the work) and, for
the writers of one tenant's bytes (`put`, `erase`), a transaction-scoped advisory lock on the tenant, so two
concurrent captures cannot both fit in the room left for one. Pictures are deleted explicitly with their item
(besides ON DELETE CASCADE), so nothing depends on SQLite's `foreign_keys` pragma of the engine handed in.

Times are aware datetimes (stored in UTC; SQLite keeps them as text, compared as text); the clock is a
parameter (`now`), so retention is tested with a clock the test controls.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, func, insert, select, text, update
from sqlalchemy.engine import Connection, Engine

from service.evidence.document import (
    AuditEntry,
    EvidenceDocument,
    EvidenceSubject,
    OverlayState,
    SensitivityMap,
)
from service.evidence.pictures import EvidencePictures
from service.metrics import EVIDENCE_BYTES, EVIDENCE_PURGED
from service.store.tables import EvidencePictureRow, EvidenceRow

__all__ = ["StoredEvidence", "erase", "expiry", "get", "purge", "put", "set_overlays", "stored_bytes"]

_KINDS = ("frame", "crop", "overlay")  # `evidence_pictures.kind`: EvidencePictures' lists
_TENANT_LOCK_CLASS = 0x6466_6765  # "dfge": pg_advisory_xact_lock(class, hashtext(tenant)), int4 keys
_EVICT_PAGE = 100


@dataclass(frozen=True)
class StoredEvidence:
    id: int
    document: EvidenceDocument  # with its `overlays` state, `sensitivity` and `audit` as stored
    pictures: EvidencePictures


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("evidence times must be timezone-aware")
    return at.astimezone(UTC)


@contextmanager
def _writing(engine: Engine, tenant: str | None = None) -> Iterator[Connection]:
    """A write transaction holding SQLite's write lock from the start (a deferred transaction that read
    first fails at once, without the busy wait, when it cannot upgrade), or on PostgreSQL, with `tenant`,
    the tenant's advisory lock."""
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif conn.dialect.name == "postgresql" and tenant is not None:
            conn.execute(
                text("SELECT pg_advisory_xact_lock(:cls, hashtext(:tenant))"),
                {"cls": _TENANT_LOCK_CLASS, "tenant": tenant},
            )
        yield conn


@contextmanager
def _reading(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction on one snapshot (a document and its pictures from the same commit)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn
        return
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN")  # pysqlite begins only before writes: the snapshot starts here
        yield conn


def _key(tenant: str, subject: str, subject_id: str) -> list[ColumnElement[bool]]:
    return [
        EvidenceRow.tenant == tenant,
        EvidenceRow.subject == subject,
        EvidenceRow.subject_id == subject_id,
    ]


def _locked_ids(conn: Connection, *where: ColumnElement[bool]) -> list[int]:
    q = select(EvidenceRow.id).where(*where).order_by(EvidenceRow.id).with_for_update()
    return list(conn.execute(q).scalars())


def _delete(conn: Connection, ids: Sequence[int]) -> None:
    """Delete items (locked by the caller) and their pictures."""
    if not ids:
        return
    conn.execute(delete(EvidencePictureRow).where(EvidencePictureRow.evidence_id.in_(list(ids))))
    conn.execute(delete(EvidenceRow).where(EvidenceRow.id.in_(list(ids))))


def _picture_rows(evidence_id: int, kind: str, pictures: Sequence[bytes]) -> list[dict[str, Any]]:
    return [
        {"evidence_id": evidence_id, "kind": kind, "position": i, "content": bytes(content)}
        for i, content in enumerate(pictures)
    ]


def _tenant_bytes(conn: Connection, tenants: Iterable[str] | None = None) -> dict[str, int]:
    q = select(EvidenceRow.tenant, func.sum(EvidenceRow.nbytes)).group_by(EvidenceRow.tenant)
    if tenants is not None:
        q = q.where(EvidenceRow.tenant.in_(sorted(set(tenants))))
    return {tenant: int(total or 0) for tenant, total in conn.execute(q)}


def _show_bytes(totals: dict[str, int], tenants: Iterable[str]) -> None:
    """Set the stored-bytes gauge of `tenants` (0 for a tenant with nothing left)."""
    for tenant in tenants:
        EVIDENCE_BYTES.labels(tenant=tenant).set(totals.get(tenant, 0))


def _evict(conn: Connection, tenant: str, excess: int, *, keep: int | None = None) -> tuple[int, int]:
    """Delete the tenant's oldest items (never `keep`) until at least `excess` bytes are freed, or none is
    left; returns (items, bytes)."""
    count = freed = 0
    while freed < excess:
        others = [EvidenceRow.id != keep] if keep is not None else []
        oldest = conn.execute(
            select(EvidenceRow.id, EvidenceRow.nbytes)
            .where(EvidenceRow.tenant == tenant, *others)
            .order_by(EvidenceRow.created_at, EvidenceRow.id)
            .limit(_EVICT_PAGE)
            .with_for_update()
        ).all()
        if not oldest:  # only `keep` is left (put refuses an item larger than the quota before)
            break
        victims: list[int] = []
        for row_id, nbytes in oldest:
            if freed >= excess:
                break
            victims.append(row_id)
            freed += int(nbytes)
        _delete(conn, victims)
        count += len(victims)
    return count, freed


def put(
    engine: Engine,
    document: EvidenceDocument,
    pictures: EvidencePictures,
    *,
    quota_bytes: int,
    now: datetime,
) -> int | None:
    """Store the evidence of `document`'s subject, replacing any earlier capture of it; returns its id, or
    None when the item alone is larger than the tenant's quota (nothing is changed then).

    Past the quota (the tenant's stored bytes plus this item's), the tenant's oldest items are evicted until
    it fits (`dfguard_evidence_purged_total{reason="quota"}`)."""
    doc_json = document.model_dump_json()
    size = pictures.nbytes + len(doc_json.encode())
    if size > quota_bytes:
        return None
    tenant = document.tenant
    created_at = _utc(now)
    with _writing(engine, tenant) as conn:
        _delete(conn, _locked_ids(conn, *_key(tenant, document.subject, document.subject_id)))
        used = _tenant_bytes(conn, [tenant]).get(tenant, 0)
        evicted, freed = _evict(conn, tenant, used + size - quota_bytes)
        evidence_id: int = conn.execute(
            insert(EvidenceRow)
            .values(
                tenant=tenant,
                subject=document.subject,
                subject_id=document.subject_id,
                sha256=document.media.sha256,
                document=doc_json,
                overlays=document.overlays,
                nbytes=size,
                created_at=created_at,
                expires_at=_utc(document.expires_at),
            )
            .returning(EvidenceRow.id)
        ).scalar_one()
        rows = [
            *_picture_rows(evidence_id, "frame", pictures.frames),
            *_picture_rows(evidence_id, "crop", pictures.crops),
            *_picture_rows(evidence_id, "overlay", pictures.overlays),
        ]
        if rows:
            conn.execute(insert(EvidencePictureRow), rows)
    if evicted:
        EVIDENCE_PURGED.labels(reason="quota").inc(evicted)
    _show_bytes({tenant: used - freed + size}, [tenant])
    return evidence_id


def get(
    engine: Engine, tenant: str, subject: EvidenceSubject, subject_id: str, *, now: datetime
) -> StoredEvidence | None:
    """The tenant's evidence of a subject, unless there is none or it expired (`expires_at <= now`), purged
    or not."""
    with _reading(engine) as conn:
        row = conn.execute(
            select(EvidenceRow.id, EvidenceRow.document).where(
                *_key(tenant, subject, subject_id), EvidenceRow.expires_at > _utc(now)
            )
        ).one_or_none()
        if row is None:
            return None
        found = conn.execute(
            select(EvidencePictureRow.kind, EvidencePictureRow.content)
            .where(EvidencePictureRow.evidence_id == row.id)
            .order_by(EvidencePictureRow.kind, EvidencePictureRow.position)
        ).all()
    lists: dict[str, list[bytes]] = {kind: [] for kind in _KINDS}
    for kind, content in found:
        lists[kind].append(bytes(content))
    pictures = EvidencePictures(frames=lists["frame"], crops=lists["crop"], overlays=lists["overlay"])
    return StoredEvidence(row.id, EvidenceDocument.model_validate_json(row.document), pictures)


def expiry(
    engine: Engine, tenant: str, subject: EvidenceSubject, subject_id: str, *, now: datetime
) -> datetime | None:
    """When the tenant's evidence of a subject expires, or None if there is none (or it expired): `get`
    without reading the pictures."""
    with engine.connect() as conn:
        at = conn.execute(
            select(EvidenceRow.expires_at).where(
                *_key(tenant, subject, subject_id), EvidenceRow.expires_at > _utc(now)
            )
        ).scalar()
    if at is None:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)  # SQLite returns it naive (stored in UTC)


def set_overlays(
    engine: Engine,
    evidence_id: int,
    state: OverlayState,
    sensitivity: Sequence[SensitivityMap],
    overlays: Sequence[bytes],
    *,
    now: datetime,
    quota_bytes: int | None = None,
) -> OverlayState | None:
    """Record the outcome of an item's overlay job: its overlay pictures (replacing any), the document's
    `overlays` state and `sensitivity`, an audit entry (`overlays_<state>`, at `now`; none for `pending`),
    and its size. Returns the state stored, or None, with nothing written, when the item is gone (erased,
    re-captured, evicted, purged) or expired.

    With `quota_bytes`, the overlays count against the tenant's quota like the capture did: the tenant's
    oldest other items are evicted to make room. Overlays that would not fit even alone with their item are
    not stored and evict nothing (the state stored is then `skipped`)."""
    at = _utc(now)
    with engine.connect() as conn:  # an item's tenant never changes: read it before locking in put's order
        tenant = conn.execute(select(EvidenceRow.tenant).where(EvidenceRow.id == evidence_id)).scalar()
    if tenant is None:
        return None
    evicted = 0
    with _writing(engine, tenant) as conn:
        row = conn.execute(
            select(EvidenceRow.document, EvidenceRow.nbytes)
            .where(EvidenceRow.id == evidence_id, EvidenceRow.expires_at > at)
            .with_for_update()
        ).one_or_none()
        if row is None:
            return None
        is_overlay = (EvidencePictureRow.evidence_id == evidence_id, EvidencePictureRow.kind == "overlay")
        old_overlays = int(
            conn.execute(
                select(func.coalesce(func.sum(func.length(EvidencePictureRow.content)), 0)).where(*is_overlay)
            ).scalar_one()
        )
        base = int(row.nbytes) - old_overlays - len(row.document.encode())  # frames and crops
        old = EvidenceDocument.model_validate_json(row.document)

        def document(state: OverlayState, maps: Sequence[SensitivityMap]) -> str:
            audit = [
                *old.audit,
                *([AuditEntry(at=at, event=f"overlays_{state}")] if state != "pending" else []),
            ]
            return old.model_copy(
                update={"overlays": state, "sensitivity": list(maps), "audit": audit}
            ).model_dump_json()

        final: OverlayState = state
        doc_json = document(state, sensitivity)
        nbytes = base + sum(len(o) for o in overlays) + len(doc_json.encode())
        if quota_bytes is not None and overlays:
            if nbytes > quota_bytes:  # not even alone: drop the overlays, evict nothing for them
                final, overlays, doc_json = "skipped", [], document("skipped", [])
                nbytes = base + len(doc_json.encode())
            else:
                others = _tenant_bytes(conn, [tenant]).get(tenant, 0) - int(row.nbytes)
                if others + nbytes > quota_bytes:
                    evicted, _ = _evict(conn, tenant, others + nbytes - quota_bytes, keep=evidence_id)
        conn.execute(delete(EvidencePictureRow).where(*is_overlay))
        if overlays:
            conn.execute(insert(EvidencePictureRow), _picture_rows(evidence_id, "overlay", overlays))
        conn.execute(
            update(EvidenceRow)
            .where(EvidenceRow.id == evidence_id)
            .values(
                document=doc_json,
                overlays=final,
                nbytes=nbytes,
            )
        )
        totals = _tenant_bytes(conn, [tenant])
    if evicted:
        EVIDENCE_PURGED.labels(reason="quota").inc(evicted)
    _show_bytes(totals, [tenant])
    return final


def erase(engine: Engine, tenant: str, subject: EvidenceSubject, subject_id: str) -> bool:
    """Delete the tenant's evidence of a subject now (erasure); True if there was any (expired included)."""
    with _writing(engine, tenant) as conn:
        ids = _locked_ids(conn, *_key(tenant, subject, subject_id))
        _delete(conn, ids)
        totals = _tenant_bytes(conn, [tenant]) if ids else {}
    if ids:
        EVIDENCE_PURGED.labels(reason="erased").inc(len(ids))
        _show_bytes(totals, [tenant])
    return bool(ids)


def purge(engine: Engine, *, now: datetime, batch: int = 500) -> int:
    """Delete every item with `expires_at <= now`, `batch` items a transaction; returns how many.

    On PostgreSQL items another purger holds are skipped (it deletes them)."""
    at = _utc(now)
    done = 0
    tenants: set[str] = set()
    while True:
        with _writing(engine) as conn:
            expired = conn.execute(
                select(EvidenceRow.id, EvidenceRow.tenant)
                .where(EvidenceRow.expires_at <= at)
                .order_by(EvidenceRow.expires_at, EvidenceRow.id)
                .limit(batch)
                .with_for_update(skip_locked=True)
            ).all()
            _delete(conn, [row_id for row_id, _ in expired])
        if expired:
            EVIDENCE_PURGED.labels(reason="expired").inc(len(expired))
        done += len(expired)
        tenants.update(tenant for _, tenant in expired)
        if len(expired) < batch:
            break
    if tenants:
        with engine.connect() as conn:
            totals = _tenant_bytes(conn, tenants)
        _show_bytes(totals, tenants)
    return done


def stored_bytes(engine: Engine) -> dict[str, int]:
    """Evidence bytes stored per tenant (expired items not purged yet included), for the gauge."""
    with engine.connect() as conn:
        return _tenant_bytes(conn)
