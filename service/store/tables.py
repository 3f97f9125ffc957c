"""The decision store's tables (SQLAlchemy 2.0; SQLite embedded, PostgreSQL in production)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base",
    "DecisionRevisionRow",
    "DecisionRow",
    "EvidencePictureRow",
    "EvidenceRow",
    "FrameHashRow",
    "ShadowRow",
]


class Base(DeclarativeBase):
    pass


class DecisionRow(Base):
    """One decision per (tenant, video_id): the unique key is what makes redeliveries idempotent."""

    __tablename__ = "decisions"
    __table_args__ = (
        UniqueConstraint("tenant", "video_id", name="uq_decisions_tenant_video"),
        Index("ix_decisions_sha256_origin", "sha256", "origin"),
        Index("ix_decisions_decided_at", "decided_at"),  # `dfguard rescore --since/--until`
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(64))
    video_id: Mapped[str] = mapped_column(String(256))
    decision: Mapped[str] = mapped_column(String(16))
    score: Mapped[float | None] = mapped_column(Float)
    reasons: Mapped[list[str]] = mapped_column(JSON)
    origin: Mapped[str] = mapped_column(String(16))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(128))
    review_threshold: Mapped[float] = mapped_column(Float)
    flag_threshold: Mapped[float] = mapped_column(Float)
    aggregation: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str | None] = mapped_column(String(64))
    source_event_id: Mapped[str] = mapped_column(String(128))
    flag_event_id: Mapped[str] = mapped_column(String(64))
    timings_ms: Mapped[dict[str, float]] = mapped_column(JSON)
    flag_event: Mapped[str] = mapped_column(
        Text, doc="The flag event's JSON, re-emitted verbatim on redelivery."
    )
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Columns added by later revisions go last, in revision order: ALTER TABLE appends them, and
    # tests/test_migrations.py checks that create_all and the migrations make the same table.
    thresholds_source: Mapped[str | None] = mapped_column(
        String(16), doc="settings / ensemble / model / default; null on decisions stored before 0002."
    )
    source_uri: Mapped[str | None] = mapped_column(
        String(4096), doc="Where the worker fetched the media (for `dfguard rescore`); null before 0003."
    )
    revision: Mapped[int | None] = mapped_column(
        Integer, doc="The revision this row holds (always the latest); null means 1 (never re-decided)."
    )


class DecisionRevisionRow(Base):
    """Every revision of a re-decided video (`dfguard rescore`), its flag event as emitted, and the outbox.

    Written only when a decision is first re-decided, then revision 1 is copied in too, so the history is
    whole; the `decisions` row always holds the latest revision's values. `emitted_at` is null until the
    revision's flag event was acknowledged by the broker (revision 1: the worker emitted it, when stored).
    """

    __tablename__ = "decision_revisions"
    __table_args__ = (
        UniqueConstraint("decision_id", "revision", name="uq_decision_revisions_decision_revision"),
        # the outbox: pending (null) rows in id order, without scanning the history
        Index("ix_decision_revisions_emitted_at_id", "emitted_at", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    decision_id: Mapped[int] = mapped_column(ForeignKey("decisions.id", ondelete="CASCADE"))
    revision: Mapped[int] = mapped_column(Integer)
    flag_event_id: Mapped[str] = mapped_column(String(64))
    supersedes: Mapped[str | None] = mapped_column(String(64))
    decision: Mapped[str] = mapped_column(String(16))
    score: Mapped[float | None] = mapped_column(Float)
    reasons: Mapped[list[str]] = mapped_column(JSON)
    origin: Mapped[str] = mapped_column(String(16))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(128))
    review_threshold: Mapped[float] = mapped_column(Float)
    flag_threshold: Mapped[float] = mapped_column(Float)
    thresholds_source: Mapped[str | None] = mapped_column(String(16))
    aggregation: Mapped[str] = mapped_column(String(32))
    flag_event: Mapped[str] = mapped_column(Text, doc="The revision's flag event JSON, emitted verbatim.")
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    emitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class FrameHashRow(Base):
    """pHashes of sampled frames (signed 64-bit); near-duplicate lookups read the flagged ones."""

    __tablename__ = "frame_hashes"
    __table_args__ = (
        Index("ix_frame_hashes_flagged_id", "flagged", "id"),
        Index("ix_frame_hashes_decision_id", "decision_id"),  # a re-decision's marks; cascading deletes
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    decision_id: Mapped[int] = mapped_column(ForeignKey("decisions.id", ondelete="CASCADE"))
    flagged: Mapped[bool] = mapped_column()
    hash: Mapped[int] = mapped_column(BigInteger)


class ShadowRow(Base):
    """A shadow model's verdict on media the primary decided (never emitted): one row per scored medium.

    `source` is `worker` (then `decision_id` and `video_id` name the stored decision) or `gateway` (a
    `/v1/score` answer or a job, which the store does not keep: `video_id` is null, or the job id). Read by
    `dfguard models diff`.
    """

    __tablename__ = "shadow_results"
    __table_args__ = (
        Index("ix_shadow_results_created_at", "created_at"),
        Index("ix_shadow_results_tenant_created_at", "tenant", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    decision_id: Mapped[int | None] = mapped_column(ForeignKey("decisions.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(16))
    tenant: Mapped[str] = mapped_column(String(64))
    video_id: Mapped[str | None] = mapped_column(String(256))
    sha256: Mapped[str] = mapped_column(String(64))
    primary_model_name: Mapped[str] = mapped_column(String(128))
    primary_model_version: Mapped[str] = mapped_column(String(128))
    primary_score: Mapped[float | None] = mapped_column(Float)
    primary_decision: Mapped[str] = mapped_column(String(16))
    shadow_model_name: Mapped[str] = mapped_column(String(128))
    shadow_model_version: Mapped[str] = mapped_column(String(128))
    shadow_score: Mapped[float | None] = mapped_column(Float)
    shadow_decision: Mapped[str] = mapped_column(String(16))
    shadow_review_threshold: Mapped[float] = mapped_column(Float)
    shadow_flag_threshold: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EvidenceRow(Base):
    """The evidence page of one decision (`subject` `decision`, `subject_id` its video id) or gateway job
    (`job`, the job id), per tenant: its `EvidenceDocument` as JSON, its pictures in `evidence_pictures`.

    Not tied to `decisions` by a foreign key (jobs have no decision row): it lives until `expires_at`
    (retention, `purge`), an erasure, a re-capture (replaced) or its tenant's quota (oldest first). `nbytes`
    (pictures + document) is what counts against the quota.
    """

    __tablename__ = "evidence"
    __table_args__ = (
        UniqueConstraint("tenant", "subject", "subject_id", name="uq_evidence_tenant_subject"),
        Index("ix_evidence_expires_at", "expires_at"),  # the purge
        Index("ix_evidence_tenant_created_at", "tenant", "created_at"),  # quota eviction, oldest first
        # ids never reused (SQLite reuses the highest rowid once deleted): an overlay job names its item by
        # id, and must find it gone after an erasure or re-capture, not write into whichever took its id
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(16))
    subject_id: Mapped[str] = mapped_column(String(256))
    sha256: Mapped[str | None] = mapped_column(String(64))
    document: Mapped[str] = mapped_column(Text, doc="The `EvidenceDocument` JSON.")
    overlays: Mapped[str] = mapped_column(
        String(16), doc="The document's overlay state (pending, ready, ...)."
    )
    nbytes: Mapped[int] = mapped_column(BigInteger, doc="Bytes of the pictures plus the document (quota).")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EvidencePictureRow(Base):
    """One JPEG of an evidence page: `kind` frame, crop or overlay, at `position` in its list."""

    __tablename__ = "evidence_pictures"
    __table_args__ = (
        # also the index of the foreign key (cascading deletes, reading one item's pictures)
        UniqueConstraint(
            "evidence_id", "kind", "position", name="uq_evidence_pictures_evidence_kind_position"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    evidence_id: Mapped[int] = mapped_column(ForeignKey("evidence.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(8))
    position: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary)
