"""Test data for the decision store: a `NewDecision` with a valid flag event, varied by keyword, and a
database made the way the store made them before migrations existed."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine

from service.events import FlagEvent, FlagTimings
from service.schemas import Decision, ModelRef, UsedThresholds
from service.store import NewDecision
from service.store.decisions import engine_for

__all__ = ["LEGACY_DDL", "make_legacy_database", "new_decision"]


def new_decision(
    video_id: str,
    *,
    tenant: str = "acme",
    decision: Decision = "allow",
    sha: str | None = "ab" * 32,
    hashes: tuple[int, ...] = (),
    origin: str = "scored",
    event: str = "ev-1",
    score: float | None = None,
) -> NewDecision:
    """A decision to store; `score` (the faces') defaults to 0.9 for a flag and 0.1 otherwise."""
    flag = FlagEvent(
        event_id=f"flag-{tenant}-{video_id}",
        video_id=video_id,
        tenant=tenant,
        decision=decision,
        score=score if score is not None else 0.9 if decision == "flag" else 0.1,
        reasons=["untrained_model"],
        model=ModelRef(name="m", version="1"),
        top_frames=[],
        timings_ms=FlagTimings(fetch=1.0, total=5.0),
        decided_at=datetime(2026, 11, 27, tzinfo=UTC),
        source_event_id=event,
    )
    return NewDecision(
        tenant=tenant,
        origin=origin,  # type: ignore[arg-type]
        thresholds=UsedThresholds(review=0.5, flag=0.8, source="default"),
        aggregation="confident",
        sha256=sha,
        flag=flag,
        frame_hashes=hashes,
    )


# What `Base.metadata.create_all` emitted before migrations existed (commit 34d8bea), per dialect: the
# databases in the field were made by exactly this.
LEGACY_DDL = {
    "sqlite": [
        """CREATE TABLE decisions (
            id INTEGER NOT NULL, tenant VARCHAR(64) NOT NULL, video_id VARCHAR(256) NOT NULL,
            decision VARCHAR(16) NOT NULL, score FLOAT, reasons JSON NOT NULL, origin VARCHAR(16) NOT NULL,
            model_name VARCHAR(128) NOT NULL, model_version VARCHAR(128) NOT NULL,
            review_threshold FLOAT NOT NULL, flag_threshold FLOAT NOT NULL, aggregation VARCHAR(32) NOT NULL,
            sha256 VARCHAR(64), source_event_id VARCHAR(128) NOT NULL, flag_event_id VARCHAR(64) NOT NULL,
            timings_ms JSON NOT NULL, flag_event TEXT NOT NULL, decided_at DATETIME NOT NULL,
            PRIMARY KEY (id), CONSTRAINT uq_decisions_tenant_video UNIQUE (tenant, video_id))""",
        "CREATE INDEX ix_decisions_sha256_origin ON decisions (sha256, origin)",
        """CREATE TABLE frame_hashes (
            id INTEGER NOT NULL, decision_id INTEGER NOT NULL, flagged BOOLEAN NOT NULL, hash BIGINT NOT NULL,
            PRIMARY KEY (id), FOREIGN KEY(decision_id) REFERENCES decisions (id) ON DELETE CASCADE)""",
        "CREATE INDEX ix_frame_hashes_flagged_id ON frame_hashes (flagged, id)",
    ],
    "postgresql": [
        """CREATE TABLE decisions (
            id SERIAL NOT NULL, tenant VARCHAR(64) NOT NULL, video_id VARCHAR(256) NOT NULL,
            decision VARCHAR(16) NOT NULL, score FLOAT, reasons JSON NOT NULL, origin VARCHAR(16) NOT NULL,
            model_name VARCHAR(128) NOT NULL, model_version VARCHAR(128) NOT NULL,
            review_threshold FLOAT NOT NULL, flag_threshold FLOAT NOT NULL, aggregation VARCHAR(32) NOT NULL,
            sha256 VARCHAR(64), source_event_id VARCHAR(128) NOT NULL, flag_event_id VARCHAR(64) NOT NULL,
            timings_ms JSON NOT NULL, flag_event TEXT NOT NULL, decided_at TIMESTAMP WITH TIME ZONE NOT NULL,
            PRIMARY KEY (id), CONSTRAINT uq_decisions_tenant_video UNIQUE (tenant, video_id))""",
        "CREATE INDEX ix_decisions_sha256_origin ON decisions (sha256, origin)",
        """CREATE TABLE frame_hashes (
            id SERIAL NOT NULL, decision_id INTEGER NOT NULL, flagged BOOLEAN NOT NULL, hash BIGINT NOT NULL,
            PRIMARY KEY (id), FOREIGN KEY(decision_id) REFERENCES decisions (id) ON DELETE CASCADE)""",
        "CREATE INDEX ix_frame_hashes_flagged_id ON frame_hashes (flagged, id)",
    ],
}


def make_legacy_database(url: str) -> Engine:
    """A database as the store made it before migrations: `create_all`'s DDL of that time, verbatim."""
    engine = engine_for(url)
    with engine.begin() as conn:
        for statement in LEGACY_DDL[conn.dialect.name]:
            conn.exec_driver_sql(statement)
    return engine
