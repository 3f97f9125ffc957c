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
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "DecisionRow", "FrameHashRow"]


class Base(DeclarativeBase):
    pass


class DecisionRow(Base):
    """One decision per (tenant, video_id): the unique key is what makes redeliveries idempotent."""

    __tablename__ = "decisions"
    __table_args__ = (
        UniqueConstraint("tenant", "video_id", name="uq_decisions_tenant_video"),
        Index("ix_decisions_sha256_origin", "sha256", "origin"),
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


class FrameHashRow(Base):
    """pHashes of sampled frames (signed 64-bit); near-duplicate lookups read the flagged ones."""

    __tablename__ = "frame_hashes"
    __table_args__ = (Index("ix_frame_hashes_flagged_id", "flagged", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    decision_id: Mapped[int] = mapped_column(ForeignKey("decisions.id", ondelete="CASCADE"))
    flagged: Mapped[bool] = mapped_column()
    hash: Mapped[int] = mapped_column(BigInteger)
